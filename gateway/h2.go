package gateway

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HTTP/2 on the general path.
//
// net/http serves HTTP/2 (h2c with prior knowledge on the plain listener,
// ALPN h2 on the TLS one); h2Conn, a guard between each such connection
// and net/http, makes it answer as RFC 9113 requires where Go's server
// deliberately does not:
//
//   - a request carrying a connection-specific header field (Connection,
//     Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, or TE with
//     anything but "trailers") is a stream error PROTOCOL_ERROR (RFC 9113
//     8.2.2); Go answers 400 instead. The guard marks the request's
//     HEADERS frame as depending on its own stream, which Go resets with
//     PROTOCOL_ERROR before any handler runs. The header block itself
//     passes unchanged, so both HPACK decoders stay in step.
//   - the values of a SETTINGS frame are applied in order (RFC 9113
//     6.5.3); Go hangs up on a frame that repeats a setting. The guard
//     passes on the last value of each (or, at an invalid value, the
//     values before it and that one, so Go fails as it would in order).
//   - an invalid connection preface closes the connection (RFC 9113 3.4),
//     without an answer. On the plain listener, which also serves
//     HTTP/1.x, the fast path's framer (h1request.go) decides first: a
//     first line that is no HTTP/1.x request is closed there, and only a
//     connection that began with the preface's request line reaches the
//     guard, which checks the rest of the preface.
//
// The guard reads frames with golang.org/x/net/http2's Framer (the same
// code Go's server runs, so both reach the same verdict on every frame)
// and hands net/http the bytes it read, rewritten only in those cases.
// Frame sizes need no guard: the server advertises and enforces
// SETTINGS_MAX_FRAME_SIZE at the protocol's initial value (h2Config).
//
// Serving TLS connections through the guard hides the *tls.Conn from
// net/http, which then serves them as h2c: their requests have no
// Request.TLS (the connection context says TLS, see h2ConnContext), and
// the TLS checks Go's HTTP/2 server makes (RFC 9113 9.2) are made here.

// h2MaxFrameSize is the largest frame the gateway reads: the protocol's
// initial SETTINGS_MAX_FRAME_SIZE, which it also advertises. Clients that
// never read the server's SETTINGS assume it (h2spec 4.2 does).
const h2MaxFrameSize = 16 << 10

// h2HeaderTableSize is the HPACK dynamic table size of Go's server's
// decoder (its default, which h2Config does not change).
const h2HeaderTableSize = 4096

const h2Preface = http2.ClientPreface // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// h2Config is the HTTP/2 configuration of the general path's server.
func h2Config() *http.HTTP2Config {
	return &http.HTTP2Config{MaxReadFrameSize: h2MaxFrameSize}
}

// h2MaxHeaderListSize is the header list limit Go's HTTP/2 server derives
// from http.Server.MaxHeaderBytes; the guard's framer uses the same, so
// both stop decoding at the same point.
func h2MaxHeaderListSize(maxHeaderBytes int) uint32 {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	return uint32(maxHeaderBytes + 10*32) // Go pads for 10 fields of 32 bytes
}

// h2Listener hands net/http the general path's connections, each behind
// an h2Conn where it speaks or may speak HTTP/2.
type h2Listener struct {
	net.Listener
	maxHeaderListSize uint32
	log               *slog.Logger
}

func (l *h2Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c = l.guard(c); c != nil {
			return c, nil
		}
	}
}

// guard wraps c, or returns it as it is when it is sure to be HTTP/1.x,
// or nil when it refused it (and will close it).
func (l *h2Listener) guard(c net.Conn) net.Conn {
	switch cc := c.(type) {
	case *tls.Conn:
		st := cc.ConnectionState()
		if st.NegotiatedProtocol != "h2" {
			return c // HTTP/1.1: net/http sets Request.TLS
		}
		if !h2CipherAllowed(st) {
			l.log.Debug("h2: prohibited TLS cipher suite", "client", c.RemoteAddr().String(), "suite", tls.CipherSuiteName(st.CipherSuite))
			go rejectInadequateSecurity(c)
			return nil
		}
		return newH2Conn(c, true, l.maxHeaderListSize)
	case *replayConn:
		// The fast path framed the first request already (h1request.go):
		// an HTTP/1.x request passes as it is; the start of the HTTP/2
		// preface must be the whole preface.
		if !cc.h2 {
			return c
		}
		return newH2Conn(c, cc.isTLS, l.maxHeaderListSize)
	}
	// Nothing else reaches net/http (plain connections come through the
	// fast path); were it to, only the preface would be accepted.
	return newH2Conn(c, false, l.maxHeaderListSize)
}

// h2ConnContext is the server's ConnContext: connContext, seeing through
// the guard, and marking TLS connections that reach net/http as h2c.
func h2ConnContext(ctx context.Context, c net.Conn) context.Context {
	if gc, ok := c.(*h2Conn); ok {
		if gc.isTLS {
			ctx = context.WithValue(ctx, tlsConnKey{}, true)
		}
		c = gc.Conn
	}
	return connContext(ctx, c)
}

// h2CipherAllowed reports whether HTTP/2 may run over st (RFC 9113 9.2:
// TLS 1.2 or later; in TLS 1.2 an ephemeral key exchange and an AEAD
// cipher, the suites not on RFC 7540's block list).
func h2CipherAllowed(st tls.ConnectionState) bool {
	if st.Version >= tls.VersionTLS13 {
		return true
	}
	if st.Version < tls.VersionTLS12 {
		return false
	}
	switch st.CipherSuite {
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return true
	}
	return false
}

// rejectInadequateSecurity ends an HTTP/2 connection over a prohibited
// cipher suite as Go's server does: GOAWAY INADEQUATE_SECURITY.
func rejectInadequateSecurity(c net.Conn) {
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	http2.NewFramer(c, nil).WriteGoAway(0, http2.ErrCodeInadequateSecurity, []byte("prohibited TLS 1.2 cipher suite"))
}

// sniffVerdict is what the first bytes of a connection say.
type sniffVerdict int

const (
	sniffMore   sniffVerdict = iota // a prefix of the preface: read more
	sniffH2                         // the HTTP/2 connection preface
	sniffReject                     // not the preface: close without an answer
)

// sniffPreface classifies the first bytes b of a connection that must
// speak HTTP/2: whether HTTP/1.x was spoken instead is decided before a
// connection gets here (by ALPN, or by the fast path's framer).
func sniffPreface(b []byte) sniffVerdict {
	n := min(len(b), len(h2Preface))
	switch {
	case string(b[:n]) != h2Preface[:n]:
		return sniffReject
	case n == len(h2Preface):
		return sniffH2
	}
	return sniffMore
}

type guardState int

const (
	guardSniff  guardState = iota // reading the preface
	guardFrames                   // reading frame by frame
)

// h2Conn is a client connection as net/http reads it: the preface
// checked, then HTTP/2 frames read one at a time and passed on, rewritten
// where RFC 9113 asks what Go's server does not do (see the top of this
// file). Writes go straight to the connection. Only net/http's one
// reading goroutine calls Read.
type h2Conn struct {
	net.Conn
	isTLS bool // the client connection is TLS

	maxHeaderListSize uint32
	state             guardState
	buf               []byte // sniffing: what was read so far
	out               []byte // ready for net/http
	err               error  // returned once out is drained

	fr      *http2.Framer
	src     h2Source
	pending []byte // read past the preface, not yet framed
	srcErr  error  // the read error behind pending
	raw     []byte // the bytes of the frame being read
}

func newH2Conn(c net.Conn, isTLS bool, maxHeaderListSize uint32) *h2Conn {
	return &h2Conn{Conn: c, isTLS: isTLS, maxHeaderListSize: maxHeaderListSize}
}

func (c *h2Conn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		switch c.state {
		case guardSniff:
			c.sniff()
		case guardFrames:
			c.readFrame()
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// errInvalidPreface ends a connection that had to send the HTTP/2
// preface and did not: net/http closes it without an answer (it answers
// nothing on io.EOF).
var errInvalidPreface = io.EOF

func (c *h2Conn) sniff() {
	if c.buf == nil {
		c.buf = make([]byte, 0, 1024)
	}
	if len(c.buf) == cap(c.buf) {
		c.buf = append(c.buf, 0)[:len(c.buf)]
	}
	n, err := c.Conn.Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	switch sniffPreface(c.buf) {
	case sniffH2:
		c.out, c.pending, c.srcErr = c.buf[:len(h2Preface)], c.buf[len(h2Preface):], err
		c.state = guardFrames
		c.src.c = c
		c.fr = http2.NewFramer(io.Discard, &c.src)
		c.fr.SetMaxReadFrameSize(h2MaxFrameSize)
		c.fr.MaxHeaderListSize = c.maxHeaderListSize
		c.fr.ReadMetaHeaders = hpack.NewDecoder(h2HeaderTableSize, nil)
		return
	case sniffReject:
		c.buf, c.err = nil, errInvalidPreface
	case sniffMore:
		if err != nil { // the connection ended inside the preface
			c.buf, c.err = nil, errInvalidPreface
		}
	}
}

// h2Source feeds the framer: first what was read past the preface, then
// the connection; it records every byte in raw.
type h2Source struct{ c *h2Conn }

func (s *h2Source) Read(p []byte) (int, error) {
	c := s.c
	var n int
	var err error
	if len(c.pending) > 0 {
		n = copy(p, c.pending)
		c.pending = c.pending[n:]
	} else if c.srcErr != nil {
		err = c.srcErr
	} else {
		n, err = c.Conn.Read(p)
	}
	c.raw = append(c.raw, p[:n]...)
	return n, err
}

// readFrame reads one frame (a header block with its CONTINUATIONs) and
// makes its bytes, rewritten if need be, the next to hand on. After an
// error that is not a stream error, Go's server (same framer, same bytes)
// fails the connection too: nothing more is read.
func (c *h2Conn) readFrame() {
	c.raw = c.raw[:0]
	f, err := c.fr.ReadFrame()
	var se http2.StreamError
	switch {
	case err == nil:
		c.raw = h2Rewrite(c.raw, f)
	case !errors.As(err, &se):
		c.err = err
	}
	c.out = c.raw
}

// h2Rewrite returns raw, the wire bytes of frame f, as the guard passes
// them on (see the top of this file).
func h2Rewrite(raw []byte, f http2.Frame) []byte {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if !f.Truncated && h2ConnectionSpecific(f.RegularFields()) {
			return markSelfDependent(raw)
		}
	case *http2.SettingsFrame:
		// More than 100 values: Go hangs up, which the RFC allows.
		if !f.IsAck() && f.NumSettings() <= 100 && f.HasDuplicates() {
			return settingsInOrder(f)
		}
	}
	return raw
}

// h2ConnectionSpecific reports whether a request's fields include a
// connection-specific one (RFC 9113 8.2.2). Names are lowercase on the
// wire (an uppercase one is malformed, and the framer says so).
func h2ConnectionSpecific(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return true
		case "te":
			if f.Value != "trailers" {
				return true
			}
		}
	}
	return false
}

// markSelfDependent rewrites a HEADERS frame (raw: the frame, then any
// CONTINUATION frames) to depend on its own stream, which a receiver must
// treat as a stream error PROTOCOL_ERROR (RFC 9113 5.3.1). The header
// block fragment is untouched. A frame without priority grows by 5 bytes
// (past SETTINGS_MAX_FRAME_SIZE when it was full: then the connection
// fails with FRAME_SIZE_ERROR, a refusal too).
func markSelfDependent(raw []byte) []byte {
	const flagPadded, flagPriority = byte(http2.FlagHeadersPadded), byte(http2.FlagHeadersPriority)
	flags := raw[4]
	id := binary.BigEndian.Uint32(raw[5:9]) & (1<<31 - 1)
	off := 9
	if flags&flagPadded != 0 {
		off++
	}
	if flags&flagPriority != 0 {
		binary.BigEndian.PutUint32(raw[off:], id) // not exclusive; weight kept
		return raw
	}
	length := (uint32(raw[0])<<16 | uint32(raw[1])<<8 | uint32(raw[2])) + 5
	out := make([]byte, 0, len(raw)+5)
	out = append(out, byte(length>>16), byte(length>>8), byte(length), raw[3], flags|flagPriority)
	out = append(out, raw[5:off]...)
	out = binary.BigEndian.AppendUint32(out, id)
	out = append(out, 15) // weight 16, the default
	return append(out, raw[off:]...)
}

// settingsInOrder returns a SETTINGS frame without repeated values that a
// receiver processing values one at a time ends in the same state with:
// the last value of each setting, or, when a value is invalid, the
// values before it and that one (where processing stops).
func settingsInOrder(f *http2.SettingsFrame) []byte {
	var kept []http2.Setting
	f.ForeachSetting(func(s http2.Setting) error {
		for i := range kept {
			if kept[i].ID == s.ID {
				kept = append(kept[:i], kept[i+1:]...)
				break
			}
		}
		kept = append(kept, s)
		return s.Valid()
	})
	length := 6 * len(kept)
	out := make([]byte, 0, 9+length)
	out = append(out, byte(length>>16), byte(length>>8), byte(length), byte(http2.FrameSettings), byte(f.Flags), 0, 0, 0, 0)
	for _, s := range kept {
		out = binary.BigEndian.AppendUint16(out, uint16(s.ID))
		out = binary.BigEndian.AppendUint32(out, s.Val)
	}
	return out
}

// abortMalformedH2 resets the stream of an HTTP/2 request that carries a
// connection-specific header field, and closes an HTTP/1 connection that
// sent the HTTP/2 preface as a request ("PRI *", which net/http hands to
// handlers). Go's server and the guard refuse both before a handler
// runs: this is the handler's own line, so that none is ever turned into
// HTTP/1.1 for an upstream.
func abortMalformedH2(r *http.Request) {
	if r.Method == "PRI" {
		panic(http.ErrAbortHandler)
	}
	if r.ProtoMajor != 2 {
		return
	}
	for _, name := range [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"} {
		if _, ok := r.Header[name]; ok {
			panic(http.ErrAbortHandler)
		}
	}
	for _, v := range r.Header["Te"] {
		if v != "trailers" {
			panic(http.ErrAbortHandler)
		}
	}
}
