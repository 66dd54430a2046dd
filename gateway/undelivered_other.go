//go:build !linux

package gateway

import (
	"net"
	"syscall"
	"time"
)

// userTimeoutControl sets nothing where TCP_USER_TIMEOUT is not known: a
// silent upstream then fails its requests at the route's timeout.
func userTimeoutControl(time.Duration) func(network, address string, rc syscall.RawConn) error {
	return nil
}

// bytesAcked cannot tell here: a failed request counts as delivered.
func bytesAcked(net.Conn) (uint64, bool) { return 0, false }
