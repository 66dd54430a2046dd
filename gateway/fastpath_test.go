package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// testGateway runs a gateway whose table the test installs by hand; its
// xDS address refuses connections (the ADS client just backs off).
func testGateway(t *testing.T, opts ...func(*Config)) *Gateway {
	t.Helper()
	cfg := DefaultConfig()
	cfg.XDSAddr, cfg.NodeID = "127.0.0.1:1", "test"
	cfg.BackoffMin, cfg.BackoffMax = time.Second, time.Second
	cfg.ShutdownTimeout = 2 * time.Second
	for _, o := range opts {
		o(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return g
}

// install routes every request (any host, path "/") to the upstreams.
func install(g *Gateway, mutate func(*routeEntry, *upstreamCluster), upstreams ...string) (*routeEntry, *upstreamCluster) {
	m, _ := newMetrics(nil)
	c := &upstreamCluster{
		name: "c", state: g.reg.cluster("c"), outlier: outlierPolicy{},
		retries: retryBudget{maxRetries: 3}, connectTimeout: time.Second,
	}
	for _, u := range upstreams {
		c.endpoints = append(c.endpoints, g.reg.endpoint(strings.TrimPrefix(u, "http://")))
	}
	re := &routeEntry{name: "r", prefix: "/", clusters: []weightedCluster{{name: "c", weight: 1, cluster: c, stats: m.stats("r", "c")}}, total: 1}
	if mutate != nil {
		mutate(re, c)
	}
	g.table.Store(&table{hasListener: true, exact: map[string]*virtualHost{}, catchAll: &virtualHost{name: "v", routes: []*routeEntry{re}}})
	return re, c
}

func upstream(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// rawExchange writes req on a new connection and returns what comes back
// until the server closes or timeout passes.
func rawExchange(t *testing.T, addr, req string, readFor time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(readFor))
	b, _ := io.ReadAll(c)
	return string(b)
}

func get(t *testing.T, client *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestFastPathFraming(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", "3")
		case "/hints":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		case "/hop":
			w.Header().Set("Connection", "X-Private")
			w.Header().Set("X-Private", "secret")
			w.Header().Set("Keep-Alive", "timeout=5")
			fmt.Fprintf(w, "seen:%q,%q,%q,%q,%q xff=%s proto=%s id=%d",
				r.Header.Get("X-Foo"), r.Header.Get("Keep-Alive"), r.Header.Get("Proxy-Authorization"),
				r.Header.Get("Te"), r.Header.Get("Connection"), r.Header.Get("X-Forwarded-For"),
				r.Header.Get("X-Forwarded-Proto"), len(r.Header.Get("X-Request-Id")))
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		default:
			fmt.Fprintf(w, "%s %s body=%q", r.Method, r.URL.RequestURI(), body)
		}
	})
	g := testGateway(t)
	install(g, nil, up.URL)
	client := &http.Client{Transport: &http.Transport{}}
	base := "http://" + g.Addr()

	t.Run("content-length and query", func(t *testing.T) {
		resp, body := get(t, client, base+"/a/b?x=1&y=%20")
		if resp.StatusCode != 200 || body != `GET /a/b?x=1&y=%20 body=""` || resp.Header.Get("X-Request-Id") == "" {
			t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
		}
	})
	t.Run("chunked with trailers", func(t *testing.T) {
		resp, body := get(t, client, base+"/chunked")
		if body != "part0;part1;part2;" || resp.Trailer.Get("X-Sum") != "3" {
			t.Fatalf("%q trailer %v", body, resp.Trailer)
		}
	})
	t.Run("early hints then final", func(t *testing.T) {
		out := rawExchange(t, g.Addr(), "GET /hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 5*time.Second)
		if !strings.HasPrefix(out, "HTTP/1.1 103 Early Hints\r\n") || !strings.Contains(out, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(out, "after hints") {
			t.Fatalf("got %q", out)
		}
	})
	t.Run("hop-by-hop headers", func(t *testing.T) {
		req := "GET /hop HTTP/1.1\r\nHost: a\r\nConnection: X-Foo, close\r\nX-Foo: 1\r\nKeep-Alive: 300\r\n" +
			"Proxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n\r\n"
		out := rawExchange(t, g.Addr(), req, 5*time.Second)
		if !strings.Contains(out, `seen:"","","","trailers","" xff=10.9.9.9, 127.0.0.1 proto=http id=32`) {
			t.Fatalf("upstream saw hop-by-hop headers: %q", out)
		}
		head := strings.ToLower(out[:strings.Index(out, "\r\n\r\n")])
		if strings.Contains(head, "x-private") || strings.Contains(head, "keep-alive") || !strings.Contains(head, "connection: close") {
			t.Fatalf("client got hop-by-hop headers or no close: %q", head)
		}
	})
	t.Run("HEAD keeps Content-Length, sends no body", func(t *testing.T) {
		out := rawExchange(t, g.Addr(), "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 5*time.Second)
		if strings.Count(out, "HTTP/1.1 200 OK") != 2 || !strings.Contains(out, "Content-Length: 15\r\n") || !strings.HasSuffix(out, `GET /y body=""`) {
			t.Fatalf("got %q", out)
		}
	})
	t.Run("204 and pipelined posts", func(t *testing.T) {
		out := rawExchange(t, g.Addr(), "GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n"+
			"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"+
			"POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", 5*time.Second)
		if !strings.HasPrefix(out, "HTTP/1.1 204 No Content\r\n") || !strings.Contains(out, `POST /p body="hello"`) || !strings.HasSuffix(out, `POST /q body="abc"`) {
			t.Fatalf("got %q", out)
		}
	})
	t.Run("large (streamed) and chunked (general path) request bodies", func(t *testing.T) {
		big := strings.Repeat("x", 100<<10)
		resp, err := client.Post(base+"/big", "text/plain", strings.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("big body: %v after %d bytes", err, len(b))
		}
		if !strings.Contains(string(b), fmt.Sprintf("%q", big)) {
			t.Fatalf("big body: %d bytes back", len(b))
		}
		out := rawExchange(t, g.Addr(), "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 5*time.Second)
		if !strings.Contains(out, `POST /c body="abc"`) {
			t.Fatalf("chunked request: %q", out)
		}
	})
	t.Run("malformed requests", func(t *testing.T) {
		out := rawExchange(t, g.Addr(), "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 2*time.Second)
		if !strings.HasPrefix(out, "HTTP/1.1 400") {
			t.Fatalf("conflicting Content-Length: %q", out)
		}
		out = rawExchange(t, g.Addr(), "GET / HTTP/1.1\r\n\r\n", 2*time.Second)
		if !strings.HasPrefix(out, "HTTP/1.1 400") {
			t.Fatalf("no Host: %q", out)
		}
	})
}

func TestHeaderLimit(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	g := testGateway(t, func(c *Config) { c.MaxHeaderBytes = 8 << 10 })
	install(g, nil, up.URL)
	out := rawExchange(t, g.Addr(), "GET / HTTP/1.1\r\nHost: a\r\nX-Big: "+strings.Repeat("b", 16<<10)+"\r\n\r\n", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 431") {
		t.Fatalf("oversized head: %.60q", out)
	}
	out = rawExchange(t, g.Addr(), "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Mid: "+strings.Repeat("m", 6<<10)+"\r\n\r\n", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 200") {
		t.Fatalf("head over the fast path buffer but under the limit: %.60q", out)
	}
}

func TestConnectionLimit(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	g := testGateway(t, func(c *Config) { c.MaxConnections = 1 })
	install(g, nil, up.URL)
	first, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(first, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(first)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first connection: %v", err)
	}
	// The second connection is not served while the first is open.
	second, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	io.WriteString(second, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _ := second.Read(make([]byte, 1)); n != 0 {
		t.Fatal("second connection served over the limit")
	}
	first.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(second), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("second connection after the first closed: %v", err)
	}
}

func TestStreamingIsNotBuffered(t *testing.T) {
	release := make(chan struct{})
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first;")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "second")
	})
	g := testGateway(t)
	install(g, func(re *routeEntry, _ *upstreamCluster) { re.timeout = 0 }, up.URL)
	resp, err := http.Get("http://" + g.Addr() + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first;" {
		t.Fatalf("first piece: %q %v", buf, err)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second" {
		t.Fatalf("rest %q", rest)
	}
}

func TestUpstreamErrors(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	slow := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	g := testGateway(t)

	install(g, nil, closedAddr)
	resp, _ := get(t, http.DefaultClient, "http://"+g.Addr()+"/")
	if resp.StatusCode != 502 {
		t.Errorf("closed port: %d, want 502", resp.StatusCode)
	}
	install(g, func(re *routeEntry, _ *upstreamCluster) { re.timeout = 100 * time.Millisecond }, slow.URL)
	start := time.Now()
	resp, _ = get(t, http.DefaultClient, "http://"+g.Addr()+"/")
	if resp.StatusCode != 504 || time.Since(start) > 3*time.Second {
		t.Errorf("route timeout: %d after %v, want 504 after ~100ms", resp.StatusCode, time.Since(start))
	}
}

func TestRetries(t *testing.T) {
	var hits503, hitsOK atomic.Int32
	bad := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits503.Add(1)
		w.WriteHeader(503)
		io.WriteString(w, "unavailable")
	})
	good := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hitsOK.Add(1)
		io.WriteString(w, "good")
	})
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	g := testGateway(t)
	policy := &retryPolicy{numRetries: 2, onConnect: true, statuses: []int{503}, backoffBase: time.Millisecond}
	install(g, func(re *routeEntry, _ *upstreamCluster) { re.retry = policy }, bad.URL, good.URL, closedAddr)

	for i := 0; i < 30; i++ {
		resp, body := get(t, http.DefaultClient, "http://"+g.Addr()+"/")
		if resp.StatusCode != 200 || body != "good" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if hits503.Load() == 0 {
		t.Error("the 503 upstream was never tried")
	}
	// POST is not idempotent: a 503 is passed on, not retried.
	install(g, func(re *routeEntry, _ *upstreamCluster) { re.retry = policy }, bad.URL)
	resp, err := http.Post("http://"+g.Addr()+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("POST: %d, want the upstream's 503", resp.StatusCode)
	}
	// Without a policy, nothing is retried.
	install(g, nil, bad.URL)
	if resp, _ := get(t, http.DefaultClient, "http://"+g.Addr()+"/"); resp.StatusCode != 503 {
		t.Errorf("no policy: %d", resp.StatusCode)
	}
}

func TestOutlierEjection(t *testing.T) {
	var badHits atomic.Int32
	bad := upstream(t, func(w http.ResponseWriter, r *http.Request) { badHits.Add(1); w.WriteHeader(500) })
	good := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	g := testGateway(t)
	install(g, func(_ *routeEntry, c *upstreamCluster) {
		c.outlier = outlierPolicy{consecutive5xx: 3, baseEjection: time.Minute, maxEjection: time.Hour, maxPercent: 50}
	}, bad.URL, good.URL)
	for i := 0; i < 40; i++ {
		get(t, http.DefaultClient, "http://"+g.Addr()+"/")
	}
	if n := badHits.Load(); n != 3 {
		t.Errorf("failing endpoint got %d requests, want 3 then ejection", n)
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		// Echo lines back, upper-cased, until EOF.
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, strings.ToUpper(line))
		}
	})
	g := testGateway(t)
	install(g, nil, up.URL)
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	for _, msg := range []string{"hello\n", "again\n"} {
		io.WriteString(c, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != strings.ToUpper(msg) {
			t.Fatalf("echo %q: %q %v", msg, got, err)
		}
	}
}

func TestH2CPriorKnowledge(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "h2 ok") })
	g := testGateway(t)
	install(g, nil, up.URL)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	resp, body := get(t, &http.Client{Transport: tr}, "http://"+g.Addr()+"/")
	if resp.ProtoMajor != 2 || body != "h2 ok" {
		t.Fatalf("proto %s body %q", resp.Proto, body)
	}
	_ = tls.VersionTLS13
}

func TestGracefulShutdownFastPath(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})
	cfg := DefaultConfig()
	cfg.XDSAddr, cfg.NodeID = "127.0.0.1:1", "test"
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	install(g, nil, up.URL)
	// An idle keep-alive connection and a busy one.
	idle, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	got := make(chan string, 1)
	go func() {
		got <- rawExchange(t, g.Addr(), "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 10*time.Second)
	}()
	<-arrived
	cancel()
	// The idle connection is closed promptly.
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection at shutdown: %v, want EOF", err)
	}
	close(release)
	out := <-got
	if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, "Connection: close") || !strings.HasSuffix(out, "done") {
		t.Errorf("in-flight request at shutdown: %q", out)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestJSONAccessLog(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	var logBuf syncBuffer
	g := testGateway(t, func(c *Config) { c.AccessLog = &logBuf; c.TrustRequestID = true })
	install(g, nil, up.URL)
	req, _ := http.NewRequest("GET", "http://"+g.Addr()+"/a?b=c", nil)
	req.Header.Set("X-Request-Id", "abc123")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var rec map[string]any
	waitUntil(t, func() bool { return json.Unmarshal([]byte(logBuf.String()), &rec) == nil })
	if rec["request_id"] != "abc123" || rec["path"] != "/a" || rec["status"] != float64(200) || rec["route"] != "r" ||
		rec["cluster"] != "c" || rec["client"] != "127.0.0.1" || rec["method"] != "GET" || rec["upstream"] == "" {
		t.Fatalf("access record %v", rec)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUpstreamClosedIdleConnection(t *testing.T) {
	closed := make(chan struct{}, 16)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	}))
	up.Config.IdleTimeout = 20 * time.Millisecond
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	g := testGateway(t)
	install(g, nil, up.URL)
	if resp, body := get(t, http.DefaultClient, "http://"+g.Addr()+"/"); resp.StatusCode != 200 || body != "GET " {
		t.Fatalf("first: %d %q", resp.StatusCode, body)
	}
	select { // the upstream closes the pooled connection
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream kept the idle connection")
	}
	// A POST cannot be retried after it was sent: the gateway must not
	// send it on the dead connection.
	resp, err := http.Post("http://"+g.Addr()+"/", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "POST payload" {
		t.Fatalf("POST after upstream closed idle connection: %d %q", resp.StatusCode, b)
	}
}

// TestDrainingEndpointFinishesInFlight: an endpoint that leaves the
// configuration (removed or DRAINING) gets no new requests, and the
// request it is serving completes.
func TestDrainingEndpointFinishesInFlight(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	var oldHits atomic.Int32
	old := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		oldHits.Add(1)
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(w, "old")
	})
	fresh := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "new") })
	g := testGateway(t)
	_, oldCluster := install(g, func(re *routeEntry, _ *upstreamCluster) { re.timeout = 0 }, old.URL)
	oldEP := oldCluster.endpoints[0]
	g.reg.sweep()
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + g.Addr() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-arrived
	// The new configuration has only the fresh endpoint.
	install(g, nil, fresh.URL)
	g.reg.sweep()
	if !oldEP.retired.Load() {
		t.Fatal("the endpoint that left was not retired")
	}
	before := oldHits.Load()
	for i := 0; i < 10; i++ {
		if _, body := get(t, http.DefaultClient, "http://"+g.Addr()+"/"); body != "new" {
			t.Fatalf("new request went to %q", body)
		}
	}
	if oldHits.Load() != before {
		t.Error("the draining endpoint got new requests")
	}
	once.Do(func() { close(release) })
	if body := <-got; body != "old" {
		t.Fatalf("in-flight request on the draining endpoint: %q", body)
	}
}

// The translator's retry policy limits retries to idempotent methods with
// retriable_request_headers on :method; the gateway honours it, so a POST
// to a closed port is not retried even though connect failures would be.
func TestRetryPolicyMethodsFromTranslator(t *testing.T) {
	rp := &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream,retriable-status-codes", RetriableStatusCodes: []uint32{503}}
	for _, m := range []string{"GET", "HEAD"} {
		rp.RetriableRequestHeaders = append(rp.RetriableRequestHeaders, &routev3.HeaderMatcher{Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m}}}})
	}
	p, err := compileRetryPolicy(rp)
	if err != nil {
		t.Fatal(err)
	}
	if !p.allowsMethod("GET") || p.allowsMethod("POST") || !p.allowsMethodBytes([]byte("HEAD")) || p.allowsMethodBytes([]byte("PUT")) {
		t.Fatalf("methods = %v", p.methods)
	}
	rp.RetriableRequestHeaders = append(rp.RetriableRequestHeaders, &routev3.HeaderMatcher{Name: "x-other",
		HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}})
	if _, err := compileRetryPolicy(rp); err == nil {
		t.Fatal("a non-:method retriable request header was accepted")
	}
}
