package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"
)

// forwarder sends one request to one upstream endpoint and streams the
// answer back. It is the part to replace with a leaner HTTP/1.1 path when
// the gateway has to match nginx's CPU per request; the routing above it
// does not change.
type forwarder struct {
	transport *http.Transport
	buffers   sync.Pool
}

// forwarderConfig tunes the upstream connection pool.
type forwarderConfig struct {
	dialTimeout         time.Duration
	maxIdleConnsPerHost int
	idleConnTimeout     time.Duration
}

func newForwarder(cfg forwarderConfig) *forwarder {
	dialer := &net.Dialer{Timeout: cfg.dialTimeout, KeepAlive: 30 * time.Second}
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
		buffers: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }},
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

// forward proxies r to addr ("ip:port"). It returns the status sent to the
// client, and an error when the upstream failed. Before the response has
// started, a failure returns errUpstream (wrapped) and nothing is written;
// after, the client connection is aborted so the client sees a truncated
// response, not a silently short one.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, addr, requestID string) (int, error) {
	out := &http.Request{
		Method:        r.Method,
		URL:           &url.URL{Scheme: "http", Host: addr, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery},
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        make(http.Header, len(r.Header)+4),
		Body:          r.Body,
		ContentLength: r.ContentLength,
		Host:          r.Host,
	}
	if r.ContentLength == 0 {
		out.Body = nil // no chunked empty body upstream
	}
	copyHeader(out.Header, r.Header)
	removeHopHeaders(out.Header, r.Header)
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
	if r.TLS != nil {
		proto = "https"
	}
	out.Header["X-Forwarded-Proto"] = []string{proto}
	out.Header["X-Request-Id"] = []string{requestID}
	out = out.WithContext(r.Context())

	resp, err := f.transport.RoundTrip(out)
	if err != nil {
		return 0, errors.Join(errUpstream, err)
	}
	defer resp.Body.Close()

	h := w.Header()
	copyHeader(h, resp.Header)
	removeHopHeaders(h, resp.Header)
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
		if r.Context().Err() == nil {
			// The upstream broke mid-body: abort the client connection.
			panic(http.ErrAbortHandler)
		}
		return resp.StatusCode, err
	}
	for k, vv := range resp.Trailer {
		h[k] = vv
	}
	return resp.StatusCode, nil
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
