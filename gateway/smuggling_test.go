package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The smuggling suite: hostile HTTP/1.1 requests over real sockets,
// through the gateway to a raw TCP upstream that records every request it
// receives exactly as framed on the wire. For each case the gateway must
// either send the upstream exactly the requests it meant to (one framing
// line each, the body it announced), or answer the client itself with an
// error and close its connection, sending the upstream nothing. After
// each case, victims' requests on the same pooled upstream connections
// must get their own responses.

// upstreamRequest is one request as a raw upstream read it.
type upstreamRequest struct {
	method, target string
	lines          []string // header lines as received
	body           string
	framing        int  // Content-Length and Transfer-Encoding lines
	broken         bool // the request was cut off or unreadable
}

func (r upstreamRequest) header(name string) string {
	for _, l := range r.lines {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// rawRecorder is an HTTP/1.1 upstream written from RFC 9112 without
// net/http, so it reads exactly what is on the wire: it answers each
// request with "METHOD TARGET len=N cookie=C" and records it.
type rawRecorder struct {
	ln   net.Listener
	mu   sync.Mutex
	reqs []upstreamRequest
}

func newRawRecorder(t *testing.T) *rawRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawRecorder{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); u.serve(c) }()
		}
	}()
	return u
}

func (u *rawRecorder) addr() string { return u.ln.Addr().String() }

func (u *rawRecorder) requests() []upstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upstreamRequest(nil), u.reqs...)
}

func (u *rawRecorder) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r, ok := readRawRequest(br)
		if r.method == "" && !ok {
			return // the connection ended between requests
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, r)
		u.mu.Unlock()
		if !ok {
			return
		}
		body := fmt.Sprintf("%s %s len=%d cookie=%s", r.method, r.target, len(r.body), r.header("Cookie"))
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
}

// readRawRequest reads one request; ok is false when it was cut off or
// could not be framed (the upstream then closes the connection).
func readRawRequest(br *bufio.Reader) (r upstreamRequest, ok bool) {
	line, err := br.ReadString('\n')
	if err != nil {
		return r, false
	}
	parts := strings.Split(strings.TrimRight(line, "\r\n"), " ")
	if len(parts) != 3 {
		r.method, r.target, r.broken = "?", fmt.Sprintf("%q", line), true
		return r, false
	}
	r.method, r.target = parts[0], parts[1]
	length, chunked := -1, false
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			r.broken = true
			return r, false
		}
		l = strings.TrimRight(l, "\r\n")
		if l == "" {
			break
		}
		r.lines = append(r.lines, l)
		k, v, _ := strings.Cut(l, ":")
		switch strings.ToLower(k) {
		case "content-length":
			r.framing++
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		case "transfer-encoding":
			r.framing++
			chunked = true
		}
	}
	if r.framing > 1 {
		r.broken = true // ambiguous: an upstream must not guess
		return r, false
	}
	var b []byte
	switch {
	case chunked:
		if b, err = io.ReadAll(httputil.NewChunkedReader(br)); err == nil {
			for { // trailer lines, then the empty line
				var l string
				if l, err = br.ReadString('\n'); err != nil || l == "\r\n" {
					break
				}
			}
		}
	case length > 0:
		b = make([]byte, length)
		var n int
		n, err = io.ReadFull(br, b)
		b = b[:n]
	}
	r.body = string(b)
	if err != nil {
		r.broken = true
		return r, false
	}
	return r, true
}

// clientExchange sends raw on a new connection (closing its write side
// when halfClose) and returns what the gateway answered and whether it
// closed the connection afterwards.
func clientExchange(t *testing.T, addr, raw string, halfClose bool) (answer string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err == nil // EOF within the deadline: closed
}

func TestSmuggling(t *testing.T) {
	up := newRawRecorder(t)
	g := testGateway(t)
	install(g, nil, up.addr())

	// refused: the client gets status and a closed connection; the
	// upstream gets nothing.
	refused := func(status int) func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
		return func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
			t.Helper()
			if !strings.HasPrefix(answer, fmt.Sprintf("HTTP/1.1 %d ", status)) || !closed {
				t.Errorf("want %d and close; got closed=%v %q", status, closed, answer)
			}
			if strings.Count(answer, "HTTP/1.1 ") != 1 {
				t.Errorf("more than one answer: %q", answer)
			}
			if len(seen) != 0 {
				t.Errorf("upstream received %+v", seen)
			}
		}
	}
	// forwarded: the upstream got exactly these requests ("METHOD target
	// len"), each with one framing line, and the client their answers.
	forwarded := func(want ...string) func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
		return func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
			t.Helper()
			var got []string
			for _, r := range seen {
				if r.broken {
					t.Errorf("upstream received a broken request %+v", r)
				}
				if r.body != "" && r.framing != 1 {
					t.Errorf("request with a body and %d framing lines: %+v", r.framing, r)
				}
				got = append(got, fmt.Sprintf("%s %s %d", r.method, r.target, len(r.body)))
			}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("upstream received %q, want %q", got, want)
			}
			if n := strings.Count(answer, "HTTP/1.1 200 OK"); n != len(want) {
				t.Errorf("%d answers for %d requests: %q", n, len(want), answer)
			}
		}
	}

	smuggled := "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	cases := []struct {
		name      string
		raw       string
		halfClose bool
		check     func(t *testing.T, answer string, closed bool, seen []upstreamRequest)
	}{
		{"CL then TE", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", false, refused(400)},
		{"TE then CL", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n", false, refused(400)},
		{"two equal CL", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", false, refused(400)},
		{"two different CL", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello", false, refused(400)},
		{"CL list", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", false, refused(400)},
		{"CL with sign", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", false, refused(400)},
		{"CL with leading zeros", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0005\r\nConnection: close\r\n\r\nhello", false, forwarded("POST /x 5")},
		{"TE folded onto a continuation line", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\nhello", false, refused(400)},
		{"TE value folded", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", false, refused(400)},
		{"space before colon", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello", false, refused(400)},
		{"TE gzip", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false, refused(501)},
		{"TE xchunked", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", false, refused(501)},
		{"two TE lines", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false, refused(400)},
		{"Connection names Content-Length", "POST /x HTTP/1.1\r\nHost: a\r\nConnection: close, Content-Length\r\nContent-Length: " +
			strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled, false, forwarded("POST /x " + strconv.Itoa(len(smuggled)))},
		{"Connection names Transfer-Encoding", "POST /x HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled), false, forwarded("POST /x " + strconv.Itoa(len(smuggled)))},
		{"Connection names Host", "GET /x HTTP/1.1\r\nConnection: Host, close\r\nHost: a\r\n\r\n", false, forwarded("GET /x 0")},
		{"bad chunk size", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false, func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
			t.Helper()
			// The head may have gone out before the body was read: the
			// upstream may hold a cut-off request, never a complete one.
			refusedOrCut(t, answer, closed, seen, 400)
		}},
		{"chunk size overflow", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n", false, func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
			t.Helper()
			refusedOrCut(t, answer, closed, seen, 400)
		}},
		{"short body", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", true, func(t *testing.T, answer string, closed bool, seen []upstreamRequest) {
			t.Helper()
			refusedOrCut(t, answer, closed, seen, 400)
		}},
		{"pipelined", "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false, forwarded("GET /1 0", "POST /2 3", "GET /3 0")},
		{"leading empty lines", "\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false, forwarded("GET /x 0")},
		{"HTTP/0.9 request line", "GET /\r\n", false, refused(400)},
		{"bare LF", "GET /x HTTP/1.1\nHost: a\n\n", false, refused(400)},
		{"bare CR in a value", "GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\rContent-Length: 5\r\n\r\nhello", false, refused(400)},
		{"no Host", "GET /x HTTP/1.1\r\n\r\n", false, refused(400)},
		{"two Hosts", "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false, refused(400)},
		{"HTTP/1.2", "GET /x HTTP/1.2\r\nHost: a\r\n\r\n", false, refused(505)},
		{"NUL in a value", "GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", false, refused(400)},
		{"unknown expectation", "GET /x HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", false, refused(417)},
	}
	victim := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			answer, closed := clientExchange(t, g.Addr(), tc.raw, tc.halfClose)
			seen := up.requests()[before:]
			tc.check(t, answer, closed, seen)
			// Victims on fresh client connections, over whatever upstream
			// connections the pool kept, each get their own answer.
			for i := 0; i < 3; i++ {
				victim++
				path := fmt.Sprintf("/victim/%d", victim)
				req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: a\r\nCookie: v=%d\r\nConnection: close\r\n\r\n", path, victim)
				answer, _ := clientExchange(t, g.Addr(), req, false)
				want := fmt.Sprintf("GET %s len=0 cookie=v=%d", path, victim)
				if !strings.HasPrefix(answer, "HTTP/1.1 200 OK") || !strings.HasSuffix(answer, want) {
					t.Fatalf("victim %d got %q", victim, answer)
				}
			}
		})
	}
}

// refusedOrCut: the client got status (or, when it had gone, nothing)
// and a closed connection, and any request the upstream saw was cut off
// (its connection was closed, never reused).
func refusedOrCut(t *testing.T, answer string, closed bool, seen []upstreamRequest, status int) {
	t.Helper()
	if !closed || (answer != "" && !strings.HasPrefix(answer, fmt.Sprintf("HTTP/1.1 %d ", status))) {
		t.Errorf("want %d and close; got closed=%v %q", status, closed, answer)
	}
	for _, r := range seen {
		if !r.broken {
			t.Errorf("upstream received a whole request %+v", r)
		}
	}
}

// TestHTTP09ClosedAtOnce: an HTTP/0.9 request line is answered as soon as
// it is read, not held until the idle timeout.
func TestHTTP09ClosedAtOnce(t *testing.T) {
	up := newRawRecorder(t)
	g := testGateway(t, func(c *Config) { c.IdleTimeout = time.Minute })
	install(g, nil, up.addr())
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /index.html\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Fatalf("got %q, %v (a deadline error means the line was held)", b, err)
	}
}

// TestConnectionCannotDropGatewayHeaders: Connection options name the
// gateway's own fields; they still reach the upstream as the gateway set
// them.
func TestConnectionCannotDropGatewayHeaders(t *testing.T) {
	up := newRawRecorder(t)
	g := testGateway(t)
	install(g, nil, up.addr())
	before := len(up.requests())
	clientExchange(t, g.Addr(), "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, X-Forwarded-For, X-Request-Id, X-Forwarded-Proto, Host\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n", false)
	seen := up.requests()[before:]
	if len(seen) != 1 {
		t.Fatalf("upstream saw %+v", seen)
	}
	r := seen[0]
	if r.header("X-Forwarded-For") != "10.1.1.1, 127.0.0.1" || len(r.header("X-Request-Id")) != 32 || r.header("X-Forwarded-Proto") != "http" || r.header("Host") != "a" {
		t.Fatalf("upstream got %q", r.lines)
	}
}

// TestRequestIDTrust: a client's X-Request-Id is replaced unless the
// gateway is configured to trust it, on both paths.
func TestRequestIDTrust(t *testing.T) {
	up := newRawRecorder(t)
	for _, trust := range []bool{false, true} {
		g := testGateway(t, func(c *Config) { c.TrustRequestID = trust })
		install(g, nil, up.addr())
		for _, path := range []string{"fast", "general"} {
			req := "GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: chosen-by-client\r\nConnection: close\r\n\r\n"
			if path == "general" { // HTTP/1.0 takes the general path
				req = "GET /x HTTP/1.0\r\nHost: a\r\nX-Request-Id: chosen-by-client\r\n\r\n"
			}
			before := len(up.requests())
			answer, _ := clientExchange(t, g.Addr(), req, false)
			seen := up.requests()[before:]
			if len(seen) != 1 {
				t.Fatalf("%s: upstream saw %+v (%q)", path, seen, answer)
			}
			kept := seen[0].header("X-Request-Id") == "chosen-by-client"
			if kept != trust {
				t.Errorf("%s, trust=%v: upstream got X-Request-Id %q", path, trust, seen[0].header("X-Request-Id"))
			}
		}
	}
}

// TestHandedOffConnectionServesOneRequest: after a request the fast path
// hands to net/http, the connection closes, so net/http never frames a
// request of its own (here, one it would accept: two equal Content-Lengths).
func TestHandedOffConnectionServesOneRequest(t *testing.T) {
	up := newRawRecorder(t)
	g := testGateway(t)
	install(g, nil, up.addr())
	before := len(up.requests())
	answer, closed := clientExchange(t, g.Addr(), "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"+
		"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", false)
	seen := up.requests()[before:]
	if !closed || strings.Count(answer, "HTTP/1.1 ") != 1 || !strings.Contains(answer, "Connection: close") {
		t.Fatalf("closed=%v answer %q", closed, answer)
	}
	if len(seen) != 1 || seen[0].target != "/chunked" || seen[0].body != "abc" {
		t.Fatalf("upstream saw %+v", seen)
	}
}

// TestHeadLimitsExact: a head of exactly MaxHeaderBytes is served and one
// byte more gets 431, on the fast path and for requests handed to the
// general path; 100 header lines pass and 101 get 431.
func TestHeadLimitsExact(t *testing.T) {
	up := newRawRecorder(t)
	const limit = 6000 // over the fast path's 4 KiB buffer
	g := testGateway(t, func(c *Config) { c.MaxHeaderBytes = limit })
	install(g, nil, up.addr())
	head := func(version string, size int) string {
		start := "GET /x " + version + "\r\nHost: a\r\nConnection: close\r\nX-Pad: "
		return start + strings.Repeat("p", size-len(start)-4) + "\r\n\r\n"
	}
	for _, version := range []string{"HTTP/1.1", "HTTP/1.0"} {
		if h := head(version, limit); len(h) != limit {
			t.Fatalf("test head is %d bytes", len(h))
		}
		if answer, _ := clientExchange(t, g.Addr(), head(version, limit), false); !strings.HasPrefix(answer, version+" 200 ") {
			t.Errorf("%s head of exactly the limit: %.60q", version, answer)
		}
		if answer, closed := clientExchange(t, g.Addr(), head(version, limit+1), false); !strings.HasPrefix(answer, "HTTP/1.1 431 ") || !closed {
			t.Errorf("%s head one byte over the limit: closed=%v %.60q", version, closed, answer)
		}
	}
	fields := func(n int) string {
		var b strings.Builder
		b.WriteString("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n")
		for i := 2; i < n; i++ {
			fmt.Fprintf(&b, "X-F%d: v\r\n", i)
		}
		return b.String() + "\r\n"
	}
	if answer, _ := clientExchange(t, g.Addr(), fields(100), false); !strings.HasPrefix(answer, "HTTP/1.1 200 ") {
		t.Errorf("100 header lines: %.60q", answer)
	}
	if answer, closed := clientExchange(t, g.Addr(), fields(101), false); !strings.HasPrefix(answer, "HTTP/1.1 431 ") || !closed {
		t.Errorf("101 header lines: closed=%v %.60q", closed, answer)
	}
}
