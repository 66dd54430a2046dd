package controlplane

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/rollouthistory"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/ui"
)

// The rollout history with the real control plane: while a canary runs,
// points arrive every second (live, over the dashboard's event stream
// too), and a page opened in the middle of the rollout gets it from the
// start; the verdict comes with the end.
func TestRolloutHistoryWhileACanaryRuns(t *testing.T) {
	ld := &loads{}
	h := start(t, func(c *Config) { c.Loads, c.DrainDelay = ld, 50*time.Millisecond })
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 8000, MemoryBytes: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h, "a")
	steps := []*pb.CanaryStep{{Weight: 25, Pause: "promote"}, {Weight: 100}}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v1", steps...)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "v1 ready", func() (bool, string) {
		reportReady(t, h, "a")
		snap := h.srv.Publisher().Latest()
		return snap != nil && snap.Lookup("default", "hello") != nil && len(snap.Lookup("default", "hello").ReadyEndpoints()) == 4, ""
	})
	ld.mu.Lock()
	ld.canary, ld.requests, ld.errs = 2, 50, 1
	ld.mu.Unlock()
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v2", steps...)}}); err != nil {
		t.Fatal(err)
	}
	rec := h.srv.RolloutHistory()
	eventually(t, "paused at 25% with points", func() (bool, string) {
		reportReady(t, h, "a")
		hist, ok := rec.History("default", "hello")
		if !ok {
			return false, "no history"
		}
		n := len(hist.Points)
		return n >= 3 && hist.Points[n-1].Phase == "Paused" && hist.Points[n-1].Weight == 0.25, fmt.Sprintf("%d points, marks %+v", n, hist.Marks)
	})

	// A page opened now, through the dashboard and the admin's login.
	conn, err := pb.Dial(h.srv.APIAddr(), pki.ClientTLS(nil, h.srv.CA().Pool()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ucfg := ui.DefaultConfig()
	ucfg.Addr, ucfg.API, ucfg.Logger = "127.0.0.1:0", pb.NewBerthClient(conn), slog.New(slog.NewTextHandler(io.Discard, nil))
	ucfg.Views, ucfg.Discovery, ucfg.History = h.srv.Cache(), h.srv.Publisher().Latest, rec
	dash, err := ui.New(ucfg)
	if err != nil {
		t.Fatal(err)
	}
	uctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- dash.Run(uctx) }()
	defer func() { stop(); <-done }()
	admin, err := ReadAdminConfig(h.srv.AdminConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	base := "http://" + dash.Addr()
	if resp, err := browser.Get(base + "/login?token=" + url.QueryEscape(admin.Token)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp, err := browser.Get(base + "/api/rollouts/default/hello/history")
	if err != nil {
		t.Fatal(err)
	}
	var hist rollouthistory.History
	err = json.NewDecoder(resp.Body).Decode(&hist)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("history: %s %v", resp.Status, err)
	}
	if hist.Revision != 2 || hist.Stable != 1 || len(hist.Steps) != 2 || hist.Steps[0].StartedMs == 0 || hist.Thresholds.MaxErrorRate != 0.05 || hist.Thresholds.MinRequests != 10 {
		t.Fatalf("history: %+v", hist)
	}
	// From the start: the first step's mark, and points from its first
	// second on, all before the page was opened.
	if len(hist.Points) < 3 || len(hist.Marks) < 2 || hist.Points[0].TMs > hist.Steps[0].StartedMs+1000 || hist.Marks[0].Kind != "step" || hist.Verdict != nil {
		t.Fatalf("history from the start: points %+v marks %+v", hist.Points, hist.Marks)
	}
	var canary rollouthistory.RevisionPoint
	for _, rp := range hist.Points[len(hist.Points)-1].Revisions {
		if rp.Role == "canary" {
			canary = rp
		}
	}
	if canary.Revision != 2 || canary.RPS != 10 || canary.ErrorRate != 0.02 {
		t.Fatalf("canary traffic (50 requests, 1 error in 5 s): %+v", canary)
	}

	// Live points over the event stream.
	sreq, _ := http.NewRequestWithContext(uctx, "GET", base+"/api/stream", nil)
	sresp, err := browser.Do(sreq)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	lines := bufio.NewScanner(sresp.Body)
	points, deadline := 0, time.Now().Add(10*time.Second)
	for points < 2 && lines.Scan() && time.Now().Before(deadline) {
		if data, ok := strings.CutPrefix(lines.Text(), "data: "); ok && strings.Contains(data, `"point"`) {
			var l rollouthistory.Live
			if err := json.Unmarshal([]byte(data), &l); err != nil || l.Service != "hello" || l.Point.Weight != 0.25 {
				t.Fatalf("point event %s: %v", data, err)
			}
			points++
		}
	}
	if points < 2 {
		t.Fatalf("%d live points in 10 s", points)
	}

	// Promote through the dashboard: the verdict follows.
	resp, err = browser.Get(base + "/api/whoami")
	if err != nil {
		t.Fatal(err)
	}
	var who struct{ CSRF string }
	_ = json.NewDecoder(resp.Body).Decode(&who)
	resp.Body.Close()
	preq, _ := http.NewRequest("POST", base+"/api/rollouts/default/hello/promote", nil)
	preq.Header.Set("Origin", base)
	preq.Header.Set("X-CSRF-Token", who.CSRF)
	presp, err := browser.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	presp.Body.Close()
	if presp.StatusCode != 200 {
		t.Fatalf("promote: %s", presp.Status)
	}
	eventually(t, "promoted verdict", func() (bool, string) {
		reportReady(t, h, "a")
		hist, _ := rec.History("default", "hello")
		return hist.Verdict != nil && hist.Verdict.Outcome == "promoted", fmt.Sprintf("%+v", hist.Marks)
	})
	hist, _ = rec.History("default", "hello")
	var kinds []string
	for _, m := range hist.Marks {
		kinds = append(kinds, m.Kind)
	}
	if k := strings.Join(kinds, ","); !strings.HasPrefix(k, "step,") || !strings.Contains(k, "pause,promote") || !strings.HasSuffix(k, "promoted") {
		t.Fatalf("marks: %s", k)
	}
}
