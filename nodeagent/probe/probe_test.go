package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func hostPort(t *testing.T, raw string) (string, int32) {
	t.Helper()
	host, port, err := net.SplitHostPort(raw)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return host, int32(p)
}

func TestHTTPProbe(t *testing.T) {
	code := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
	}))
	defer srv.Close()
	host, port := hostPort(t, srv.Listener.Addr().String())
	h := &api.Health{HTTP: &api.HTTPProbe{Path: "/healthz", Port: port}, Timeout: api.Duration{Duration: time.Second}}
	p := New()
	if err := p.Check(context.Background(), host, h); err != nil {
		t.Fatalf("healthy: %v", err)
	}
	code = http.StatusServiceUnavailable
	if err := p.Check(context.Background(), host, h); err == nil {
		t.Fatal("503 counted as ready")
	}
	h.HTTP.Path = "/missing"
	if err := p.Check(context.Background(), host, h); err == nil {
		t.Fatal("404 counted as ready")
	}
}

func TestTCPProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host, port := hostPort(t, l.Addr().String())
	h := &api.Health{TCP: &api.TCPProbe{Port: port}}
	if err := New().Check(context.Background(), host, h); err != nil {
		t.Fatalf("open port: %v", err)
	}
	l.Close()
	if err := New().Check(context.Background(), host, h); err == nil {
		t.Fatal("closed port counted as ready")
	}
}

func TestNilHealthIsReady(t *testing.T) {
	if err := New().Check(context.Background(), "127.0.0.1", nil); err != nil {
		t.Fatal(err)
	}
	if Interval(nil) != 10*time.Second {
		t.Fatal("default interval")
	}
}
