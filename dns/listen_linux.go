//go:build linux

package dns

import (
	"fmt"
	"net"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenConfig returns the ListenConfig for the server's sockets. With
// freeBind the sockets may bind an address the host does not have yet.
func listenConfig(freeBind bool) (net.ListenConfig, error) {
	if !freeBind {
		return net.ListenConfig{}, nil
	}
	return net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if strings.HasSuffix(network, "6") {
				// IPV6_FREEBIND needs Linux 4.15; IP_FREEBIND also
				// covers IPv6 sockets on older kernels.
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); serr == nil {
					return
				}
			}
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("dns: set IP_FREEBIND on %s %s: %w", network, address, err)
		}
		return nil
	}}, nil
}
