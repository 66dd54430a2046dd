package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// recordingUpstream is a raw TCP upstream that keeps every byte it is
// sent and answers each request head with a 200.
type recordingUpstream struct {
	addr string
	mu   sync.Mutex
	got  bytes.Buffer
}

func startRecordingUpstream(t *testing.T) *recordingUpstream {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &recordingUpstream{addr: lis.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				var head []byte
				buf := make([]byte, 4096)
				for {
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, err := c.Read(buf)
					u.mu.Lock()
					u.got.Write(buf[:n])
					u.mu.Unlock()
					head = append(head, buf[:n]...)
					for {
						i := bytes.Index(head, []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						head = head[i+4:]
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return u
}

func (u *recordingUpstream) received() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got.String()
}

// h2Client speaks HTTP/2 frame by frame over a real connection.
type h2Client struct {
	t      *testing.T
	c      net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	scheme string
}

// dialH2 opens an HTTP/2 connection: h2c with prior knowledge, or TLS
// with ALPN h2; it sends the preface and its SETTINGS.
func dialH2(t *testing.T, addr string, useTLS bool) *h2Client {
	t.Helper()
	var c net.Conn
	var err error
	scheme := "http"
	if useTLS {
		scheme = "https"
		c, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err == nil && c.(*tls.Conn).ConnectionState().NegotiatedProtocol != "h2" {
			err = errors.New("ALPN did not choose h2")
		}
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &h2Client{t: t, c: c, fr: http2.NewFramer(c, c), scheme: scheme}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.encBuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// request sends a GET on stream id with the regular fields given as
// name, value pairs. The encoder indexes them, so a later request that
// repeats one refers to the dynamic table.
func (h *h2Client) request(id uint32, fields ...string) {
	h.t.Helper()
	h.encBuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", h.scheme}, {":authority", "h2.test"}, {":path", "/"}} {
		h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(fields); i += 2 {
		h.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encBuf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// outcome reads until stream id is answered (its :status) or reset (its
// error code); a GOAWAY or a closed connection fails the test.
func (h *h2Client) outcome(id uint32) (status string, reset http2.ErrCode, wasReset bool) {
	h.t.Helper()
	h.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("stream %d: reading frames: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			h.t.Fatalf("stream %d: GOAWAY %v %q", id, f.ErrCode, f.DebugData())
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "", f.ErrCode, true
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f.PseudoValue("status"), 0, false
			}
		}
	}
}

// TestH2ConnectionSpecificHeadersRefused: an HTTP/2 request with a
// connection-specific field is a stream error PROTOCOL_ERROR (RFC 9113
// 8.2.2) on every way HTTP/2 reaches the gateway, and never reaches the
// upstream; "te: trailers" is allowed and passes; the connection stays
// usable (both HPACK decoders in step) after a refusal.
func TestH2ConnectionSpecificHeadersRefused(t *testing.T) {
	dir := t.TempDir()
	cert, _ := writeCert(t, dir, "h2", "h2.test")
	up := startRecordingUpstream(t)
	listeners := func(g *Gateway) map[string]struct {
		addr string
		tls  bool
	} {
		return map[string]struct {
			addr string
			tls  bool
		}{"h2c": {g.Addr(), false}, "tls": {g.TLSAddr(), true}}
	}
	for _, fast := range []bool{true} { // every connection meets the fast path's framer first
		g := testGateway(t, func(c *Config) {
			c.TLSListenAddr = "127.0.0.1:0"
			c.Certificates = []Certificate{cert}
		})
		install(g, nil, up.addr)
		for name, l := range listeners(g) {
			if !fast {
				name += "/no-fast-path"
			}
			t.Run(name, func(t *testing.T) {
				for _, tc := range []struct {
					fields []string
					refuse bool
				}{
					{[]string{"connection", "close"}, true},
					{[]string{"connection", "keep-alive", "keep-alive", "timeout=5"}, true},
					{[]string{"keep-alive", "timeout=5"}, true},
					{[]string{"proxy-connection", "keep-alive"}, true},
					{[]string{"transfer-encoding", "chunked"}, true},
					{[]string{"connection", "upgrade", "upgrade", "websocket"}, true},
					{[]string{"upgrade", "h2c"}, true},
					{[]string{"te", "gzip"}, true},
					{[]string{"te", "trailers, gzip"}, true},
					{[]string{"te", "trailers"}, false},
					{[]string{"x-plain", "1"}, false},
				} {
					marker := fmt.Sprintf("m%d", time.Now().UnixNano())
					h := dialH2(t, l.addr, l.tls)
					h.request(1, append([]string{"x-marker", marker}, tc.fields...)...)
					status, code, reset := h.outcome(1)
					switch {
					case tc.refuse && (!reset || code != http2.ErrCodeProtocol):
						t.Errorf("%q: got status %q reset %v %v, want RST_STREAM PROTOCOL_ERROR", tc.fields, status, reset, code)
					case !tc.refuse && (reset || status != "200"):
						t.Errorf("%q: got status %q reset %v %v, want 200", tc.fields, status, reset, code)
					}
					// The same connection serves a clean request, whose
					// fields come partly from the dynamic table.
					h.request(3, "x-marker", marker+"-next")
					if status, code, reset := h.outcome(3); reset || status != "200" {
						t.Errorf("%q: next request: status %q reset %v %v, want 200", tc.fields, status, reset, code)
					}
					got := up.received()
					if tc.refuse && strings.Contains(got, marker+"\r\n") {
						t.Errorf("%q: the upstream received the refused request:\n%s", tc.fields, got)
					}
					if !tc.refuse && !strings.Contains(got, marker+"\r\n") {
						t.Errorf("%q: the upstream did not receive the request", tc.fields)
					}
					if !strings.Contains(got, marker+"-next\r\n") {
						t.Errorf("%q: the upstream did not receive the next request", tc.fields)
					}
				}
				if got := up.received(); strings.Contains(got, "Te: trailers") == false {
					t.Errorf("te: trailers was not passed on:\n%s", got)
				}
			})
		}
	}
}

// TestH2HandlerRefusesConnectionSpecific: ServeHTTP's own line, for an
// HTTP/2 request that got past the server: it resets the stream and sends
// nothing upstream (before, Connection: upgrade + Upgrade: websocket went
// upstream as a WebSocket upgrade).
func TestH2HandlerRefusesConnectionSpecific(t *testing.T) {
	up := startRecordingUpstream(t)
	g := testGateway(t)
	install(g, nil, up.addr)
	for _, h := range []http.Header{
		{"Connection": {"upgrade"}, "Upgrade": {"websocket"}},
		{"Transfer-Encoding": {"chunked"}},
		{"Keep-Alive": {"timeout=5"}},
		{"Proxy-Connection": {"close"}},
		{"Te": {"gzip"}},
	} {
		r := httptest.NewRequest("GET", "http://h2.test/", nil)
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
		r.Header = h.Clone()
		r.Header.Set("X-Marker", "handler")
		func() {
			defer func() {
				if p := recover(); p != http.ErrAbortHandler {
					t.Errorf("%v: ServeHTTP did not reset the stream (recovered %v)", h, p)
				}
			}()
			g.ServeHTTP(httptest.NewRecorder(), r)
		}()
	}
	// PRI * HTTP/2.0 read as an HTTP/1 request: closed, never routed.
	r := httptest.NewRequest("PRI", "*", nil)
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	func() {
		defer func() {
			if p := recover(); p != http.ErrAbortHandler {
				t.Errorf("PRI *: ServeHTTP did not abort (recovered %v)", p)
			}
		}()
		g.ServeHTTP(httptest.NewRecorder(), r)
	}()
	if got := up.received(); got != "" {
		t.Errorf("the upstream received:\n%s", got)
	}
	// HTTP/1.1 keeps its hop-by-hop handling (stripped, not refused).
	r = httptest.NewRequest("GET", "http://h2.test/", nil)
	r.Header.Set("Connection", "keep-alive")
	r.Header.Set("X-Marker", "http1")
	rec := httptest.NewRecorder()
	g.ServeHTTP(rec, r)
	if rec.Code != 200 || !strings.Contains(up.received(), "X-Marker: http1") {
		t.Errorf("HTTP/1.1 request: %d, upstream got %q", rec.Code, up.received())
	}
}

// TestH2InvalidPrefaceClosed: a connection that sends neither the HTTP/2
// preface nor an HTTP/1.x request is closed without an answer (RFC 9113
// 3.4), with and without the fast path in front; HTTP/1.x is unchanged.
func TestH2InvalidPrefaceClosed(t *testing.T) {
	dir := t.TempDir()
	cert, _ := writeCert(t, dir, "h2", "h2.test")
	up := startRecordingUpstream(t)
	for _, fast := range []bool{true} { // every connection meets the fast path's framer first
		g := testGateway(t, func(c *Config) {
			c.TLSListenAddr = "127.0.0.1:0"
			c.Certificates = []Certificate{cert}
		})
		install(g, nil, up.addr)
		for _, tc := range []struct {
			send, want string // want: prefix of the answer; "" = closed, nothing sent
		}{
			{"INVALID CONNECTION PREFACE\r\n\r\n", ""},
			{"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", ""},
			{"PRI * HTTP/2.0\r\nHost: h2.test\r\n\r\n", ""},
			{"GET / HTTP/1.0\r\nHost: h2.test\r\n\r\n", "HTTP/1.0 200 OK"},
			{"GET / HTTP/2.0\r\nHost: h2.test\r\n\r\n", "HTTP/1.1 505"},
		} {
			got := rawExchange(t, g.Addr(), tc.send, 3*time.Second)
			if tc.want == "" && got != "" || !strings.HasPrefix(got, tc.want) {
				t.Errorf("fast path %v: %q: got %q, want %q", fast, tc.send, got, tc.want)
			}
		}
		// TLS that chose h2 by ALPN: only the preface is valid.
		c, err := tls.Dial("tcp", g.TLSAddr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: h2.test\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
			t.Errorf("fast path %v: TLS h2 with an HTTP/1.1 request: got %q, %v; want closed", fast, b, err)
		}
		c.Close()
	}
	if got := up.received(); got != "" && strings.Contains(got, "PRI") {
		t.Errorf("the upstream received a PRI request:\n%s", got)
	}
}

func TestSniffPreface(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want sniffVerdict
	}{
		{"", sniffMore},
		{"P", sniffMore},
		{"PRI * HTTP/2.0\r\n\r\nSM", sniffMore},
		{http2.ClientPreface, sniffH2},
		{http2.ClientPreface + "\x00\x00\x00\x04", sniffH2},
		{"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", sniffReject},
		{"PRI * HTTP/2.0\r\nHost: x\r\n", sniffReject},
		{"GET / HTTP/1.1\r\n", sniffReject}, // ALPN chose h2, or the framer saw the preface
		{"X", sniffReject},
	} {
		if got := sniffPreface([]byte(tc.in)); got != tc.want {
			t.Errorf("sniffPreface(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestPlainListenerFirstLine: on the plain listener, which serves HTTP/1.x
// and h2c, the fast path's framer tells them apart by the first line: an
// HTTP/1.x request line is served (or answered, e.g. 505), the preface's
// line goes to the HTTP/2 guard, and a line that is neither is closed
// without an answer (an invalid preface, RFC 9113 3.4).
func TestPlainListenerFirstLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want *rejection // nil: a request line
	}{
		{"PRI / HTTP/1.1", nil},
		{"GET / HTTP/1.1", nil},
		{"GET / HTTP/1.0", nil},
		{"PRI * HTTP/2.0", nil},
		{"GET / HTTP/2.0", rejectVersion},
		{"INVALID CONNECTION PREFACE", rejectNotHTTP},
		{"GET / http/1.1", rejectNotHTTP},
		{"GET / HTTP/1.x", rejectRequestLine},
		{"GET /", rejectHTTP09},
		{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", rejectHTTP09},
	} {
		if got := checkRequestLine([]byte(tc.line)); got != tc.want {
			t.Errorf("checkRequestLine(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}

func TestSettingsInOrder(t *testing.T) {
	s := func(id http2.SettingID, v uint32) http2.Setting { return http2.Setting{ID: id, Val: v} }
	win, push, frame := http2.SettingInitialWindowSize, http2.SettingEnablePush, http2.SettingMaxFrameSize
	for _, tc := range []struct {
		in, want []http2.Setting
	}{
		{[]http2.Setting{s(win, 100), s(win, 1)}, []http2.Setting{s(win, 1)}},
		{[]http2.Setting{s(win, 100), s(push, 0), s(win, 1)}, []http2.Setting{s(push, 0), s(win, 1)}},
		// Processing stops at the first invalid value.
		{[]http2.Setting{s(win, 100), s(push, 7), s(win, 1)}, []http2.Setting{s(win, 100), s(push, 7)}},
		// (INITIAL_WINDOW_SIZE above 2^31-1 fails in the framer already.)
		{[]http2.Setting{s(frame, 16384), s(frame, 1<<14-1), s(frame, 16384)}, []http2.Setting{s(frame, 1<<14-1)}},
		{[]http2.Setting{s(0x99, 1), s(0x99, 2)}, []http2.Setting{s(0x99, 2)}},
	} {
		in := settingsFrame(t, tc.in...)
		out := settingsInOrder(in)
		f, err := http2.NewFramer(nil, bytes.NewReader(out)).ReadFrame()
		if err != nil {
			t.Fatalf("%v: rewritten frame: %v", tc.in, err)
		}
		var got []http2.Setting
		f.(*http2.SettingsFrame).ForeachSetting(func(s http2.Setting) error { got = append(got, s); return nil })
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("settingsInOrder(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// settingsFrame reads back a SETTINGS frame written with settings.
func settingsFrame(t testing.TB, settings ...http2.Setting) *http2.SettingsFrame {
	var b bytes.Buffer
	http2.NewFramer(&b, nil).WriteSettings(settings...)
	f, err := http2.NewFramer(nil, &b).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	return f.(*http2.SettingsFrame)
}

func TestMarkSelfDependent(t *testing.T) {
	block := []byte("\x82\x86\x84\x41\x07h2.test")
	for _, tc := range []struct {
		name string
		p    http2.HeadersFrameParam
	}{
		{"plain", http2.HeadersFrameParam{StreamID: 5, BlockFragment: block, EndHeaders: true, EndStream: true}},
		{"padded", http2.HeadersFrameParam{StreamID: 7, BlockFragment: block, EndHeaders: true, PadLength: 3}},
		{"priority", http2.HeadersFrameParam{StreamID: 9, BlockFragment: block, EndHeaders: true, Priority: http2.PriorityParam{StreamDep: 3, Exclusive: true, Weight: 200}}},
		{"padded priority", http2.HeadersFrameParam{StreamID: 11, BlockFragment: block, EndHeaders: true, PadLength: 9, Priority: http2.PriorityParam{StreamDep: 1, Weight: 7}}},
		{"continued", http2.HeadersFrameParam{StreamID: 13, BlockFragment: block[:3]}},
	} {
		var b bytes.Buffer
		http2.NewFramer(&b, nil).WriteHeaders(tc.p)
		out := markSelfDependent(b.Bytes())
		f, err := http2.NewFramer(nil, bytes.NewReader(out)).ReadFrame()
		if err != nil {
			t.Fatalf("%s: rewritten frame: %v", tc.name, err)
		}
		hf := f.(*http2.HeadersFrame)
		if !hf.HasPriority() || hf.Priority.StreamDep != tc.p.StreamID || hf.StreamID != tc.p.StreamID {
			t.Errorf("%s: stream %d priority %v %+v, want dependent on itself", tc.name, hf.StreamID, hf.HasPriority(), hf.Priority)
		}
		if !bytes.Equal(hf.HeaderBlockFragment(), tc.p.BlockFragment) || hf.HeadersEnded() != tc.p.EndHeaders || hf.StreamEnded() != tc.p.EndStream {
			t.Errorf("%s: fragment or flags changed: %q %v", tc.name, hf.HeaderBlockFragment(), hf.Flags)
		}
	}
}

// TestH2ProhibitedCipherSuite: HTTP/2 over a TLS 1.2 suite on RFC 7540's
// block list ends with GOAWAY INADEQUATE_SECURITY (RFC 9113 9.2.2), as
// Go's server would answer had it seen the *tls.Conn; HTTP/1.1 over the
// same suite is served.
func TestH2ProhibitedCipherSuite(t *testing.T) {
	dir := t.TempDir()
	cert, _ := writeCert(t, dir, "h2", "h2.test")
	up := startRecordingUpstream(t)
	g := testGateway(t, func(c *Config) {
		c.TLSListenAddr = "127.0.0.1:0"
		c.Certificates = []Certificate{cert}
	})
	install(g, nil, up.addr)
	cbc := &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}

	h2 := cbc.Clone()
	h2.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", g.TLSAddr(), h2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN chose %q", p)
	}
	io.WriteString(c, http2.ClientPreface)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	f, err := http2.NewFramer(nil, c).ReadFrame()
	if ga, ok := f.(*http2.GoAwayFrame); err != nil || !ok || ga.ErrCode != http2.ErrCodeInadequateSecurity {
		t.Errorf("HTTP/2 over a CBC suite: got %v, %v; want GOAWAY INADEQUATE_SECURITY", f, err)
	}

	h1 := cbc.Clone()
	h1.NextProtos = []string{"http/1.1"}
	tr := &http.Transport{TLSClientConfig: h1}
	defer tr.CloseIdleConnections()
	resp, body := get(t, &http.Client{Transport: tr}, "https://"+g.TLSAddr()+"/")
	if resp.StatusCode != 200 || body != "ok" {
		t.Errorf("HTTP/1.1 over a CBC suite: %d %q", resp.StatusCode, body)
	}
}
