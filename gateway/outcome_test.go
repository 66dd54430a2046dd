package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestCountsAsError(t *testing.T) {
	for _, tc := range []struct {
		status int
		f      failure
		want   bool
	}{
		{200, failNone, false},
		{404, failNone, false},
		{503, failNone, true},
		{502, failConnect, true},
		{504, failUpstreamTimeout, true},
		{200, failUpstream, false}, // cut mid-body: counted by outlier detection, reported by its status
		{StatusClientClosed, failClientGone, false},
		{503, failClientGone, false},
		{400, failClientBody, false},
		{408, failClientBody, false},
	} {
		if got := countsAsError(tc.status, tc.f); got != tc.want {
			t.Errorf("countsAsError(%d, %d) = %v, want %v", tc.status, tc.f, got, tc.want)
		}
	}
}

// TestClientAbortsNeverEject: 50 requests whose clients go away (mid-body,
// while the upstream thinks, on both paths) leave every endpoint in
// rotation, count as no error in the load reports, and are logged as 499
// or 400, never as an upstream failure.
func TestClientAbortsNeverEject(t *testing.T) {
	var hits atomic.Int32
	slow := func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
		}
		io.WriteString(w, "ok")
	}
	a, b := upstream(t, slow), upstream(t, slow)
	var logBuf syncBuffer
	g := testGateway(t, func(c *Config) { c.AccessLog = &logBuf })
	_, c := install(g, func(_ *routeEntry, c *upstreamCluster) {
		c.outlier = defaultOutlierPolicy
		c.outlier.maxPercent = 100
	}, a.URL, b.URL)

	aborts := []string{
		// fast path: the head and part of the body, then gone
		"POST /mid-body HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\npartial",
		// fast path: gone while the upstream thinks
		"GET /waiting HTTP/1.1\r\nHost: a\r\n\r\n",
		// general path (chunked): gone mid-body
		"POST /chunked-mid-body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
		// general path: gone while the upstream thinks
		"GET /waiting-general HTTP/1.0\r\nHost: a\r\n\r\n",
		// fast path: a body shorter than announced, write side closed
		"POST /short HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
	}
	for i := 0; i < 50; i++ {
		raw := aborts[i%len(aborts)]
		conn, err := net.Dial("tcp", g.Addr())
		if err != nil {
			t.Fatal(err)
		}
		before := hits.Load()
		io.WriteString(conn, raw)
		switch {
		case strings.HasPrefix(raw, "POST /short"):
			conn.(*net.TCPConn).CloseWrite()
			io.ReadAll(conn)
		case strings.HasPrefix(raw, "POST /chunked"):
			// The body is read before an upstream is chosen: abort once
			// the fast path has handed the request to net/http.
			waitUntil(t, func() bool { g.conns.mu.Lock(); defer g.conns.mu.Unlock(); return len(g.conns.m) == 0 })
		default:
			waitUntil(t, func() bool { return hits.Load() > before }) // the upstream has it
		}
		conn.(*net.TCPConn).SetLinger(0) // a reset, as a browser tab closing
		conn.Close()
	}
	// Every abort is logged before the endpoints are checked.
	waitUntil(t, func() bool { return strings.Count(logBuf.String(), "\n") >= 50 })
	now := nanotime()
	for _, ep := range c.endpoints {
		if ep.ejected(now) || ep.fails5xx.Load() != 0 || ep.failsGateway.Load() != 0 {
			t.Errorf("endpoint %s: ejected=%v 5xx=%d gateway=%d after client aborts", ep.addr, ep.ejected(now), ep.fails5xx.Load(), ep.failsGateway.Load())
		}
	}
	if f := c.state.failed.Load(); f != 0 {
		t.Errorf("%d client aborts counted as errors in the load reports", f)
	}
	statuses := map[float64]int{}
	for _, line := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		statuses[rec["status"].(float64)]++
	}
	for st := range statuses {
		if st != StatusClientClosed && st != 400 && st != 200 {
			t.Errorf("access log statuses %v: want 499 or 400 for aborts", statuses)
		}
	}
	if statuses[StatusClientClosed] == 0 {
		t.Errorf("no 499 in the access log: %v", statuses)
	}
	// Both endpoints still serve.
	seen := map[string]bool{}
	for i := 0; i < 10; i++ {
		resp, body := get(t, http.DefaultClient, "http://"+g.Addr()+fmt.Sprintf("/after/%d", i))
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("after the aborts: %d %q", resp.StatusCode, body)
		}
		seen[resp.Header.Get("X-Request-Id")] = true
	}
}

// TestStaleRetryResendsBody: a request whose body was streamed (not kept
// for a replay) is not sent again without its body when a pooled
// connection turns out to be closed.
func TestStaleRetryResendsBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan upstreamRequest, 16)
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, n int) {
				defer c.Close()
				br := bufio.NewReader(c)
				c.SetReadDeadline(time.Now().Add(time.Second))
				r, ok := readRawRequest(br)
				c.SetReadDeadline(time.Time{})
				got <- r
				if !ok {
					return
				}
				// Answer the first request on each connection; read the
				// next and close without an answer, as an upstream whose
				// keep-alive timed out as the request arrived.
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				readRawRequest(br)
			}(c, n)
		}
	}()
	g := testGateway(t)
	install(g, nil, ln.Addr().String())
	// 3,000 bytes sent after the head (not buffered when the head is
	// read), and 20,000 (streamed).
	for _, size := range []int{3000, 20000} {
		if out := rawExchange(t, g.Addr(), "GET /warm HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 5*time.Second); !strings.HasPrefix(out, "HTTP/1.1 200") {
			t.Fatalf("warm-up: %q", out)
		}
		<-got
		body := strings.Repeat("b", size)
		c, err := net.Dial("tcp", g.Addr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", size)
		time.Sleep(50 * time.Millisecond)
		io.WriteString(c, body)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		out, _ := io.ReadAll(c)
		c.Close()
		deadline := time.After(1500 * time.Millisecond)
	wait:
		for {
			select {
			case r := <-got:
				if r.method == "PUT" && len(r.body) != len(body) {
					t.Fatalf("upstream got PUT with %d body bytes, want %d (answer %.40q)", len(r.body), len(body), out)
				}
			case <-deadline:
				break wait
			}
		}
	}
}
