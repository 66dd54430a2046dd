package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// forwarder sends one request to one upstream endpoint and streams the
// answer back. It is the part to replace with a leaner HTTP/1.1 path when
// the gateway has to match nginx's CPU per request; the routing above it
// does not change.
type forwarder struct {
	transport *http.Transport
	buffers   sync.Pool
	// tunnelIdle closes an upgraded connection with no bytes either way
	// for this long; onTunnelIdle counts it.
	tunnelIdle   time.Duration
	onTunnelIdle func()
}

// forwarderConfig tunes the upstream connection pool.
type forwarderConfig struct {
	dialTimeout         time.Duration
	userTimeout         time.Duration
	maxIdleConnsPerHost int
	idleConnTimeout     time.Duration
	tunnelIdle          time.Duration
	onTunnelIdle        func()
}

func newForwarder(cfg forwarderConfig) *forwarder {
	dialer := &net.Dialer{Timeout: cfg.dialTimeout, KeepAlive: 30 * time.Second, Control: userTimeoutControl(cfg.userTimeout)}
	return &forwarder{
		transport: &http.Transport{
			Proxy:                 nil, // never an environment proxy
			DialContext:           dialer.DialContext,
			MaxIdleConns:          0, // no global cap; per host below
			MaxIdleConnsPerHost:   cfg.maxIdleConnsPerHost,
			IdleConnTimeout:       cfg.idleConnTimeout,
			ExpectContinueTimeout: time.Second,
			// A proxy passes bodies through as they are.
			DisableCompression: true,
			ForceAttemptHTTP2:  false,
		},
		buffers:      sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }},
		tunnelIdle:   cfg.tunnelIdle,
		onTunnelIdle: cfg.onTunnelIdle,
	}
}

func (f *forwarder) close() { f.transport.CloseIdleConnections() }

// Hop-by-hop headers (RFC 9110 7.6.1) never cross the proxy.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// errUpstream marks a failure before the response started: the caller
// answers 502.
var errUpstream = errors.New("upstream request failed")

// retryFunc decides whether an attempt that ended with code (0: no
// response; connectFailed: the dial failed) is retried.
type retryFunc func(code int, local, connectFailed bool) bool

// forward proxies r to addr ("ip:port"). It returns the status sent to the
// client (the upstream's), when the upstream's response head arrived
// (zero if none did), and, when something failed, what failed (see
// outcome.go) and the error. Before the response has started, a failure
// writes nothing: the caller answers. After, the caller must abort the
// client connection on an upstream failure, so the client sees a
// truncated response, not a silently short one. When retry accepts the
// outcome, nothing is written and retried is true.
//
// headArrived, when not nil, is called as soon as the response head
// arrives (an upgrade's timeout ends there).
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, addr, requestID string, headArrived func(), retry retryFunc) (status int, headAt time.Time, retried bool, fail failure, err error) {
	body := &clientBody{r: r.Body}
	out := &http.Request{
		Method:        r.Method,
		URL:           &url.URL{Scheme: "http", Host: addr, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery},
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        make(http.Header, len(r.Header)+4),
		Body:          body,
		ContentLength: r.ContentLength,
		Host:          r.Host,
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		out.Body = nil // no chunked empty body upstream
	}
	copyHeader(out.Header, r.Header)
	removeHopHeaders(out.Header, r.Header)
	upgrade := upgradeType(r.Header)
	if upgrade != "" {
		out.Header["Connection"] = []string{"Upgrade"}
		out.Header["Upgrade"] = []string{upgrade}
	}
	if te := r.Header.Values("Te"); len(te) > 0 && strings.EqualFold(strings.TrimSpace(te[0]), "trailers") {
		out.Header.Set("Te", "trailers") // gRPC-style trailers may pass
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // do not add Go's
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		out.Header["X-Forwarded-For"] = []string{ip}
	}
	proto := "http"
	if r.TLS != nil || r.Context().Value(tlsConnKey{}) != nil {
		proto = "https"
	}
	out.Header["X-Forwarded-Proto"] = []string{proto}
	out.Header["X-Request-Id"] = []string{requestID}
	out = out.WithContext(r.Context())

	resp, err := f.transport.RoundTrip(out)
	if err != nil {
		switch {
		case body.err != nil:
			return 0, time.Time{}, false, failClientBody, body.err
		case errors.Is(context.Cause(r.Context()), context.Canceled):
			return 0, time.Time{}, false, failClientGone, err
		case errors.Is(context.Cause(r.Context()), context.DeadlineExceeded):
			return 0, time.Time{}, false, failUpstreamTimeout, errors.Join(errUpstream, err)
		}
		var oe *net.OpError
		fail = failUpstream
		if errors.As(err, &oe) && oe.Op == "dial" {
			fail = failConnect
		}
		return 0, time.Time{}, retry != nil && retry(0, true, fail == failConnect), fail, errors.Join(errUpstream, err)
	}
	headAt = time.Now()
	if headArrived != nil {
		headArrived()
	}
	if retry != nil && resp.StatusCode != http.StatusSwitchingProtocols && retry(resp.StatusCode, false, false) {
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
		return resp.StatusCode, headAt, true, failNone, nil
	}
	defer resp.Body.Close()

	if resp.StatusCode == http.StatusSwitchingProtocols {
		status, retried, err = f.upgraded(w, r, resp, upgrade)
		if err != nil {
			fail = failUpstream
		}
		return status, headAt, retried, fail, err
	}

	h := w.Header()
	copyHeader(h, resp.Header)
	removeHopHeaders(h, resp.Header)
	if r.ProtoMajor == 1 {
		h["Connection"] = []string{"close"} // see Gateway.ServeHTTP
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)

	var flusher http.Flusher
	if resp.ContentLength == -1 { // streamed: pass each piece on at once
		flusher, _ = w.(http.Flusher)
	}
	if err := f.copyBody(w, resp.Body, flusher); err != nil {
		switch {
		case errors.Is(err, errClientGone), errors.Is(r.Context().Err(), context.Canceled):
			fail = failClientGone
		case errors.Is(r.Context().Err(), context.DeadlineExceeded):
			fail = failUpstreamTimeout
		default:
			fail = failUpstream
		}
		return resp.StatusCode, headAt, false, fail, err
	}
	for k, vv := range resp.Trailer {
		h[k] = vv
	}
	return resp.StatusCode, headAt, false, failNone, nil
}

// clientBody remembers why reading the client's request body failed, so
// that a malformed, short or slow body is the client's fault and not an
// upstream failure.
type clientBody struct {
	r   io.ReadCloser
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (b *clientBody) Close() error { return b.r.Close() }

// upgradeType is the protocol a request asks to switch to ("" if none).
// h2c upgrades are not passed on (the gateway speaks HTTP/1.1 upstream).
func upgradeType(h http.Header) string {
	for _, c := range h["Connection"] {
		for _, tok := range strings.Split(c, ",") {
			if strings.EqualFold(textproto.TrimString(tok), "upgrade") {
				if u := h.Get("Upgrade"); u != "" && !strings.EqualFold(u, "h2c") {
					return u
				}
			}
		}
	}
	return ""
}

// upgraded completes a 101 Switching Protocols (WebSocket): it hijacks
// the client connection, sends the 101, then copies both ways until one
// side closes.
func (f *forwarder) upgraded(w http.ResponseWriter, r *http.Request, resp *http.Response, want string) (int, bool, error) {
	if got := resp.Header.Get("Upgrade"); !strings.EqualFold(got, want) {
		return 0, false, errors.Join(errUpstream, fmt.Errorf("upstream switched to %q, not %q", got, want))
	}
	backend, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return 0, false, errors.Join(errUpstream, errors.New("101 response body is not writable"))
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		backend.Close()
		return 0, false, errors.Join(errUpstream, fmt.Errorf("hijack: %w", err))
	}
	defer conn.Close()
	defer backend.Close()
	copyHeader(w.Header(), resp.Header)
	removeHopHeaders(w.Header(), resp.Header)
	w.Header()["Connection"] = []string{"Upgrade"}
	w.Header()["Upgrade"] = []string{want}
	head := &http.Response{StatusCode: http.StatusSwitchingProtocols, ProtoMajor: 1, ProtoMinor: 1, Header: w.Header()}
	if err := head.Write(brw); err != nil {
		return http.StatusSwitchingProtocols, false, err
	}
	if err := brw.Flush(); err != nil {
		return http.StatusSwitchingProtocols, false, err
	}
	// Copy both ways until one side closes, or no byte has moved for
	// tunnelIdle.
	var last atomic.Int64
	last.Store(nanotime())
	relay := func(dst io.Writer, src io.Reader) error {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				last.Store(nanotime())
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return werr
				}
			}
			if err != nil {
				return err
			}
		}
	}
	errc := make(chan error, 2)
	go func() { errc <- relay(backend, brw.Reader) }() // client -> upstream, starting with what bufio holds
	go func() { errc <- relay(conn, backend) }()
	tick := time.NewTicker(max(f.tunnelIdle/4, 10*time.Millisecond))
	defer tick.Stop()
	ended := 0
wait:
	for {
		select {
		case <-errc:
			ended++
			break wait
		case <-tick.C:
			if time.Duration(nanotime()-last.Load()) > f.tunnelIdle {
				if f.onTunnelIdle != nil {
					f.onTunnelIdle()
				}
				break wait
			}
		}
	}
	conn.Close()
	backend.Close()
	for ; ended < 2; ended++ { // both directions end once both are closed
		<-errc
	}
	return http.StatusSwitchingProtocols, false, nil
}

// errClientGone is a write to the client that failed.
var errClientGone = errors.New("client went away")

func (f *forwarder) copyBody(w io.Writer, body io.Reader, flusher http.Flusher) error {
	bp := f.buffers.Get().(*[]byte)
	defer f.buffers.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return errors.Join(errClientGone, werr)
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if errors.Is(rerr, context.Canceled) {
				return errors.Join(errClientGone, rerr)
			}
			return rerr
		}
	}
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = append([]string(nil), vv...)
	}
}

// removeHopHeaders drops from h the hop-by-hop headers and those that
// src's Connection header names.
func removeHopHeaders(h, src http.Header) {
	for _, c := range src["Connection"] {
		for _, name := range strings.Split(c, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		delete(h, name)
	}
}
