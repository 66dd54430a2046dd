package gateway

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// limitGateway runs a gateway with short limits and its own metrics.
func limitGateway(t *testing.T, opts ...func(*Config)) (*Gateway, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	g := testGateway(t, append([]func(*Config){func(c *Config) {
		c.Registerer = reg
		c.ReadHeaderTimeout = 300 * time.Millisecond
		c.BodyTimeout = 300 * time.Millisecond
		c.SendTimeout = 300 * time.Millisecond
		c.IdleTimeout = 400 * time.Millisecond
		c.TunnelIdleTimeout = 300 * time.Millisecond
	}}, opts...)...)
	return g, reg
}

func closedBy(t *testing.T, g *Gateway, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.metrics.closes.WithLabelValues(reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// readUntilClosed reads c until the gateway closes it, failing after
// within; it returns what was read.
func readUntilClosed(t *testing.T, c net.Conn, within time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("connection still open after %v (read %q): %v", within, b, err)
	}
	return string(b)
}

func TestDefaultConnectionCap(t *testing.T) {
	if n := DefaultMaxConnections(); n < 256 {
		t.Fatalf("DefaultMaxConnections() = %d", n)
	}
	g := testGateway(t)
	if g.cfg.MaxConnections != DefaultMaxConnections() || cap(g.slots) != g.cfg.MaxConnections {
		t.Fatalf("a gateway without MaxConnections caps at %d (slots %d), want %d", g.cfg.MaxConnections, cap(g.slots), DefaultMaxConnections())
	}
}

// TestSlowlorisHead: a head trickling in is closed with 408 at
// ReadHeaderTimeout, while other clients are served.
func TestSlowlorisHead(t *testing.T) {
	up := newRawRecorder(t)
	g, _ := limitGateway(t)
	install(g, nil, up.addr())
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan struct{})
	go func() { // one byte every 50 ms, for up to 5 s
		defer close(done)
		for _, b := range []byte("GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + strings.Repeat("s", 100)) {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	if answer, _ := clientExchange(t, g.Addr(), "GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false); !strings.HasPrefix(answer, "HTTP/1.1 200") {
		t.Fatalf("another client: %q", answer)
	}
	if got := readUntilClosed(t, c, 3*time.Second); !strings.HasPrefix(got, "HTTP/1.1 408 ") {
		t.Fatalf("slow head answered %q", got)
	}
	if closedBy(t, g, closedHeadTimeout) != 1 {
		t.Fatal("head_timeout not counted")
	}
	<-done
}

func TestIdleKeepAliveClosed(t *testing.T) {
	up := newRawRecorder(t)
	g, _ := limitGateway(t)
	install(g, nil, up.addr())
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection not closed: %v", err)
	}
}

// TestSendTimeout: a client that stops reading a large response is cut
// at SendTimeout, and the upstream connection is let go.
func TestSendTimeout(t *testing.T) {
	released := make(chan struct{})
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte(strings.Repeat("x", 64<<10))
		for i := 0; i < 2000; i++ { // 128 MB: more than any socket buffers
			if _, err := w.Write(chunk); err != nil {
				close(released)
				return
			}
		}
	})
	g, _ := limitGateway(t)
	_, cl := install(g, func(re *routeEntry, _ *upstreamCluster) { re.timeout = 0 }, up.URL)
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
	// Read nothing.
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream is still held by a client that reads nothing")
	}
	waitUntil(t, func() bool { return cl.state.active.Load() == 0 })
	if closedBy(t, g, closedSendTimeout) < 1 {
		t.Fatal("send_timeout not counted")
	}
	if f := cl.state.failed.Load(); f != 0 {
		t.Fatalf("a client that stopped reading counted %d upstream errors", f)
	}
}

// TestBodyTrickle: a client that sends its head and trickles its body
// gets 408; the upstream never sees the request, on both paths, and
// nothing counts against it.
func TestBodyTrickle(t *testing.T) {
	up := newRawRecorder(t)
	g, _ := limitGateway(t)
	_, cl := install(g, func(_ *routeEntry, c *upstreamCluster) { c.outlier = defaultOutlierPolicy }, up.addr())
	for _, head := range []string{
		"POST /fast HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
		"POST /general HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789",
	} {
		before := len(up.requests())
		c, err := net.Dial("tcp", g.Addr())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, head)
		got := readUntilClosed(t, c, 3*time.Second)
		c.Close()
		if !strings.HasPrefix(got, "HTTP/1.1 408 ") {
			t.Fatalf("%.20q: answered %q", head, got)
		}
		if seen := up.requests()[before:]; len(seen) != 0 {
			t.Fatalf("%.20q: upstream saw %+v", head, seen)
		}
	}
	if closedBy(t, g, closedBodyTimeout) != 2 || cl.state.failed.Load() != 0 || cl.endpoints[0].fails5xx.Load() != 0 {
		t.Fatalf("body_timeout %v, failed %d, endpoint failures %d", closedBy(t, g, closedBodyTimeout), cl.state.failed.Load(), cl.endpoints[0].fails5xx.Load())
	}
}

// TestUpgradeTimeoutAndTunnelIdle: the route's timeout bounds an upgrade
// until the 101; an upgraded tunnel with no traffic closes at
// TunnelIdleTimeout, one with traffic stays open.
func TestUpgradeTimeoutAndTunnelIdle(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/never" {
			<-r.Context().Done()
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, line)
		}
	})
	// An idle timeout well above the pings' gaps, so a loaded machine
	// cannot make traffic look idle.
	g, _ := limitGateway(t, func(c *Config) { c.TunnelIdleTimeout = time.Second })
	install(g, func(re *routeEntry, _ *upstreamCluster) { re.timeout = 300 * time.Millisecond }, up.URL)
	upgrade := func(path string) (net.Conn, *bufio.Reader, *http.Response) {
		c, err := net.Dial("tcp", g.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return c, br, resp
	}
	c, _, resp := upgrade("/never")
	c.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("upgrade the upstream never answers: %d, want 504", resp.StatusCode)
	}
	c, br, resp := upgrade("/ws")
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	// Traffic keeps it open past the route timeout and the idle timeout.
	for i := 0; i < 12; i++ { // 1.2 s: past the route timeout and the idle timeout
		io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("echo %d: %q %v", i, line, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Silence closes it.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle tunnel not closed: %v", err)
	}
	if closedBy(t, g, closedTunnelIdle) != 1 {
		t.Fatal("tunnel_idle not counted")
	}
}

// TestBodyDeadlineEndsWithBody: the body timeout bounds reading the body,
// not what comes after it: an upstream slower than BodyTimeout still gets
// its answer through (general path), and a kept-alive fast-path
// connection goes back to the idle timeout once its body is in.
func TestBodyDeadlineEndsWithBody(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		time.Sleep(800 * time.Millisecond) // longer than the body timeout
		io.WriteString(w, "slow ok")
	})
	g, _ := limitGateway(t, func(c *Config) { c.BodyTimeout = 300 * time.Millisecond })
	install(g, nil, up.URL)
	answer, _ := clientExchange(t, g.Addr(), "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false)
	if !strings.HasPrefix(answer, "HTTP/1.1 200 ") || !strings.HasSuffix(answer, "slow ok") {
		t.Fatalf("general path, upstream slower than the body timeout: %q", answer)
	}

	// Fast path: a body timeout far above the idle timeout must not keep
	// an idle connection open that long.
	g2, _ := limitGateway(t, func(c *Config) { c.BodyTimeout = time.Minute; c.IdleTimeout = 300 * time.Millisecond })
	fast := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); io.WriteString(w, "ok") })
	install(g2, nil, fast.URL)
	c, err := net.Dial("tcp", g2.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
	time.Sleep(50 * time.Millisecond) // the rest of the body comes later
	io.WriteString(c, "cde")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("idle connection closed after %v, want about the 300 ms idle timeout", d)
	}
}
