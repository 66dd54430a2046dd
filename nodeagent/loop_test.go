package nodeagent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeRuntime is a container runtime in memory: it records what the
// loop asks of it, and Start and Restart fail while failStarts > 0.
type fakeRuntime struct {
	mu         sync.Mutex
	containers map[string]runtime.Container
	calls      []string // "start a", "restart a", "stop a"
	failStarts int
	subscribes int
	exits      []chan runtime.Exit // one per Exits call, in order
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{containers: map[string]runtime.Container{}}
}

func (f *fakeRuntime) record(call string) {
	f.calls = append(f.calls, call)
}

func (f *fakeRuntime) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeRuntime) Start(_ context.Context, spec runtime.ContainerSpec) (runtime.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("start " + spec.InstanceID)
	if f.failStarts > 0 {
		f.failStarts--
		return runtime.Container{}, errors.New("no such image")
	}
	c := runtime.Container{InstanceID: spec.InstanceID, ContainerID: spec.InstanceID, IP: "10.213.0.9", Running: true}
	f.containers[spec.InstanceID] = c
	return c, nil
}

func (f *fakeRuntime) Restart(_ context.Context, id string) (runtime.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("restart " + id)
	c := f.containers[id]
	c.Running = true
	f.containers[id] = c
	return c, nil
}

func (f *fakeRuntime) Stop(_ context.Context, id string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("stop " + id)
	delete(f.containers, id)
	return nil
}

func (f *fakeRuntime) Kill(_ context.Context, id string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("kill " + id)
	c := f.containers[id]
	c.Running = false
	f.containers[id] = c
	return nil
}

func (f *fakeRuntime) List(context.Context) ([]runtime.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("list")
	var out []runtime.Container
	for _, c := range f.containers {
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeRuntime) RemoveLeftovers(context.Context) ([]string, error) { return nil, nil }

func (f *fakeRuntime) Exits(context.Context) (<-chan runtime.Exit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subscribes++
	ch := make(chan runtime.Exit, 8)
	f.exits = append(f.exits, ch)
	return ch, nil
}

func (f *fakeRuntime) HasImage(context.Context, string) (bool, error)             { return true, nil }
func (f *fakeRuntime) ImportImage(context.Context, io.Reader) ([]string, error)   { return nil, nil }
func (f *fakeRuntime) PullImage(context.Context, string) error                    { return nil }
func (f *fakeRuntime) ImageLabel(context.Context, string, string) (string, error) { return "", nil }
func (f *fakeRuntime) LabelImage(context.Context, string, string, string) error   { return nil }
func (f *fakeRuntime) GatewayIP() netip.Addr                                      { return netip.MustParseAddr("10.213.0.1") }
func (f *fakeRuntime) Close() error                                               { return nil }

// fakeControlPlane answers the agent's calls the loop makes: no image is
// uploaded (the runtime has them all), and status reports are recorded.
type fakeControlPlane struct {
	pb.NodeAgentClient // calls the loop does not make panic
	mu                 sync.Mutex
	reports            []*pb.InstanceStatus
	// block, if set, holds every report until it is closed.
	block chan struct{}
}

func (c *fakeControlPlane) FetchImage(context.Context, *pb.FetchImageRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[pb.ImageChunk], error) {
	return notUploaded{}, nil
}

// notUploaded is FetchImage's stream for an image nobody uploaded: the
// error comes with the first message, as over gRPC.
type notUploaded struct{ grpc.ClientStream }

func (notUploaded) Recv() (*pb.ImageChunk, error) {
	return nil, status.Error(codes.NotFound, "not uploaded")
}

func (c *fakeControlPlane) ReportStatus(ctx context.Context, req *pb.ReportStatusRequest, _ ...grpc.CallOption) (*pb.ReportStatusResponse, error) {
	if c.block != nil {
		select {
		case <-c.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reports = append(c.reports, req.Statuses...)
	return &pb.ReportStatusResponse{}, nil
}

// last is the last status reported for id.
func (c *fakeControlPlane) last(id string) *pb.InstanceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.reports) - 1; i >= 0; i-- {
		if c.reports[i].Id == id {
			return c.reports[i]
		}
	}
	return nil
}

// harness drives the loop's steps by hand on a fake clock: assign, act,
// and the results of the operations it launched.
type harness struct {
	t   *testing.T
	l   *loop
	rt  *fakeRuntime
	cp  *fakeControlPlane
	now time.Time
}

func newHarness(t *testing.T) *harness {
	cfg := DefaultConfig()
	cfg.Name, cfg.Logger = "n1", slog.New(slog.DiscardHandler)
	cfg.Runtime.StateDir = t.TempDir()
	cfg.MaxBackoff = 8 * time.Second
	a, err := New(cfg)
	if err == nil {
		a.prober = noProbes{} // the tests feed probe results themselves
	}
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, rt: newFakeRuntime(), cp: &fakeControlPlane{}, now: time.Unix(1_700_000_000, 0)}
	a.rt, a.client = h.rt, h.cp
	h.l = newLoop(a)
	h.l.now = func() time.Time { return h.now }
	t.Cleanup(h.l.cancelOp)
	return h
}

func running(id string) *pb.Instance {
	return pb.FromInstance(&api.Instance{ID: id, Namespace: "default", Service: "web", Revision: 1, Node: "n1",
		Desired: api.DesiredRunning, Template: api.ServiceSpec{Image: "berth.local/web:v1"}})
}

// assign delivers the control plane's assignments (the whole set).
func (h *harness) assign(ins ...*pb.Instance) { h.l.assign(&pb.Assignments{Instances: ins}) }

// step runs act, waits for every operation it launched to finish, feeds
// the results back, and reports: one turn of the loop.
func (h *harness) step() {
	h.t.Helper()
	h.l.act()
	for {
		busy := false
		for _, it := range h.l.items {
			busy = busy || it.busy
		}
		if !busy {
			break
		}
		select {
		case r := <-h.l.results:
			h.l.finished(r)
		case <-time.After(5 * time.Second):
			h.t.Fatal("an operation never finished")
		}
	}
	h.report()
}

// report runs the loop's status report and waits for it to land.
func (h *harness) report() {
	h.t.Helper()
	h.l.report(context.Background())
	if h.l.reporting {
		select {
		case r := <-h.l.reportDone:
			h.l.reported(r)
		case <-time.After(5 * time.Second):
			h.t.Fatal("the status report never finished")
		}
	}
}

func (h *harness) wantCalls(want ...string) {
	h.t.Helper()
	if got := h.rt.Calls(); !slices.Equal(got, want) {
		h.t.Fatalf("runtime calls %q, want %q", got, want)
	}
}

func (h *harness) wantPhase(id, phase string) *pb.InstanceStatus {
	h.t.Helper()
	st := h.cp.last(id)
	if st == nil || st.Phase != phase {
		h.t.Fatalf("%s reported %v, want phase %s", id, st, phase)
	}
	return st
}

// Assigned: started once and reported Running with its IP.
func TestLoopStartsWhatIsAssigned(t *testing.T) {
	h := newHarness(t)
	h.assign(running("a"))
	h.step()
	h.wantCalls("start a")
	if st := h.wantPhase("a", api.PhaseRunning); st.Ip != "10.213.0.9" || !st.Ready {
		t.Fatalf("status %v: want the container's IP, ready (no probe)", st)
	}
	h.step()
	h.wantCalls("start a") // nothing more to do
}

// An exit restarts after a backoff that doubles up to MaxBackoff, and
// counts the restarts.
func TestLoopRestartsWithBackoff(t *testing.T) {
	h := newHarness(t)
	h.assign(running("a"))
	h.step()
	exit := func() {
		h.l.exited(runtime.Exit{InstanceID: "a", Code: 1, At: h.now})
		h.report()
	}
	wantBackoff := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
	calls := []string{"start a"}
	for i, backoff := range wantBackoff {
		exit()
		if st := h.wantPhase("a", api.PhaseBackoff); st.LastExit.GetCode() != 1 || st.Ready {
			t.Fatalf("after exit %d: %v", i+1, st)
		}
		h.now = h.now.Add(backoff - time.Millisecond)
		h.step()
		h.wantCalls(calls...) // not before the backoff
		h.now = h.now.Add(time.Millisecond)
		h.step()
		calls = append(calls, "restart a")
		h.wantCalls(calls...)
		if st := h.wantPhase("a", api.PhaseRunning); st.Restarts != int32(i+1) {
			t.Fatalf("restarts %d, want %d", st.Restarts, i+1)
		}
	}
	// Running for a minute resets the backoff.
	h.now = h.now.Add(61 * time.Second)
	exit()
	h.now = h.now.Add(time.Second)
	h.step()
	if got := h.rt.Calls(); got[len(got)-1] != "restart a" || len(got) != len(calls)+1 {
		t.Fatalf("after a minute running, the backoff is not back to 1s: %q", got)
	}
}

// A failed start is retried after the backoff, as a start.
func TestLoopRetriesAFailedStart(t *testing.T) {
	h := newHarness(t)
	h.rt.failStarts = 1
	h.assign(running("a"))
	h.step()
	if st := h.wantPhase("a", api.PhaseBackoff); st.LastError != "no such image" {
		t.Fatalf("last error %q", st.LastError)
	}
	h.now = h.now.Add(time.Second)
	h.step()
	h.wantCalls("start a", "start a")
	h.wantPhase("a", api.PhaseRunning)
}

// An instance the control plane stops (desired stopped, or gone from the
// assignments) is stopped once; an unassigned one leaves the table.
func TestLoopStops(t *testing.T) {
	h := newHarness(t)
	h.assign(running("a"), running("b"))
	h.step()
	stopped := running("a")
	stopped.Desired = api.DesiredStopped
	h.assign(stopped, running("b"))
	h.step()
	h.assign(running("b")) // b stays; a is gone
	h.step()
	got := h.rt.Calls()
	slices.Sort(got)
	if want := []string{"start a", "start b", "stop a"}; !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if _, ok := h.l.items["a"]; ok {
		t.Fatal("a stopped, unassigned instance stays in the table")
	}
}

// After a restart the agent adopts running containers instead of
// starting them again, and stops the ones nobody assigns, before it
// starts anything new (fencing).
func TestLoopAdoptsAndFences(t *testing.T) {
	h := newHarness(t)
	h.rt.containers["a"] = runtime.Container{InstanceID: "a", ContainerID: "a", IP: "10.213.0.5", Running: true}
	h.rt.containers["stale"] = runtime.Container{InstanceID: "stale", ContainerID: "stale", IP: "10.213.0.6", Running: true}
	if err := h.l.adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.assign(running("a"), running("c"))
	h.l.act() // the stale container's stop starts; c must wait for it
	if calls := h.rt.Calls(); slices.Contains(calls, "start c") {
		t.Fatalf("started new work while a stale container still ran: %q", calls)
	}
	h.step()
	h.step()
	got := h.rt.Calls()
	if !slices.Contains(got, "stop stale") || !slices.Contains(got, "start c") || slices.Contains(got, "start a") {
		t.Fatalf("calls %q: want the stale one stopped, c started, a adopted (not started)", got)
	}
	if st := h.wantPhase("a", api.PhaseRunning); st.Ip != "10.213.0.5" {
		t.Fatalf("adopted a: %v", st)
	}
}

// When containerd's exit stream breaks, the loop does not spin on the
// closed channel: it subscribes again and reconciles with List, catching
// the exit it missed.
func TestLoopResubscribesWhenTheExitStreamBreaks(t *testing.T) {
	h := newHarness(t)
	h.l.now = time.Now // run drives itself on the real clock
	ctx, cancel := context.WithCancel(context.Background())
	assignments := make(chan *pb.Assignments, 1)
	assignments <- &pb.Assignments{Instances: []*pb.Instance{running("a")}}
	done := make(chan error, 1)
	go func() { done <- h.l.run(ctx, assignments, h.rt.Exits) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, f func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !f() {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s (calls %q)", what, h.rt.Calls())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("a started", func() bool { return slices.Contains(h.rt.Calls(), "start a") })
	// The stream breaks; meanwhile the container dies unseen.
	h.rt.mu.Lock()
	close(h.rt.exits[0])
	c := h.rt.containers["a"]
	c.Running, c.ExitCode = false, 3
	h.rt.containers["a"] = c
	h.rt.mu.Unlock()
	waitFor("subscribed again", func() bool { h.rt.mu.Lock(); defer h.rt.mu.Unlock(); return h.rt.subscribes == 2 })
	waitFor("the missed exit restarted it", func() bool { return slices.Contains(h.rt.Calls(), "restart a") })
}

// A control plane that does not answer status reports holds up nothing:
// the loop goes on starting what it is assigned.
func TestLoopReportDoesNotBlock(t *testing.T) {
	h := newHarness(t)
	h.l.now = time.Now
	h.cp.block = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	assignments := make(chan *pb.Assignments, 1)
	assignments <- &pb.Assignments{Instances: []*pb.Instance{running("a")}}
	done := make(chan error, 1)
	go func() { done <- h.l.run(ctx, assignments, h.rt.Exits) }()
	defer func() { close(h.cp.block); cancel(); <-done }()
	deadline := time.Now().Add(2 * time.Second) // well within the report's 3 s timeout
	for !slices.Contains(h.rt.Calls(), "start a") {
		if time.Now().After(deadline) {
			t.Fatal("a never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	assignments <- &pb.Assignments{Instances: []*pb.Instance{running("a"), running("b")}}
	for !slices.Contains(h.rt.Calls(), "start b") {
		if time.Now().After(deadline) {
			t.Fatalf("b did not start while a status report hung: %q", h.rt.Calls())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A readiness probe that fails says why: the error goes to the
// instance's last error (before, READY false had no reason anywhere), and
// goes away when the probe passes.
func TestLoopReportsWhyAnInstanceIsNotReady(t *testing.T) {
	h := newHarness(t)
	in := running("a")
	in.Template.Health = &pb.Health{Tcp: &pb.TCPProbe{Port: 8080}, Interval: "10s", Timeout: "1s"}
	h.assign(in)
	h.step()
	// Right after the start, not listening yet is no error.
	h.l.items["a"].probing = true
	h.l.probed(probeResult{id: "a", err: errors.New("probe tcp 10.213.0.9:8080: connection refused")})
	h.report()
	if st := h.wantPhase("a", api.PhaseRunning); st.Ready || st.LastError != "" {
		t.Fatalf("a failed probe right after the start: ready %v, last error %q", st.Ready, st.LastError)
	}
	// One interval on, it is.
	h.now = h.now.Add(11 * time.Second)
	h.l.items["a"].probing = true
	h.l.probed(probeResult{id: "a", err: errors.New("probe tcp 10.213.0.9:8080: connection refused")})
	h.report()
	st := h.wantPhase("a", api.PhaseRunning)
	if st.Ready || st.LastError != "readiness probe failed: probe tcp 10.213.0.9:8080: connection refused" {
		t.Fatalf("after a failed probe: ready %v, last error %q", st.Ready, st.LastError)
	}
	h.l.items["a"].probing = true
	h.l.probed(probeResult{id: "a"})
	h.report()
	if st := h.wantPhase("a", api.PhaseRunning); !st.Ready || st.LastError != "" {
		t.Fatalf("after a passing probe: ready %v, last error %q", st.Ready, st.LastError)
	}
}

// A liveness probe failing FailureThreshold times in a row restarts the
// container (kill, then the usual restart), and says why; fewer failures
// change nothing. A readiness threshold keeps a ready replica through one
// bad probe.
func TestLoopLivenessRestartsAndReadinessThreshold(t *testing.T) {
	h := newHarness(t)
	in := running("a")
	in.Template.Liveness = &pb.Health{Tcp: &pb.TCPProbe{Port: 8080}, Interval: "10s", Timeout: "1s", FailureThreshold: 3}
	in.Template.Health = &pb.Health{Tcp: &pb.TCPProbe{Port: 8080}, Interval: "10s", Timeout: "1s", FailureThreshold: 2}
	h.assign(in)
	h.step()
	it := h.l.items["a"]
	ready := func(err error) { it.probing = true; h.l.probed(probeResult{id: "a", err: err}) }
	live := func(err error) { it.liveProbing = true; h.l.probed(probeResult{id: "a", err: err, live: true}) }
	ready(nil)
	ready(errors.New("refused"))
	if !it.st.Ready {
		t.Fatal("one failed readiness probe of a threshold of 2 took the replica out")
	}
	ready(errors.New("refused"))
	if it.st.Ready {
		t.Fatal("two failed readiness probes of a threshold of 2 left the replica in")
	}
	live(errors.New("refused"))
	live(errors.New("refused"))
	h.step()
	h.wantCalls("start a")
	live(errors.New("dial tcp: connection refused"))
	h.step()
	h.wantCalls("start a", "kill a")
	st := h.wantPhase("a", api.PhaseBackoff)
	if !strings.Contains(st.LastError, "liveness probe failed 3 times in a row: dial tcp: connection refused") {
		t.Fatalf("last error %q", st.LastError)
	}
	h.now = h.now.Add(2 * time.Second)
	h.step()
	h.wantCalls("start a", "kill a", "restart a")
	if st := h.wantPhase("a", api.PhaseRunning); st.Restarts != 1 {
		t.Fatalf("restarts %d", st.Restarts)
	}
}

// noProbes sends no packets: its results are never read by the tests,
// which call probed themselves.
type noProbes struct{}

func (noProbes) Check(ctx context.Context, _ string, _ *api.Health) error {
	<-ctx.Done()
	return ctx.Err()
}

// The held snapshot applies deltas in order, refuses one from another
// version (the agent then asks for the whole snapshot), and keeps the
// control plane's order.
func TestHeldSnapshotAppliesDeltas(t *testing.T) {
	h := &heldSnapshot{services: map[string]*pb.DiscoveryService{}}
	svc := func(ns, name string) *pb.DiscoveryService { return &pb.DiscoveryService{Namespace: ns, Name: name} }
	if err := h.apply(&pb.DiscoveryDelta{Version: 5, Services: []*pb.DiscoveryService{svc("b", "x"), svc("a", "z"), svc("a", "y")}}); err != nil {
		t.Fatal(err)
	}
	if err := h.apply(&pb.DiscoveryDelta{Version: 7, BaseVersion: 5, Services: []*pb.DiscoveryService{svc("a", "w")}, Removed: []string{"a/z"}}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range h.snapshot().Services {
		names = append(names, s.Namespace+"/"+s.Name)
	}
	if h.version != 7 || !slices.Equal(names, []string{"a/w", "a/y", "b/x"}) {
		t.Fatalf("version %d, services %v", h.version, names)
	}
	if err := h.apply(&pb.DiscoveryDelta{Version: 9, BaseVersion: 8}); err == nil {
		t.Fatal("a delta from a version the agent does not have was applied")
	}
}
