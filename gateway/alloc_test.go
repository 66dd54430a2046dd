package gateway

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"sync"
	"testing"
)

// rawUpstream answers every request head with a fixed response, without
// allocating per request.
func rawUpstream(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return serveRaw(t, l)
}

// serveRaw is rawUpstream on a listener of the caller's.
func serveRaw(t *testing.T, l net.Listener) string {
	t.Helper()
	// Connections still open at the end (one to a host whose link was
	// cut gets no FIN) are closed with the test.
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestFastPathDoesNotAllocate sends keep-alive requests through the fast
// path and counts allocations in the whole process (client, gateway and
// upstream); the client and upstream here allocate nothing per request.
func TestFastPathDoesNotAllocate(t *testing.T) {
	g := testGateway(t, func(c *Config) { c.LoadReporting = false })
	install(g, nil, rawUpstream(t))
	req := "GET /x HTTP/1.1\r\nHost: a.test\r\nUser-Agent: alloc-test\r\n\r\n"
	if avg := allocsPerRequest(t, g, req); avg > 0.05 {
		t.Errorf("%.2f allocations per proxied request, want none", avg)
	}
}

// allocsPerRequest sends req over one keep-alive connection to g, reading
// each response whole, and returns the allocations per round trip in the
// whole process after warming pools and connections.
func allocsPerRequest(t *testing.T, g *Gateway, req string) float64 {
	t.Helper()
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	raw := []byte(req)
	roundTrip := func() {
		if _, err := c.Write(raw); err != nil {
			t.Fatal(err)
		}
		n := -1
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				t.Fatal(err)
			}
			if len(line) <= 2 {
				break
			}
			if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
				n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
			}
		}
		if _, err := br.Discard(n); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		roundTrip()
	}
	return testing.AllocsPerRun(2000, roundTrip)
}
