package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func get(t *testing.T, srv *httptest.Server, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHealthAndReadiness(t *testing.T) {
	var etcdErr error
	mux := http.NewServeMux()
	Register(mux,
		Check{"etcd", func(context.Context) error { return etcdErr }},
		Check{"slow", func(ctx context.Context) error {
			if _, ok := ctx.Deadline(); !ok {
				return errors.New("no deadline")
			}
			return nil
		}},
	)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	if code, body := get(t, srv, "GET", "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, srv, "GET", "/readyz"); code != 200 || body != "ok etcd\nok slow\nready\n" {
		t.Errorf("/readyz ready = %d %q", code, body)
	}
	etcdErr = errors.New("no leader\nsecond line")
	code, body := get(t, srv, "GET", "/readyz")
	if code != 503 || body != "fail etcd: no leader second line\nok slow\n" {
		t.Errorf("/readyz not ready = %d %q", code, body)
	}
	if code, _ := get(t, srv, "HEAD", "/readyz"); code != 503 {
		t.Errorf("HEAD /readyz = %d, want 503", code)
	}
	if code, body := get(t, srv, "POST", "/healthz"); code != 405 || !strings.Contains(body, "not allowed") {
		t.Errorf("POST /healthz = %d %q, want 405", code, body)
	}
}

// Checks run side by side: each of these passes only once all three
// have started (run one after another, the first would wait out its
// timeout and fail); the report keeps their order.
func TestChecksRunTogether(t *testing.T) {
	var started sync.WaitGroup
	started.Add(3)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	together := func(name string) Check {
		return Check{Name: name, Fn: func(ctx context.Context) error {
			started.Done()
			select {
			case <-all:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}}
	}
	report, ok := Run(context.Background(), []Check{together("a"), together("b"), together("c")})
	if !ok || report != "ok a\nok b\nok c\nready\n" {
		t.Fatalf("report %q ok %v", report, ok)
	}
}
