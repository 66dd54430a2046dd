// Package health serves /healthz and /readyz beside a role's /metrics.
//
// /healthz answers 200 while the process serves HTTP at all: a liveness
// probe that restarts a wedged process, nothing more. /readyz runs the
// role's checks (each with a timeout) and answers 200 when every one
// passes, 503 naming each that failed: what a load balancer or an
// orchestrator waits for before sending work. Both answer GET and HEAD
// only, and their bodies are short plain text.
//
// It knows nothing of the roles: cmd/berth gives each role its checks.
package health

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Check is one readiness condition: Fn returns nil when it holds, or an
// error saying why not.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Timeout bounds each check of a /readyz request.
const Timeout = 2 * time.Second

// Register adds /healthz and /readyz to mux, /readyz running checks in
// order.
func Register(mux *http.ServeMux, checks ...Check) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if !getOrHead(w, r) {
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !getOrHead(w, r) {
			return
		}
		body, ok := Run(r.Context(), checks)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, body)
	})
}

// Run runs checks, all at once (a request takes at most Timeout, not
// Timeout per check: a probe's own timeout is often a second or two), and
// returns a report, one line each in their order ("ok name" or "fail
// name: why"), and whether all passed.
func Run(ctx context.Context, checks []Check) (string, bool) {
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, Timeout)
			defer cancel()
			errs[i] = c.Fn(cctx)
		})
	}
	wg.Wait()
	var b strings.Builder
	ok := true
	for i, c := range checks {
		if err := errs[i]; err != nil {
			ok = false
			// One line per check, whatever the error says.
			fmt.Fprintf(&b, "fail %s: %s\n", c.Name, strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Fprintf(&b, "ok %s\n", c.Name)
	}
	if ok {
		b.WriteString("ready\n")
	}
	return b.String(), ok
}

func getOrHead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return false
	}
	return true
}
