package gateway

import (
	"net"
	"sync/atomic"
	"time"
)

// Limits on what one client may hold (Config: MaxConnections,
// ReadHeaderTimeout, BodyTimeout, SendTimeout, IdleTimeout,
// TunnelIdleTimeout), with defaults that are safe without flags. Each
// close by a limit is counted in berth_gateway_connections_closed_total
// by reason.

// Reasons a limit closed a client connection (the metric's label).
const (
	closedHeadTimeout = "head_timeout"
	closedBodyTimeout = "body_timeout"
	closedSendTimeout = "send_timeout"
	closedTunnelIdle  = "tunnel_idle"
)

// DefaultMaxConnections is the client connection cap derived from the
// process's open-file limit: half of what is left after 1,024 descriptors
// for everything else (etcd, containerd, listeners and logs in berth dev),
// since each client connection may hold an upstream connection too; at
// least 256.
func DefaultMaxConnections() int {
	n := openFileLimit()
	if n <= 0 {
		return 4096
	}
	return max(256, (n-1024)/2)
}

// clientConn is a client connection whose writes carry SendTimeout: a
// write that cannot hand its bytes to the kernel for that long fails, and
// the deadline moves on as bytes are taken. The deadline is refreshed only
// once half of it is used, so a busy connection pays no timer update per
// write.
type clientConn struct {
	net.Conn
	timeout time.Duration
	writeDL atomic.Int64 // nanotime of the write deadline last set
	onLimit func(reason string)
}

func (c *clientConn) Write(p []byte) (int, error) {
	now := nanotime()
	if now > c.writeDL.Load()-int64(c.timeout/2) {
		c.writeDL.Store(now + int64(c.timeout))
		c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	n, err := c.Conn.Write(p)
	if err != nil && isTimeout(err) && c.onLimit != nil {
		c.onLimit(closedSendTimeout)
	}
	return n, err
}

// CloseWrite half-closes the connection, as *net.TCPConn does.
func (c *clientConn) CloseWrite() error { return closeWrite(c.Conn) }

// closeWrite half-closes c when it can (TCP, TLS, and the wrappers here).
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SetDeadline sets both deadlines, keeping the send timeout's record of
// the write deadline true.
func (c *clientConn) SetDeadline(t time.Time) error {
	c.noteWriteDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *clientConn) noteWriteDeadline(t time.Time) {
	if t.IsZero() {
		c.writeDL.Store(0)
	} else {
		c.writeDL.Store(nanotime() + int64(time.Until(t)))
	}
}

// SetWriteDeadline sets a deadline for one write sequence; the send
// timeout takes over again once it is cleared.
func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.noteWriteDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}
