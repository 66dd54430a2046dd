package rollouthistory

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/store"
)

// fixedLoads reports the same load for every window: requests and errors
// per revision.
type fixedLoads map[int64]controller.RevisionLoad

func (f fixedLoads) RevisionLoad(_, _ string, rev int64, _ time.Duration) controller.RevisionLoad {
	return f[rev]
}

func view(ro api.Rollout, spec *api.RolloutSpec) *store.View {
	svc := api.Service{Metadata: api.ObjectMeta{Namespace: ro.Namespace, Name: ro.Service}}
	svc.Spec.Rollout = spec
	return &store.View{Services: []api.Service{svc}, Rollouts: map[string]store.VersionedRollout{ro.Namespace + "/" + ro.Service: {Rollout: ro}}}
}

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

func canarySpec() *api.RolloutSpec {
	return &api.RolloutSpec{Strategy: api.StrategyCanary,
		Steps:    []api.CanaryStep{{Weight: 25, Pause: api.PauseUntilPromoted}, {Weight: 50, Pause: "30s"}},
		Analysis: &api.Analysis{MaxErrorRate: 0.1, MaxLatency: api.Duration{Duration: 250 * time.Millisecond}}}
}

// A canary walked through its life: points a second with each
// revision's weight and traffic, a mark at each state change, and the
// verdict from the final phase and message.
func TestRecorderFollowsACanary(t *testing.T) {
	loads := fixedLoads{2: {Requests: 50, Errors: 5, P99: 120 * time.Millisecond, LatencySamples: 50}, 1: {Requests: 150}}
	r := New(DefaultConfig(), nil, loads)
	spec := canarySpec()
	ro := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Strategy: api.StrategyCanary}
	r.Observe(at(0), view(ro, spec), true)
	ro.Weight, ro.StepStartedAt = 25, at(1)
	r.Observe(at(1), view(ro, spec), true)
	ro.Phase = api.RolloutPaused
	ro.Message = "step 1/2: at 25%, waiting for `berth rollout promote`"
	r.Observe(at(2), view(ro, spec), false) // a change between ticks: a mark and a point
	r.Observe(at(3), view(ro, spec), true)
	ro.Promote = true
	r.Observe(at(4), view(ro, spec), true)
	ro.Promote, ro.Phase, ro.Step, ro.Weight, ro.StepStartedAt = false, api.RolloutProgressing, 1, 50, at(5)
	r.Observe(at(5), view(ro, spec), true)

	// Live: the newest point of the rollout in progress.
	live := r.Live()
	if len(live) != 1 || live[0].Point.TMs != at(5).UnixMilli() || live[0].Point.Weight != 0.5 {
		t.Fatalf("live: %+v", live)
	}
	ro.Phase, ro.Weight, ro.Message = api.RolloutRolledBack, 0, "analysis failed at step 2: canary error rate 10.0% (5/50) above ..."
	r.Observe(at(6), view(ro, spec), false)
	r.Observe(at(7), view(ro, spec), true) // ended: no more points
	ro.Message = "a later rewrite"
	r.Observe(at(8), view(ro, spec), true)

	h, ok := r.History("default", "web")
	if !ok {
		t.Fatal("no history")
	}
	if len(h.Points) != 7 {
		t.Fatalf("%d points, want 7 (5 ticks, the pause between two, the end): %+v", len(h.Points), h.Points)
	}
	p := h.Points[1]
	if p.Weight != 0.25 || len(p.Revisions) != 2 {
		t.Fatalf("point at 25%%: %+v", p)
	}
	c, s := p.Revisions[0], p.Revisions[1]
	if c.Role != "canary" || c.Revision != 2 || c.Weight != 0.25 || c.RPS != 10 || c.ErrorRate != 0.1 || c.P99Ms != 120 {
		t.Fatalf("canary: %+v", c)
	}
	if s.Role != "stable" || s.Revision != 1 || s.Weight != 0.75 || s.RPS != 30 || s.ErrorRate != 0 || s.P99Ms != 0 {
		t.Fatalf("stable: %+v", s)
	}
	if last := h.Points[len(h.Points)-1]; last.Phase != api.RolloutRolledBack || last.Weight != 0 {
		t.Fatalf("final point: %+v", last)
	}
	var kinds []string
	for _, m := range h.Marks {
		kinds = append(kinds, m.Kind)
	}
	if got := strings.Join(kinds, ","); got != "step,pause,promote,step,rollback" {
		t.Fatalf("marks %s: %+v", got, h.Marks)
	}
	if h.Marks[1].TMs != at(2).UnixMilli() || !strings.Contains(h.Marks[1].Text, "promote") {
		t.Fatalf("pause mark: %+v", h.Marks[1])
	}
	if h.Verdict == nil || h.Verdict.Outcome != OutcomeRolledBack || !strings.Contains(h.Verdict.Reason, "analysis failed") || h.Verdict.TMs != at(6).UnixMilli() {
		t.Fatalf("verdict: %+v", h.Verdict)
	}
	// The analysis' limits, from the controller's one function.
	if h.Thresholds != (Thresholds{MaxErrorRate: 0.1, MaxP99Ms: 250, MinRequests: controller.DefaultMinRequests}) {
		t.Fatalf("thresholds: %+v", h.Thresholds)
	}
	if h.Steps[0].StartedMs != at(1).UnixMilli() || h.Steps[1].StartedMs != at(5).UnixMilli() || h.Steps[0].Pause != "promote" || h.Steps[1].Weight != 0.5 {
		t.Fatalf("steps: %+v", h.Steps)
	}
	if len(r.Live()) != 0 {
		t.Fatalf("an ended rollout is not live: %+v", r.Live())
	}
}

// The JSON is the contract's: snake_case names, verdict null while the
// rollout runs, empty lists as [].
func TestHistoryJSON(t *testing.T) {
	r := New(DefaultConfig(), nil, nil)
	ro := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing}
	r.Observe(at(0), view(ro, nil), false)
	h, _ := r.History("default", "web")
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"verdict":null`, `"points":[{"t_ms":`, `"revisions":[{"revision":2,"role":"canary","weight":0,"rps":0,"error_rate":0,"p99_ms":0}`, `"marks":[]`, `"steps":[]`, `"started_ms":`, `"thresholds":{"max_error_rate":0,"max_p99_ms":0,"min_requests":0}`, `"strategy":"canary"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
}

// Memory is bounded: points by Keep/Interval (a ring), finished rollouts
// by MaxFinished; a rollout that ended before the replica saw it run is
// not recorded at all.
func TestRecorderIsBounded(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Keep, cfg.MaxFinished = 10*time.Second, 3
	r := New(cfg, nil, nil)
	ro := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing}
	for s := range 25 {
		r.Observe(at(s), view(ro, nil), true)
	}
	h, _ := r.History("default", "web")
	if len(h.Points) != 10 || h.Points[0].TMs != at(15).UnixMilli() || h.Points[9].TMs != at(24).UnixMilli() {
		t.Fatalf("ring: %d points from %d", len(h.Points), h.Points[0].TMs)
	}
	for rev := int64(3); rev < 10; rev++ {
		ro.Revision, ro.Phase = rev, api.RolloutProgressing
		r.Observe(at(int(rev)*100), view(ro, nil), true)
		ro.Phase = api.RolloutSucceeded
		r.Observe(at(int(rev)*100+1), view(ro, nil), true)
	}
	if len(r.finished) != 3 || r.finished[0].h.Revision != 6 {
		t.Fatalf("finished: %d, oldest revision %d", len(r.finished), r.finished[0].h.Revision)
	}
	// A user pausing and resuming in a loop: the marks stay bounded, the
	// newest kept.
	looped := api.Rollout{Namespace: "default", Service: "loop", Revision: 2, Stable: 1, Phase: api.RolloutProgressing}
	for i := range 2 * maxMarks {
		looped.Phase = api.RolloutPaused
		r.Observe(at(1000+2*i), view(looped, nil), false)
		looped.Phase = api.RolloutProgressing
		r.Observe(at(1001+2*i), view(looped, nil), false)
	}
	if h, _ := r.History("default", "loop"); len(h.Marks) != maxMarks || h.Marks[maxMarks-1].TMs != at(1001+2*(2*maxMarks-1)).UnixMilli() {
		t.Fatalf("%d marks after %d pause/resume pairs, the last at %d", len(h.Marks), 2*maxMarks, h.Marks[len(h.Marks)-1].TMs)
	}
	other := api.Rollout{Namespace: "default", Service: "done", Revision: 2, Stable: 1, Phase: api.RolloutSucceeded}
	r.Observe(at(2000), view(other, nil), true)
	if _, ok := r.History("default", "done"); ok {
		t.Fatal("recorded a rollout that ended before it was seen")
	}
	// The service went (with its rollout record): its trace is finished.
	if _, ok := r.current["default/web"]; ok {
		t.Fatal("trace of a deleted service still current")
	}
}

// A user's abort: the abort mark when asked, the aborted verdict when the
// controller acts.
func TestRecorderAbort(t *testing.T) {
	r := New(DefaultConfig(), nil, nil)
	ro := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutPaused}
	r.Observe(at(0), view(ro, canarySpec()), true)
	ro.Abort = true
	r.Observe(at(1), view(ro, canarySpec()), false)
	ro.Abort, ro.Phase, ro.Message = false, api.RolloutAborted, "aborted by the user; rolled back to revision 1"
	r.Observe(at(2), view(ro, canarySpec()), false)
	h, _ := r.History("default", "web")
	if len(h.Marks) != 2 || h.Marks[0].Kind != MarkAbort || h.Marks[1].Kind != MarkRollback {
		t.Fatalf("marks: %+v", h.Marks)
	}
	if h.Verdict == nil || h.Verdict.Outcome != OutcomeAborted || h.Verdict.Reason != ro.Message {
		t.Fatalf("verdict: %+v", h.Verdict)
	}
}

// A replica that starts in the middle of a rollout records it from there:
// the step it is in gets its mark at the time the step began.
func TestRecorderFirstSeenMidStep(t *testing.T) {
	r := New(DefaultConfig(), nil, nil)
	ro := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Step: 1, Weight: 50, StepStartedAt: at(-30)}
	r.Observe(at(0), view(ro, canarySpec()), false)
	h, _ := r.History("default", "web")
	if len(h.Marks) != 1 || h.Marks[0].Kind != MarkStep || h.Marks[0].TMs != at(-30).UnixMilli() || h.Steps[1].StartedMs != at(-30).UnixMilli() || h.Steps[0].StartedMs != 0 {
		t.Fatalf("marks %+v steps %+v", h.Marks, h.Steps)
	}
	if len(h.Points) != 1 || h.Points[0].Weight != 0.5 {
		t.Fatalf("points: %+v", h.Points)
	}
}

// countingViews is a cache whose changes the test makes, counting the
// views built.
type countingViews struct {
	mu    sync.Mutex
	v     *store.View
	gen   uint64
	views int
	ch    chan struct{}
}

func (c *countingViews) View() *store.View {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.views++
	return c.v
}
func (c *countingViews) Subscribe() (<-chan struct{}, func()) { return c.ch, func() {} }
func (c *countingViews) RolloutsGen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}
func (c *countingViews) built() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.views
}

// A deploy's thousands of cache changes (status reports) build no view
// while no rollout record or service changes and none is in progress;
// a rollout record's change is observed at once.
func TestRecorderBuildsViewsOnlyForRollouts(t *testing.T) {
	cv := &countingViews{v: &store.View{Rollouts: map[string]store.VersionedRollout{}}, ch: make(chan struct{})}
	cfg := DefaultConfig()
	cfg.Interval = 20 * time.Millisecond
	r := New(cfg, cv, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for range 2000 {
		cv.ch <- struct{}{}
	}
	time.Sleep(5 * cfg.Interval)
	if n := cv.built(); n != 0 {
		t.Fatalf("%d views built for changes that were not rollouts'", n)
	}
	ro := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing}
	cv.mu.Lock()
	cv.v, cv.gen = view(ro, canarySpec()), 1
	cv.mu.Unlock()
	cv.ch <- struct{}{}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, ok := r.History("default", "web"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rollout was not recorded")
		}
	}
}
