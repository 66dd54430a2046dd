//go:build linux

package dns

import (
	"fmt"
	"net"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported: the server opens one UDP socket per core on the same
// address (SO_REUSEPORT) and the kernel spreads clients over them.
const reusePortSupported = true

// listenConfig returns the ListenConfig for the server's sockets. With
// freeBind the sockets may bind an address the host does not have yet;
// with reusePort several sockets share one address (UDP only: the TCP
// listener binds without it, so a second server can never join the port).
func listenConfig(freeBind, reusePort bool) (net.ListenConfig, error) {
	if !freeBind && !reusePort {
		return net.ListenConfig{}, nil
	}
	return net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if reusePort {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
					serr = fmt.Errorf("set SO_REUSEPORT: %w", serr)
					return
				}
			}
			if !freeBind {
				return
			}
			if strings.HasSuffix(network, "6") {
				// IPV6_FREEBIND needs Linux 4.15; IP_FREEBIND also
				// covers IPv6 sockets on older kernels.
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); serr == nil {
					return
				}
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1); serr != nil {
				serr = fmt.Errorf("set IP_FREEBIND: %w", serr)
			}
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("dns: socket options on %s %s: %w", network, address, err)
		}
		return nil
	}}, nil
}
