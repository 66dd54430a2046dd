//go:build !linux

package dns

import (
	"errors"
	"net"
)

// reusePortSupported: elsewhere the server reads one UDP socket from
// several goroutines.
const reusePortSupported = false

func listenConfig(freeBind, reusePort bool) (net.ListenConfig, error) {
	if freeBind {
		return net.ListenConfig{}, errors.New("dns: FreeBind is only supported on Linux")
	}
	return net.ListenConfig{}, nil
}
