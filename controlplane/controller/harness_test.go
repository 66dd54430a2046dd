package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

// fakeStore records what the controllers write (Nomad's scheduler harness
// is the model): tests build a View by hand, run one step, and assert the
// commits. fail, when set, refuses a commit of instance changes.
type fakeStore struct {
	mu        sync.Mutex
	nodes     map[string]*api.Node
	commits   [][]store.InstanceChange
	volumes   []store.VolumeChange
	rollouts  []api.Rollout
	rollbacks []api.Rollout
	events    []store.Event
	deleted   []string
	pruned    []string
	fail      func([]store.InstanceChange) error
}

func (f *fakeStore) UpdateNode(_ context.Context, name string, change func(*api.Node) bool) (*api.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[name]
	if !ok {
		return nil, store.ErrNotFound
	}
	change(n)
	return n, nil
}

func (f *fakeStore) DeleteNode(_ context.Context, name string) error {
	f.deleted = append(f.deleted, name)
	return nil
}

func (f *fakeStore) CommitInstances(ctx context.Context, changes []store.InstanceChange) error {
	return f.Commit(ctx, changes, nil)
}

func (f *fakeStore) Commit(_ context.Context, changes []store.InstanceChange, volumes []store.VolumeChange) error {
	if f.fail != nil {
		if err := f.fail(changes); err != nil {
			return err
		}
	}
	f.commits = append(f.commits, changes)
	f.volumes = append(f.volumes, volumes...)
	return nil
}

func (f *fakeStore) PutRollout(_ context.Context, r api.Rollout, _ int64) (int64, error) {
	f.rollouts = append(f.rollouts, r)
	return 1, nil
}

func (f *fakeStore) RollBack(_ context.Context, r api.Rollout, _ int64) error {
	f.rollbacks = append(f.rollbacks, r)
	return nil
}

func (f *fakeStore) RecordEvents(_ context.Context, evs []store.Event) error {
	f.events = append(f.events, evs...)
	return nil
}

func (f *fakeStore) PruneEvents(context.Context) (int64, error) { return 0, nil }

func (f *fakeStore) PruneRevisions(_ context.Context, ns, name string, current int64, inUse map[int64]bool) (int, error) {
	var revs []int64
	for r := range inUse {
		revs = append(revs, r)
	}
	slices.Sort(revs)
	f.pruned = append(f.pruned, fmt.Sprintf("%s/%s@%d in use %v", ns, name, current, revs))
	return 0, nil
}

func (f *fakeStore) Written() int64 { return 0 }

// changes flattens the recorded commits.
func (f *fakeStore) changes() []store.InstanceChange {
	var out []store.InstanceChange
	for _, c := range f.commits {
		out = append(out, c...)
	}
	return out
}

func (f *fakeStore) reasons() []string {
	var out []string
	for _, e := range f.events {
		out = append(out, e.Reason)
	}
	return out
}

var h0 = time.Unix(1_700_000_000, 0).UTC()

// run runs one reconcile step as a pass does: the step, then its events
// written.
func run(c *Controller, step func(context.Context, *store.View) error, v *store.View) error {
	err := step(context.Background(), v)
	c.flushEvents(context.Background())
	return err
}

// newHarness is a controller over a fake store on a fixed clock.
func newHarness(nodes ...api.Node) (*Controller, *fakeStore) {
	fs := &fakeStore{nodes: map[string]*api.Node{}}
	for i := range nodes {
		n := nodes[i]
		fs.nodes[n.Name] = &n
	}
	cfg := DefaultConfig()
	cfg.DrainDelay, cfg.LostGrace = 5*time.Second, 10*time.Second
	c := New(cfg, fs, nil)
	c.now = func() time.Time { return h0 }
	return c, fs
}

func node(name, state string) api.Node {
	return api.Node{Name: name, State: state, StateSince: h0.Add(-time.Minute), PodCIDR: "10.213.0.0/24",
		Capacity: api.Capacity{MilliCPU: 4000, MemoryBytes: 8 << 30}}
}

func service(name string, replicas int32, revision int64) api.Service {
	return api.Service{Metadata: api.ObjectMeta{Name: name, Namespace: "default"},
		Spec:   api.ServiceSpec{Image: "berth.local/" + name + ":v1", Replicas: &replicas, Resources: api.Resources{CPU: "100m", Memory: "64Mi"}},
		Status: api.ServiceStatus{Revision: revision}}
}

func inst(id, svcName string, revision int64, nodeName string) store.VersionedInstance {
	s := service(svcName, 1, revision)
	return store.VersionedInstance{ModRevision: 7, Instance: api.Instance{ID: id, Namespace: "default", Service: svcName, Revision: revision,
		Node: nodeName, Desired: api.DesiredRunning, Template: s.Spec.Template()}}
}

func readyAt(vi store.VersionedInstance) api.InstanceStatus {
	return api.InstanceStatus{ID: vi.Instance.ID, Node: vi.Instance.Node, Ready: true, IP: "10.213.0.9", Phase: api.PhaseRunning, StartedAt: h0.Add(-time.Hour)}
}

func view(nodes []api.Node, live []string, svcs []api.Service, insts ...store.VersionedInstance) *store.View {
	v := &store.View{Services: svcs, Instances: insts, Nodes: nodes, Statuses: map[string]api.InstanceStatus{},
		LiveNodes: map[string]bool{}, Heartbeats: map[string]time.Time{}, DNSVersions: map[string]uint64{},
		Volumes: map[string]store.VersionedVolume{}, Rollouts: map[string]store.VersionedRollout{}}
	for _, n := range live {
		v.LiveNodes[n] = true
	}
	return v
}

// Node states: live -> Ready; silent Ready -> NotReady; NotReady past the
// grace -> Lost, whose instances are deleted (replaced elsewhere); a
// removed node is Lost at once and deleted once empty.
func TestHarnessNodeStates(t *testing.T) {
	nodes := []api.Node{node("up", api.NodeNotReady), node("silent", api.NodeReady), node("gone", api.NodeNotReady), node("removed", api.NodeReady)}
	nodes[2].StateSince = h0.Add(-11 * time.Second)
	nodes[3].Removed = true
	c, fs := newHarness(nodes...)
	v := view(nodes, []string{"up", "removed"}, nil, inst("a", "web", 1, "gone"), inst("b", "web", 1, "up"))
	if err := run(c, c.reconcileNodes, v); err != nil {
		t.Fatal(err)
	}
	// "gone" has been NotReady for longer than the grace by the stored
	// StateSince (another leader's wall clock, or this machine's before
	// a jump), but this leader has not watched it for the grace: not yet
	// Lost.
	if got := fs.nodes["gone"].State; got != api.NodeNotReady {
		t.Fatalf("node gone: %s at this leader's first sight, want NotReady until it watched for LostGrace", got)
	}
	c.now = func() time.Time { return h0.Add(c.cfg.LostGrace) }
	if err := run(c, c.reconcileNodes, v); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"up": api.NodeReady, "silent": api.NodeNotReady, "gone": api.NodeLost, "removed": api.NodeLost} {
		if got := fs.nodes[name].State; got != want {
			t.Errorf("node %s: %s, want %s", name, got, want)
		}
	}
	ch := fs.changes()
	if len(ch) != 1 || ch[0].Instance.ID != "a" || !ch[0].Delete {
		t.Fatalf("the lost node's instance is not deleted (alone): %+v", ch)
	}
	for _, want := range []string{"NodeReady", "NodeNotReady", "NodeLost", "Replaced"} {
		if !slices.Contains(fs.reasons(), want) {
			t.Errorf("no %s event in %v", want, fs.reasons())
		}
	}
	// The removed node, Lost and empty now, is deleted.
	nodes[3].State = api.NodeLost
	v = view(nodes, nil, nil)
	if err := run(c, c.reconcileNodes, v); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(fs.deleted, "removed") {
		t.Fatalf("the removed, empty node is not deleted: %v", fs.deleted)
	}
}

// A node marked for draining has its live instances drained (in bounded
// commits); others are left alone.
func TestHarnessDrainNodes(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady), node("b", api.NodeReady)}
	nodes[0].Drain, nodes[0].Cordoned = true, true
	c, fs := newHarness(nodes...)
	var insts []store.VersionedInstance
	for i := range 150 {
		insts = append(insts, inst(fmt.Sprintf("web-%03d", i), "web", 1, "a"))
	}
	gone := inst("old", "web", 1, "a")
	gone.Instance.Draining = true
	insts = append(insts, gone, inst("other", "web", 1, "b"))
	if err := run(c, c.drainNodes, view(nodes, []string{"a", "b"}, nil, insts...)); err != nil {
		t.Fatal(err)
	}
	ch := fs.changes()
	if len(ch) != 150 || len(fs.commits) < 2 {
		t.Fatalf("%d changes in %d commits, want the 150 live instances of node a in bounded commits", len(ch), len(fs.commits))
	}
	for _, x := range ch {
		if x.Instance.Node != "a" || !x.Instance.Draining || !x.Instance.DrainSince.Equal(h0) || x.ModRevision != 7 {
			t.Fatalf("change %+v", x)
		}
	}
}

// The replica loop creates what is missing and drains what is extra or
// orphaned (a deleted service).
func TestHarnessReplicas(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady)}
	c, fs := newHarness(nodes...)
	v := view(nodes, []string{"a"}, []api.Service{service("web", 3, 1)}, inst("web-1", "web", 1, "a"), inst("orphan-1", "deleted", 1, "a"))
	v.Statuses["web-1"] = readyAt(v.Instances[0])
	if err := run(c, c.reconcileReplicas, v); err != nil {
		t.Fatal(err)
	}
	var created, drained []string
	for _, x := range fs.changes() {
		if x.ModRevision == 0 {
			created = append(created, x.Instance.Service)
		} else if x.Instance.Draining {
			drained = append(drained, x.Instance.ID)
		}
	}
	if len(created) != 2 || created[0] != "web" || !slices.Equal(drained, []string{"orphan-1"}) {
		t.Fatalf("created %v, drained %v: want two web replicas and the orphan drained", created, drained)
	}
}

// A service whose changes etcd refuses is reported and does not hold up
// the others.
func TestHarnessOneServiceFailsAlone(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady)}
	c, fs := newHarness(nodes...)
	fs.fail = func(ch []store.InstanceChange) error {
		for _, x := range ch {
			if x.Instance.Service == "bad" {
				return errors.New("etcdserver: request is too large")
			}
		}
		return nil
	}
	v := view(nodes, []string{"a"}, []api.Service{service("bad", 2, 1), service("good", 2, 1)})
	err := run(c, c.reconcileReplicas, v)
	if err == nil || !strings.Contains(err.Error(), "default/bad") {
		t.Fatalf("err %v: want the bad service named", err)
	}
	good := 0
	for _, x := range fs.changes() {
		if x.Instance.Service == "good" {
			good++
		}
	}
	if good != 2 || !slices.Contains(fs.reasons(), "ReconcileFailed") {
		t.Fatalf("good service got %d creates (want 2); events %v", good, fs.reasons())
	}
	// The same failure again is not a second event.
	n := len(fs.events)
	run(c, c.reconcileReplicas, v)
	for _, e := range fs.events[n:] {
		if e.Reason == "ReconcileFailed" {
			t.Fatal("the same failure was reported twice")
		}
	}
}

// Placement: pending instances go to ready nodes with room, with their
// per-replica volumes bound in the same commit; what fits nowhere is an
// Unschedulable event, once.
func TestHarnessSchedule(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady), node("small", api.NodeReady), node("down", api.NodeNotReady)}
	nodes[1].Capacity = api.Capacity{MilliCPU: 50, MemoryBytes: 1 << 20}
	c, fs := newHarness(nodes...)
	p := inst("web-1", "web", 1, "")
	p.Instance.Template.VolumeTemplates = []api.VolumeTemplate{{Name: "data", MountPath: "/data"}}
	huge := inst("huge-1", "huge", 1, "")
	huge.Instance.Template.Resources = api.Resources{CPU: "64", Memory: "1Gi"}
	v := view(nodes, []string{"a", "small"}, nil, p, huge)
	if err := run(c, c.schedule, v); err != nil {
		t.Fatal(err)
	}
	ch := fs.changes()
	if len(ch) < 1 || ch[0].Instance.ID != "web-1" || ch[0].Instance.Node != "a" {
		t.Fatalf("placements %+v: want web-1 on a", ch)
	}
	if len(fs.volumes) != 1 || fs.volumes[0].Volume.Metadata.Name != "data-0" || fs.volumes[0].Volume.Status.Node != "a" {
		t.Fatalf("volumes %+v: want data-0 bound to a with the placement", fs.volumes)
	}
	run(c, c.schedule, v) // huge-1 still fits nowhere: no second event
	unsched := 0
	for _, e := range fs.events {
		if e.Reason == "Unschedulable" {
			unsched++
		}
	}
	if unsched != 1 {
		t.Fatalf("%d Unschedulable events for huge-1 over two passes, want 1", unsched)
	}
}

// Drain: a draining instance stops once the drain delay passed and every
// gateway and node DNS applied a snapshot without it; one never served
// stops at once. Collect: stopped containers' instances are deleted.
func TestHarnessDrainAndCollect(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady)}
	c, fs := newHarness(nodes...)
	served := inst("served", "web", 1, "a")
	served.Instance.Draining, served.Instance.DrainSince = true, h0.Add(-10*time.Second)
	served.ModRevision = 50
	fresh := inst("fresh", "web", 1, "a")
	fresh.Instance.Draining, fresh.Instance.DrainSince = true, h0.Add(-time.Second)
	never := inst("never", "web", 1, "")
	never.Instance.Draining = true
	v := view(nodes, []string{"a"}, nil, served, fresh, never)
	v.Statuses["served"], v.Statuses["fresh"] = readyAt(served), readyAt(fresh)
	v.Gateways = []api.GatewayStatus{{NodeID: "gw-1", Version: 40, State: api.GatewaySyncing}}
	stopped := func() []string {
		var out []string
		for _, x := range fs.changes() {
			if x.Instance.Desired == api.DesiredStopped {
				out = append(out, x.Instance.ID)
			}
		}
		slices.Sort(out)
		return out
	}
	if err := run(c, c.drain, v); err != nil {
		t.Fatal(err)
	}
	if got := stopped(); !slices.Equal(got, []string{"never"}) {
		t.Fatalf("stopped %v before the gateway applied the drain: want only the never-served one", got)
	}
	v.Gateways[0].Version = 50 // applied now
	v.DNSVersions["a"] = 45    // but the node's DNS is behind
	fs.commits = nil
	run(c, c.drain, v)
	if got := stopped(); slices.Contains(got, "served") {
		t.Fatalf("stopped while node a's DNS was behind: %v", got)
	}
	v.DNSVersions["a"] = 50
	fs.commits = nil
	run(c, c.drain, v)
	if got := stopped(); !slices.Contains(got, "served") || slices.Contains(got, "fresh") {
		t.Fatalf("stopped %v: want served (delay passed, everyone applied), not fresh (within the drain delay)", got)
	}
	// Collect.
	done := inst("done", "web", 1, "a")
	done.Instance.Desired = api.DesiredStopped
	running := inst("running", "web", 1, "a")
	running.Instance.Desired = api.DesiredStopped
	v = view(nodes, []string{"a"}, nil, done, running)
	v.Statuses["done"] = api.InstanceStatus{ID: "done", Node: "a", Phase: api.PhaseStopped}
	v.Statuses["running"] = readyAt(running)
	fs.commits = nil
	if err := run(c, c.collect, v); err != nil {
		t.Fatal(err)
	}
	if ch := fs.changes(); len(ch) != 1 || ch[0].Instance.ID != "done" || !ch[0].Delete {
		t.Fatalf("collected %+v: want only the stopped one, deleted", ch)
	}
}

// Rollouts: a new revision replacing a serving one starts a rollout
// (canary with steps, else rolling); a canary's step moves its weight;
// an abort rolls back; a finished rollout is counted.
func TestHarnessRollouts(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady)}
	c, fs := newHarness(nodes...)
	web := service("web", 2, 2)
	web.Spec.Rollout = &api.RolloutSpec{Strategy: api.StrategyCanary, Steps: []api.CanaryStep{{Weight: 50}, {Weight: 100}}}
	old1, old2 := inst("v1-a", "web", 1, "a"), inst("v1-b", "web", 1, "a")
	v := view(nodes, []string{"a"}, []api.Service{web}, old1, old2)
	v.Statuses["v1-a"], v.Statuses["v1-b"] = readyAt(old1), readyAt(old2)
	if err := run(c, c.reconcileRollouts, v); err != nil {
		t.Fatal(err)
	}
	if len(fs.rollouts) != 1 || fs.rollouts[0].Stable != 1 || fs.rollouts[0].Revision != 2 || fs.rollouts[0].Strategy != api.StrategyCanary {
		t.Fatalf("rollout started: %+v", fs.rollouts)
	}
	// Step 1 waits for its canary replica, then sets 50%.
	started := fs.rollouts[0]
	v.Rollouts["default/web"] = store.VersionedRollout{Rollout: started, ModRevision: 9}
	canary := inst("v2-a", "web", 2, "a")
	v.Instances = append(v.Instances, canary)
	v.Statuses["v2-a"] = readyAt(canary)
	fs.rollouts = nil
	if err := run(c, c.reconcileRollouts, v); err != nil {
		t.Fatal(err)
	}
	if len(fs.rollouts) != 1 || fs.rollouts[0].Weight != 50 {
		t.Fatalf("step 1: %+v", fs.rollouts)
	}
	// The user aborts: rolled back in one move, an Aborted event.
	ab := fs.rollouts[0]
	ab.Abort, ab.WeightRevision = true, 10
	v.Rollouts["default/web"] = store.VersionedRollout{Rollout: ab, ModRevision: 10}
	if err := run(c, c.reconcileRollouts, v); err != nil {
		t.Fatal(err)
	}
	if len(fs.rollbacks) != 1 || fs.rollbacks[0].Phase != api.RolloutAborted || !slices.Contains(fs.reasons(), "Aborted") {
		t.Fatalf("abort: %+v, events %v", fs.rollbacks, fs.reasons())
	}
	// Rolling: a service without canary steps.
	api2 := service("api", 2, 2)
	oa := inst("api-v1", "api", 1, "a")
	v = view(nodes, []string{"a"}, []api.Service{api2}, oa)
	v.Statuses["api-v1"] = readyAt(oa)
	fs.rollouts = nil
	run(c, c.reconcileRollouts, v)
	if len(fs.rollouts) != 1 || fs.rollouts[0].Strategy != api.StrategyRolling {
		t.Fatalf("rolling update started: %+v", fs.rollouts)
	}
}

// Revisions are pruned when a service's revision, or the revisions its
// instances run, change; not on every pass.
func TestHarnessPruneRevisions(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady)}
	c, fs := newHarness(nodes...)
	v := view(nodes, []string{"a"}, []api.Service{service("web", 1, 5)}, inst("w4", "web", 4, "a"), inst("w5", "web", 5, "a"))
	for range 3 {
		run(c, c.pruneRevisions, v)
	}
	v.Instances = v.Instances[1:] // revision 4's instance is gone
	run(c, c.pruneRevisions, v)
	want := []string{"default/web@5 in use [4 5]", "default/web@5 in use [5]"}
	if !slices.Equal(fs.pruned, want) {
		t.Fatalf("pruned %q, want %q", fs.pruned, want)
	}
}

// Gateways past their deadline are STALE once (an event), and caught up
// once.
func TestHarnessStaleGateways(t *testing.T) {
	c, fs := newHarness()
	v := view(nil, nil, nil)
	v.Gateways = []api.GatewayStatus{{NodeID: "gw-1", Replica: "r1", State: api.GatewayStale, Version: 3}}
	run(c, c.reconcileNodes, v)
	run(c, c.reconcileNodes, v)
	v.Gateways[0].State, v.Gateways[0].Version = api.GatewaySynced, 9
	run(c, c.reconcileNodes, v)
	if got := fs.reasons(); !slices.Equal(got, []string{"GatewayStale", "GatewayCaughtUp"}) {
		t.Fatalf("events %v", got)
	}
}

// fakeViews hands the controller a fixed view.
type fakeViews struct{ v *store.View }

func (f fakeViews) View() *store.View { return f.v }
func (f fakeViews) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	return ch, func() {}
}
func (f fakeViews) Ready() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

// One whole pass: every step runs on the view, in order, and their
// events are written.
func TestHarnessFullPass(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeNotReady)}
	c, fs := newHarness(nodes...)
	v := view(nodes, []string{"a"}, []api.Service{service("web", 2, 1)})
	c.cache = fakeViews{v}
	if err := c.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, x := range fs.changes() {
		if x.ModRevision == 0 {
			created++
		}
	}
	if fs.nodes["a"].State != api.NodeReady || created != 2 || !slices.Contains(fs.reasons(), "InstanceCreated") {
		t.Fatalf("node %s, %d created, events %v", fs.nodes["a"].State, created, fs.reasons())
	}
	// A rolling update in progress: its available replicas are counted.
	web := service("web", 1, 2)
	oldI, newI := inst("w1", "web", 1, "a"), inst("w2", "web", 2, "a")
	v = view(nodes, []string{"a"}, []api.Service{web}, oldI, newI)
	v.Statuses["w1"], v.Statuses["w2"] = readyAt(oldI), readyAt(newI)
	v.Rollouts["default/web"] = store.VersionedRollout{Rollout: api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1,
		Phase: api.RolloutProgressing, Strategy: api.StrategyRolling, ProgressAt: h0}, ModRevision: 3}
	fs.rollouts = nil
	run(c, c.reconcileRollouts, v)
	if len(fs.rollouts) != 1 || fs.rollouts[0].Available != 1 {
		t.Fatalf("rolling progress: %+v", fs.rollouts)
	}
}

// An undo to a known-good revision keeps the canary policy but skips its
// steps: the rollout it starts is a rolling update.
func TestHarnessUndoSkipsCanarySteps(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeReady)}
	c, fs := newHarness(nodes...)
	web := service("web", 2, 3)
	web.Spec.Rollout = &api.RolloutSpec{Strategy: api.StrategyCanary, Steps: []api.CanaryStep{{Weight: 10, Pause: api.PauseUntilPromoted}, {Weight: 100}}}
	web.Status.RollbackTo = 1
	o1, o2 := inst("v2-a", "web", 2, "a"), inst("v2-b", "web", 2, "a")
	v := view(nodes, []string{"a"}, []api.Service{web}, o1, o2)
	v.Statuses["v2-a"], v.Statuses["v2-b"] = readyAt(o1), readyAt(o2)
	run(c, c.reconcileRollouts, v)
	if len(fs.rollouts) != 1 || fs.rollouts[0].Strategy != api.StrategyRolling || !strings.Contains(fs.rollouts[0].Message, "known-good template of revision 1") {
		t.Fatalf("undo's rollout: %+v", fs.rollouts)
	}
	// A plain new revision of the same service is a canary again.
	web.Status.RollbackTo, web.Status.Revision = 0, 4
	v.Services = []api.Service{web}
	fs.rollouts = nil
	run(c, c.reconcileRollouts, v)
	if len(fs.rollouts) != 1 || fs.rollouts[0].Strategy != api.StrategyCanary {
		t.Fatalf("next change's rollout: %+v", fs.rollouts)
	}
}

// Panic routing is recorded once when it starts (Warning, naming the
// service and the nodes) and once when it ends (Normal), not on every
// pass; a service whose other endpoints serve is not in panic.
func TestHarnessPanicRoutingEvents(t *testing.T) {
	nodes := []api.Node{node("a", api.NodeNotReady), node("b", api.NodeReady)}
	c, fs := newHarness(nodes...)
	web, api1 := inst("web-1", "web", 1, "a"), inst("api-1", "api", 1, "a")
	api2 := inst("api-2", "api", 1, "b")
	v := view(nodes, []string{"b"}, []api.Service{service("web", 1, 1), service("api", 2, 1)}, web, api1, api2)
	for _, vi := range []store.VersionedInstance{web, api1, api2} {
		v.Statuses[vi.Instance.ID] = readyAt(vi)
	}
	run(c, c.reconcileNodes, v)
	run(c, c.reconcileNodes, v)
	var panics []store.Event
	for _, e := range fs.events {
		if strings.HasPrefix(e.Reason, "Panic") {
			panics = append(panics, e)
		}
	}
	if len(panics) != 1 || panics[0].Reason != "PanicRouting" || panics[0].Type != "Warning" || panics[0].Object != "service/web" ||
		!strings.Contains(panics[0].Message, "(a)") {
		t.Fatalf("panic events after two passes: %+v", panics)
	}
	// A pass whose inputs did not move (the same generations) does not
	// build the service again: what the view says of it otherwise is not
	// read (a real view moves its generations with what it holds).
	delete(v.Statuses, web.Instance.ID)
	run(c, c.reconcileNodes, v)
	if c.panicking["default/web"] == nil {
		t.Fatal("a pass with the same generations built the service again")
	}
	v.Statuses[web.Instance.ID] = readyAt(web)
	// Node a reports again (its lease key is back: the nodes' generation
	// moves): the panic ends, once.
	v.LiveNodes["a"] = true
	v.NodesGen++
	run(c, c.reconcileNodes, v)
	run(c, c.reconcileNodes, v)
	var reasons []string
	for _, e := range fs.events {
		if strings.HasPrefix(e.Reason, "Panic") {
			reasons = append(reasons, e.Reason+" "+e.Type+" "+e.Object)
		}
	}
	if want := []string{"PanicRouting Warning service/web", "PanicRoutingEnded Normal service/web"}; !slices.Equal(reasons, want) {
		t.Fatalf("panic events %v, want %v", reasons, want)
	}
}
