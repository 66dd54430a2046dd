package controlplane

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/discovery"
)

// loads stands in for the gateways' load reports: the test sets what the
// canary revision got.
type loads struct {
	mu             sync.Mutex
	requests, errs int64
	canary         int64
}

func (l *loads) RevisionLoad(ns, svc string, rev int64, window time.Duration) controller.RevisionLoad {
	l.mu.Lock()
	defer l.mu.Unlock()
	if rev == l.canary {
		return controller.RevisionLoad{Requests: l.requests, Errors: l.errs}
	}
	return controller.RevisionLoad{}
}

func canaryService(image string, steps ...*pb.CanaryStep) *pb.Service {
	s := helloSpec(4)
	s.Spec.Image = image
	s.Spec.Rollout = &pb.RolloutSpec{Strategy: "canary", Steps: steps, Analysis: &pb.Analysis{MaxErrorRate: 0.05, MinRequests: 10}}
	return s
}

func weights(snap *discovery.Snapshot) map[int64]uint32 {
	out := map[int64]uint32{}
	if snap == nil {
		return out
	}
	if s := snap.Lookup("default", "hello"); s != nil {
		for _, r := range s.Revisions {
			out[r.Number] = r.Weight
		}
	}
	return out
}

func TestCanaryStepsPromoteAndRollBack(t *testing.T) {
	ld := &loads{}
	h := start(t, func(c *Config) { c.Loads, c.DrainDelay = ld, 50*time.Millisecond })
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 8000, MemoryBytes: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h, "a")
	ready := func() { reportReady(t, h, "a") }
	latest := func() *discovery.Snapshot { return h.srv.Publisher().Latest() }
	status := func() *pb.Rollout {
		r, _ := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: "hello"})
		return r
	}
	steps := []*pb.CanaryStep{{Weight: 25, Pause: "promote"}, {Weight: 50}, {Weight: 100}}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v1", steps...)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "v1 ready", func() (bool, string) {
		ready()
		snap := latest()
		if snap == nil || snap.Lookup("default", "hello") == nil {
			return false, "no snapshot yet"
		}
		return len(snap.Lookup("default", "hello").ReadyEndpoints()) == 4, fmt.Sprint(weights(snap))
	})

	// v2 goes out as a canary: one replica, 25% of traffic, then waits.
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v2", steps...)}}); err != nil {
		t.Fatal(err)
	}
	ld.mu.Lock() // the rollout recorder reads it too
	ld.canary = 2
	ld.mu.Unlock()
	eventually(t, "25/75 and paused for promote", func() (bool, string) {
		ready()
		w := weights(latest())
		r := status()
		return w[2] == 25 && w[1] == 75 && r != nil && r.Phase == "Paused", fmt.Sprint(w, r)
	})
	if p := placement(h, "hello"); p["a"] != 5 {
		t.Fatalf("during the canary: %d instances, want 4 stable + 1 canary", p["a"])
	}
	// Pause and resume are requests the controller applies: a paused
	// canary stays paused through a resume... then promote moves it.
	if _, err := h.berth.RolloutAction(ctx, &pb.RolloutActionRequest{Name: "hello", Action: "pause"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "paused by the user", func() (bool, string) {
		r := status()
		return r != nil && r.Phase == "Paused" && r.Message == "paused by the user", fmt.Sprint(r)
	})
	if _, err := h.berth.RolloutAction(ctx, &pb.RolloutActionRequest{Name: "hello", Action: "resume"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "resumed, then at the promote pause again", func() (bool, string) {
		r := status()
		return r != nil && r.Phase == "Paused" && strings.Contains(r.Message, "waiting for `berth rollout promote`"), fmt.Sprint(r)
	})
	if _, err := h.berth.RolloutAction(ctx, &pb.RolloutActionRequest{Name: "hello", Action: "promote"}); err != nil {
		t.Fatal(err)
	}
	ld.mu.Lock()
	ld.requests, ld.errs = 100, 0
	ld.mu.Unlock()
	eventually(t, "promoted through 50 to 100: succeeded, stable drained", func() (bool, string) {
		ready()
		w := weights(latest())
		r := status()
		return r.Phase == "Succeeded" && w[2] == 100 && placement(h, "hello")["a"] == 4, fmt.Sprint(w, r, placement(h, "hello"))
	})

	// v3 fails its analysis: rolled back to v2 at once.
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v3", steps...)}}); err != nil {
		t.Fatal(err)
	}
	ld.mu.Lock()
	ld.canary, ld.requests, ld.errs = 3, 0, 0
	ld.mu.Unlock()
	eventually(t, "v3 at 25%", func() (bool, string) {
		ready()
		w := weights(latest())
		return w[3] == 25, fmt.Sprint(w)
	})
	ld.mu.Lock()
	ld.requests, ld.errs = 40, 40
	ld.mu.Unlock()
	eventually(t, "rolled back: all traffic to v2, v3 drained", func() (bool, string) {
		w := weights(latest())
		r := status()
		svc, _ := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
		return r.Phase == "RolledBack" && w[2] == 100 && w[3] == 0 && svc.Service.Status.Revision == 2 && svc.Service.Spec.Image == "hello:v2", fmt.Sprint(w, r)
	})
	// A manual abort of the next canary is the same one step.
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v4", steps...)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "v4 canary running", func() (bool, string) {
		ready()
		r := status()
		return r.Revision == 4 && r.Phase != "", fmt.Sprint(r)
	})
	if _, err := h.berth.RolloutAction(ctx, &pb.RolloutActionRequest{Name: "hello", Action: "abort"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "aborted back to v2", func() (bool, string) {
		w := weights(latest())
		r := status()
		return r.Phase == "Aborted" && w[2] == 100, fmt.Sprint(w, r)
	})
	// History marks both failed revisions, and undo skips them: the
	// revision before v2 is v1.
	hist, err := h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	marked := map[int64]string{}
	for _, r := range hist.Revisions {
		marked[r.Number] = r.RolledBack
	}
	if !strings.Contains(marked[3], "analysis failed") || !strings.Contains(marked[4], "aborted by the user") || marked[1] != "" || marked[2] != "" {
		t.Fatalf("rolled-back marks in history: %v", marked)
	}
	res, err := h.berth.Undo(ctx, &pb.UndoRequest{Name: "hello"})
	if err != nil || res.Revision != 5 {
		t.Fatalf("undo: %v %v", res, err)
	}
	svc, _ := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if svc.Service.Spec.Image != "hello:v1" {
		t.Fatalf("undo picked %s, want hello:v1 (revisions 3 and 4 were rolled back)", svc.Service.Spec.Image)
	}
}

// A control plane killed mid-rollout resumes at the same step after a
// restart, with no instance lost or duplicated.
func TestRolloutSurvivesControlPlaneRestart(t *testing.T) {
	dir := t.TempDir()
	ld := &loads{}
	run := func() (*harness, func()) {
		h := &harness{snaps: make(chan *discovery.Snapshot, 1000), done: make(chan error, 1)}
		cfg := DefaultConfig()
		cfg.DataDir, cfg.APIAddr = dir, "127.0.0.1:0"
		cfg.Etcd = EtcdTuning{TickMs: 10, ElectionMs: 100}
		cfg.Loads, cfg.DrainDelay = ld, 50*time.Millisecond
		cfg.Logger = quietLogger()
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := New(ctx, cfg, func(s *discovery.Snapshot) {
			select {
			case h.snaps <- s:
			default:
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		h.srv = srv
		go func() { h.done <- srv.Run(ctx) }()
		h.berth, h.agent, h.conn = dial(t, srv)
		return h, func() { h.conn.Close(); cancel(); <-h.done }
	}
	h, stop := run()
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 8000, MemoryBytes: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	stopHB := heartbeat(t, h, "a")
	steps := []*pb.CanaryStep{{Weight: 25, Pause: "promote"}, {Weight: 100}}
	apply := func(h *harness, image string) {
		if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService(image, steps...)}}); err != nil {
			t.Fatal(err)
		}
	}
	apply(h, "hello:v1")
	eventually(t, "v1 ready", func() (bool, string) {
		reportReady(t, h, "a")
		return placement(h, "hello")["a"] == 4 && len(readyIDs(t, h)) == 4, fmt.Sprint(placement(h, "hello"))
	})
	apply(h, "hello:v2")
	eventually(t, "paused at 25%", func() (bool, string) {
		reportReady(t, h, "a")
		r, _ := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: "hello"})
		return r != nil && r.Phase == "Paused" && r.Weight == 25, fmt.Sprint(r)
	})
	before, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
	stopHB()
	stop()

	h, stop = run()
	defer stop()
	heartbeat(t, h, "a")
	r, err := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: "hello"})
	if err != nil || r.Phase != "Paused" || r.Weight != 25 || r.Step != 0 {
		t.Fatalf("after restart: %v %v", r, err)
	}
	// The same instances (ids), once the restarted replica's cache has
	// loaded (a list right after the restart may still be empty or fail).
	ids := func(l *pb.ListInstancesResponse) []string {
		var out []string
		for _, i := range l.GetInstances() {
			out = append(out, i.GetInstance().GetId())
		}
		slices.Sort(out)
		return out
	}
	if len(before.GetInstances()) != 5 {
		t.Fatalf("instances before the restart: %d, want 4 stable + 1 canary", len(before.GetInstances()))
	}
	eventually(t, "the same five instances after the restart", func() (bool, string) {
		after, err := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		return err == nil && slices.Equal(ids(after), ids(before)), fmt.Sprint(ids(after), err)
	})
	ld.mu.Lock()
	ld.canary, ld.requests = 2, 100
	ld.mu.Unlock()
	if _, err := h.berth.RolloutAction(ctx, &pb.RolloutActionRequest{Name: "hello", Action: "promote"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "succeeded after the restart", func() (bool, string) {
		reportReady(t, h, "a")
		r, _ := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: "hello"})
		return r.Phase == "Succeeded" && placement(h, "hello")["a"] == 4, fmt.Sprint(r, placement(h, "hello"))
	})
}

func readyIDs(t *testing.T, h *harness) []string {
	l, _ := h.berth.ListInstances(context.Background(), &pb.ListInstancesRequest{Service: "hello"})
	var out []string
	for _, iv := range l.GetInstances() {
		if iv.Status != nil && iv.Status.Ready {
			out = append(out, iv.Instance.Id)
		}
	}
	return out
}

// Undo restores a revision's template and keeps the service's rollout
// policy (it is not part of the template): the next change is a canary
// again (issue #14).
func TestUndoKeepsTheRolloutPolicy(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	for _, image := range []string{"hello:v1", "hello:v2"} {
		if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService(image, &pb.CanaryStep{Weight: 50, Pause: "promote"})}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.berth.Undo(ctx, &pb.UndoRequest{Name: "hello"}); err != nil {
		t.Fatal(err)
	}
	svc, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	ro := svc.Service.Spec.Rollout
	if svc.Service.Spec.Image != "hello:v1" || ro.GetStrategy() != "canary" || len(ro.GetSteps()) != 1 || ro.GetAnalysis().GetMinRequests() != 10 {
		t.Fatalf("after undo: image %s, rollout %v: want v1 with the canary policy kept", svc.Service.Spec.Image, ro)
	}
	// The undo is marked, so its rollout skips the canary steps; the next
	// apply is not an undo.
	if got := svc.Service.Status.GetRollbackTo(); got != 1 {
		t.Fatalf("status.rollbackTo = %d, want 1", got)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{canaryService("hello:v3", &pb.CanaryStep{Weight: 50, Pause: "promote"})}}); err != nil {
		t.Fatal(err)
	}
	svc, _ = h.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "hello"})
	if got := svc.Service.Status.GetRollbackTo(); got != 0 {
		t.Fatalf("a plain apply after the undo: rollbackTo = %d", got)
	}
}
