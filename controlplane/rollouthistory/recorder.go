package rollouthistory

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/store"
)

// Config configures a Recorder.
type Config struct {
	// Interval between points (default 1s).
	Interval time.Duration
	// Keep is how far back a rollout's points go (default 1h).
	Keep time.Duration
	// MaxFinished bounds the finished rollouts kept (default 50).
	MaxFinished int
	// Window is what a point's rates are measured over (default 5s: load
	// reports arrive about once a second from each gateway, so one second
	// alone would jitter).
	Window time.Duration
	// VersionFor maps an etcd revision to the discovery snapshot version
	// that first carries it (publish.Publisher.VersionFor): with it, a
	// step's "ack" mark says when every gateway and node DNS applied it.
	VersionFor func(int64) (uint64, bool)
	Logger     *slog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Interval: time.Second, Keep: time.Hour, MaxFinished: 50, Window: 5 * time.Second}
}

// Views is where the recorder reads rollouts and services (store.Cache).
type Views interface {
	View() *store.View
	Subscribe() (<-chan struct{}, func())
	// RolloutsGen changes when a rollout record or a service does.
	RolloutsGen() uint64
}

// Recorder keeps the history of every rollout this replica sees.
type Recorder struct {
	cfg   Config
	views Views
	loads controller.LoadReader

	mu sync.Mutex
	// current holds each service's latest rollout ("<ns>/<name>");
	// finished, oldest first, the ended ones still kept.
	current  map[string]*trace
	finished []*trace
}

// New returns a recorder; views and loads may be nil in tests that feed
// Observe directly (loads nil: points carry no traffic).
func New(cfg Config, views Views, loads controller.LoadReader) *Recorder {
	d := DefaultConfig()
	if cfg.Interval <= 0 {
		cfg.Interval = d.Interval
	}
	if cfg.Keep <= 0 {
		cfg.Keep = d.Keep
	}
	if cfg.MaxFinished <= 0 {
		cfg.MaxFinished = d.MaxFinished
	}
	if cfg.Window <= 0 {
		cfg.Window = d.Window
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Recorder{cfg: cfg, views: views, loads: loads, current: map[string]*trace{}}
}

// Run records until ctx ends: marks as soon as a rollout record or a
// service changes, a point every Interval while a rollout is in progress.
// A view (a copy of the cluster's state) is built only then: a deploy's
// thousands of status reports, one cache change each, cost a look at a
// counter.
func (r *Recorder) Run(ctx context.Context) error {
	wake, cancel := r.views.Subscribe()
	defer cancel()
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	var seen uint64
	changed := func() bool {
		g := r.views.RolloutsGen()
		if g == seen {
			return false
		}
		seen = g
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
			if changed() {
				r.Observe(time.Now(), r.views.View(), false)
			}
		case now := <-tick.C:
			// (changed first: it records the generation observed.)
			if changed() || r.recording() {
				r.Observe(now, r.views.View(), true)
			}
		}
	}
}

// recording reports whether a rollout is in progress (its points and
// acknowledgement marks come from the ticks).
func (r *Recorder) recording() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.current {
		if !t.ended {
			return true
		}
	}
	return false
}

// trace is one rollout's record.
type trace struct {
	h      History
	points ring
	last   api.Rollout
	acked  int64 // the WeightRevision whose ack is marked
	ended  bool
}

// ring holds the newest points, at most cap.
type ring struct {
	buf   []Point
	start int
	cap   int
}

func (r *ring) add(p Point) {
	if len(r.buf) < r.cap {
		r.buf = append(r.buf, p)
		return
	}
	r.buf[r.start] = p
	r.start = (r.start + 1) % r.cap
}

func (r *ring) all() []Point {
	out := make([]Point, 0, len(r.buf))
	out = append(out, r.buf[r.start:]...)
	return append(out, r.buf[:r.start]...)
}

func (r *ring) newest() (Point, bool) {
	if len(r.buf) == 0 {
		return Point{}, false
	}
	return r.buf[(r.start+len(r.buf)-1)%len(r.buf)], true
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// Observe updates the record from a view of the cluster at now: new
// rollouts start a trace, state changes become marks, an end the verdict;
// with sample, every rollout in progress gets a point (and one that just
// ended its last).
func (r *Recorder) Observe(now time.Time, v *store.View, sample bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for key, vr := range v.Rollouts {
		ro := vr.Rollout
		seen[key] = true
		t := r.current[key]
		if t != nil && t.h.Revision != ro.Revision {
			r.retire(key, t)
			t = nil
		}
		fresh := false
		if t == nil {
			if !ro.Active() {
				continue // ended before this replica saw it run: nothing to plot
			}
			t, fresh = r.start(now, v, ro), true
			r.current[key] = t
		}
		if t.ended {
			continue
		}
		moved := r.transition(now, v, t, ro)
		// Besides the tick's, a point where the rollout starts and where
		// its weight or phase moves: the plot's steps are sharp.
		if sample || fresh || moved {
			t.points.add(r.point(now, ro))
		}
	}
	for key, t := range r.current {
		if !seen[key] {
			// The service and its rollout record were deleted.
			if !t.ended {
				t.ended = true
				t.h.Verdict = &Verdict{Outcome: OutcomeAborted, Reason: "the service was deleted", TMs: ms(now)}
			}
			r.retire(key, t)
		}
	}
}

// retire moves a trace to the finished ones, dropping the oldest beyond
// MaxFinished.
func (r *Recorder) retire(key string, t *trace) {
	delete(r.current, key)
	r.finished = append(r.finished, t)
	if over := len(r.finished) - r.cfg.MaxFinished; over > 0 {
		r.finished = slices.Delete(r.finished, 0, over)
	}
}

// start opens the trace of a rollout first seen at now.
func (r *Recorder) start(now time.Time, v *store.View, ro api.Rollout) *trace {
	t := &trace{
		h: History{Namespace: ro.Namespace, Service: ro.Service, Revision: ro.Revision, Stable: ro.Stable,
			Strategy: ro.Strategy, StartedMs: ms(now), Steps: []Step{}, Marks: []Mark{}},
		points: ring{cap: max(1, int(r.cfg.Keep/r.cfg.Interval))},
		last:   ro,
	}
	if t.h.Strategy == "" {
		t.h.Strategy = api.StrategyCanary
	}
	if svc := v.Service(ro.Namespace, ro.Service); svc != nil && svc.Spec.Rollout != nil {
		spec := svc.Spec.Rollout
		if ro.Canary() {
			for i, s := range spec.Steps {
				t.h.Steps = append(t.h.Steps, Step{Index: i, Weight: float64(s.Weight) / 100, Pause: string(s.Pause)})
			}
		}
		// The analysis' own limits: one rule, in the controller.
		if th, ok := controller.AnalysisThresholds(*spec); ok && ro.Canary() {
			t.h.Thresholds = Thresholds{MaxErrorRate: th.MaxErrorRate, MinRequests: th.MinRequests, MaxP99Ms: float64(th.MaxLatency) / float64(time.Millisecond)}
		}
	}
	if ro.Canary() && ro.Weight > 0 && ro.Step < len(t.h.Steps) {
		// First seen in a step: its mark, when it began.
		at := ms(ro.StepStartedAt)
		if at == 0 {
			at = ms(now)
		}
		t.h.Steps[ro.Step].StartedMs = at
		t.addMark(Mark{TMs: at, Kind: MarkStep, Text: fmt.Sprintf("step %d/%d: %d%%", ro.Step+1, len(t.h.Steps), ro.Weight)})
	}
	return t
}

// maxMarks bounds a rollout's marks as Keep bounds its points: a user
// pausing and resuming in a loop adds one per write for as long as the
// rollout lives. The oldest go first.
const maxMarks = 512

// addMark records m, dropping the oldest mark beyond maxMarks.
func (t *trace) addMark(m Mark) {
	if len(t.h.Marks) >= maxMarks {
		t.h.Marks = slices.Delete(t.h.Marks, 0, len(t.h.Marks)-maxMarks+1)
	}
	t.h.Marks = append(t.h.Marks, m)
}

// transition records what changed between the trace's last sight of the
// rollout and ro; moved says its weight or phase did.
func (r *Recorder) transition(now time.Time, v *store.View, t *trace, ro api.Rollout) (moved bool) {
	prev := t.last
	t.last = ro
	moved = prev.Weight != ro.Weight || prev.Phase != ro.Phase
	at := ms(now)
	mark := func(kind, text string) { t.addMark(Mark{TMs: at, Kind: kind, Text: text}) }
	if !prev.Abort && ro.Abort {
		mark(MarkAbort, "abort asked")
	}
	if ro.Active() {
		switch {
		case prev.Phase != api.RolloutPaused && ro.Phase == api.RolloutPaused:
			mark(MarkPause, ro.Message)
		case prev.Phase == api.RolloutPaused && ro.Phase == api.RolloutProgressing:
			if prev.Promote {
				mark(MarkPromote, "promoted by the user")
			} else {
				mark(MarkResume, "resumed")
			}
		}
		if ro.Canary() && ro.Weight != prev.Weight && ro.Weight > 0 && ro.Step < len(t.h.Steps) {
			t.h.Steps[ro.Step].StartedMs = ms(ro.StepStartedAt)
			if t.h.Steps[ro.Step].StartedMs == 0 {
				t.h.Steps[ro.Step].StartedMs = at
			}
			mark(MarkStep, fmt.Sprintf("step %d/%d: %d%%", ro.Step+1, len(t.h.Steps), ro.Weight))
		}
		if ro.WeightRevision != 0 && ro.WeightRevision != t.acked && r.cfg.VersionFor != nil {
			if s := controller.SyncOf(v, ro.WeightRevision, r.cfg.VersionFor); s.GatewaysApplied() && s.DNSApplied() {
				t.acked = ro.WeightRevision
				mark(MarkAck, fmt.Sprintf("%d%% applied by every gateway and node DNS", ro.Weight))
			}
		}
		return moved
	}
	// The end: the final phase and the controller's message say how.
	t.ended = true
	switch ro.Phase {
	case api.RolloutSucceeded:
		mark(MarkPromoted, ro.Message)
		t.h.Verdict = &Verdict{Outcome: OutcomePromoted, Reason: ro.Message, TMs: at}
	case api.RolloutAborted:
		t.h.Verdict = &Verdict{Outcome: OutcomeAborted, Reason: ro.Message, TMs: at}
		mark(MarkRollback, ro.Message)
	default: // rolled back
		mark(MarkRollback, ro.Message)
		t.h.Verdict = &Verdict{Outcome: OutcomeRolledBack, Reason: ro.Message, TMs: at}
	}
	return true
}

// point is the rollout now: each revision's weight, and its traffic over
// the last Window from the load reports (what the analysis reads).
func (r *Recorder) point(now time.Time, ro api.Rollout) Point {
	w := float64(ro.Weight) / 100
	p := Point{TMs: ms(now), Phase: ro.Phase, Step: ro.Step, Weight: w}
	for _, rev := range []struct {
		n      int64
		role   string
		weight float64
	}{{ro.Revision, "canary", w}, {ro.Stable, "stable", 1 - w}} {
		rp := RevisionPoint{Revision: rev.n, Role: rev.role, Weight: rev.weight}
		if r.loads != nil {
			l := r.loads.RevisionLoad(ro.Namespace, ro.Service, rev.n, r.cfg.Window)
			rp.RPS = float64(l.Requests) / r.cfg.Window.Seconds()
			if l.Requests > 0 {
				rp.ErrorRate = float64(l.Errors) / float64(l.Requests)
			}
			if l.LatencySamples > 0 {
				rp.P99Ms = float64(l.P99) / float64(time.Millisecond)
			}
		}
		p.Revisions = append(p.Revisions, rp)
	}
	return p
}

func (t *trace) history() History {
	h := t.h
	h.Steps = slices.Clone(h.Steps)
	h.Marks = slices.Clone(h.Marks)
	h.Points = t.points.all()
	if h.Verdict != nil {
		v := *h.Verdict
		h.Verdict = &v
	}
	return h
}

// History returns the record of the service's latest rollout.
func (r *Recorder) History(namespace, service string) (History, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.current[namespace+"/"+service]; t != nil {
		return t.history(), true
	}
	for i := len(r.finished) - 1; i >= 0; i-- {
		if t := r.finished[i]; t.h.Namespace == namespace && t.h.Service == service {
			return t.history(), true
		}
	}
	return History{}, false
}

// Live returns the newest point of every rollout in progress, sorted by
// service.
func (r *Recorder) Live() []Live {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Live
	for _, t := range r.current {
		if t.ended {
			continue
		}
		if p, ok := t.points.newest(); ok {
			out = append(out, Live{Namespace: t.h.Namespace, Service: t.h.Service, Point: p})
		}
	}
	slices.SortFunc(out, func(a, b Live) int {
		if a.Namespace != b.Namespace {
			if a.Namespace < b.Namespace {
				return -1
			}
			return 1
		}
		if a.Service < b.Service {
			return -1
		}
		if a.Service > b.Service {
			return 1
		}
		return 0
	})
	return out
}
