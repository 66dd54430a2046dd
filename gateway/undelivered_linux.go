package gateway

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// userTimeoutControl is a dialer's Control that sets TCP_USER_TIMEOUT on
// upstream sockets: bytes sent and not acknowledged by the upstream's
// kernel for d end the connection with ETIMEDOUT. A peer whose link is cut
// (no RST, no FIN) then fails the request in d instead of at the route's
// timeout, and undelivered tells whether the request ever reached it.
func userTimeoutControl(d time.Duration) func(network, address string, rc syscall.RawConn) error {
	if d <= 0 {
		return nil
	}
	ms := int(d.Milliseconds())
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
		}); err != nil {
			return err
		}
		return serr
	}
}

// bytesAcked is how many bytes sent on c its peer has acknowledged
// (tcpi_bytes_acked; ok false when the kernel cannot say).
func bytesAcked(c net.Conn) (n uint64, ok bool) {
	sc, is := c.(syscall.Conn)
	if !is {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	if err := rc.Control(func(fd uintptr) {
		info, gerr := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if gerr == nil {
			n, ok = info.Bytes_acked, true
		}
	}); err != nil {
		return 0, false
	}
	return n, ok
}
