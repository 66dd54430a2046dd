package publish

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
	"github.com/prometheus/client_golang/prometheus"
)

func testView(v *store.View) *store.View {
	if v.Statuses == nil {
		v.Statuses = map[string]api.InstanceStatus{}
	}
	v.LiveNodes, v.DNSVersions = map[string]bool{"a": true}, map[string]uint64{}
	return v
}

// The publisher builds a snapshot from a view, wakes its watchers and
// sinks, maps revisions to versions, and skips a view that changes
// nothing that matters to traffic.
func TestHarnessPublisher(t *testing.T) {
	var sunk []uint64
	p := NewPublisher(nil, nil, nil, func(s *discovery.Snapshot) { sunk = append(sunk, s.Version) })
	if _, ok := p.VersionFor(5); ok || p.Latest() != nil {
		t.Fatal("a version before anything was published")
	}
	woken, stop := p.Watch()
	defer stop()
	replicas := int32(1)
	in := api.Instance{ID: "w1", Namespace: "default", Service: "web", Revision: 1, Node: "a", Desired: api.DesiredRunning}
	v := testView(&store.View{Nodes: []api.Node{{Name: "a", State: api.NodeReady}},
		Services:  []api.Service{{Metadata: api.ObjectMeta{Name: "web", Namespace: "default"}, Spec: api.ServiceSpec{Image: "x", Replicas: &replicas}, Status: api.ServiceStatus{Revision: 1}}},
		Instances: []store.VersionedInstance{{Instance: in}},
		Statuses:  map[string]api.InstanceStatus{"w1": {ID: "w1", Node: "a", Ready: true, IP: "10.213.0.9", StartedAt: time.Unix(1, 0)}}})
	v.Revision, v.Gen = 10, 1
	p.publish(v)
	if got := p.Latest(); got == nil || got.Version != 10 || len(got.Services) != 1 || len(got.Services[0].ReadyEndpoints()) != 1 {
		t.Fatalf("snapshot %+v", got)
	}
	select {
	case <-woken:
	default:
		t.Fatal("the watcher was not woken")
	}
	// Only a heartbeat later (same Gen): not published again, but the
	// later revision is covered by the same version.
	v2 := *v
	v2.Revision = 12
	p.publish(&v2)
	if ver, ok := p.VersionFor(12); !ok || ver != 10 || len(sunk) != 1 {
		t.Fatalf("VersionFor(12) = %d %v, %d published", ver, ok, len(sunk))
	}
	if _, ok := p.VersionFor(13); ok {
		t.Fatal("a revision the publisher has not seen has a version")
	}
	sync := controller.SyncOf(v, 12, p.VersionFor)
	if !sync.GatewaysApplied() || !sync.DNSApplied() {
		t.Fatalf("nothing to wait for: %+v", sync)
	}
	v.DNSVersions["a"] = 9
	if sync := controller.SyncOf(v, 12, p.VersionFor); sync.DNSApplied() {
		t.Fatalf("node a's DNS at 9 applied version 10: %+v", sync)
	}
}

// Since gives a delta feed what changed: the services touched since a
// version it has (merged over several publishes), the ones removed, or
// the whole snapshot when the version is unknown or too old.
func TestSinceGivesWhatChanged(t *testing.T) {
	p := NewPublisher(nil, nil, nil)
	svc := func(name, image string) api.Service {
		return api.Service{Metadata: api.ObjectMeta{Name: name, Namespace: "default"}, Spec: api.ServiceSpec{Image: image,
			Ports: []api.Port{{Name: "http", Port: 8080}}}, Status: api.ServiceStatus{Revision: 1}}
	}
	gen := uint64(0)
	publish := func(rev int64, svcs ...api.Service) {
		gen++
		v := testView(&store.View{Nodes: []api.Node{{Name: "a", State: api.NodeReady}}, Services: svcs})
		v.Revision, v.Gen = rev, gen
		p.publish(v)
	}
	web, api1, db := svc("web", "w"), svc("api", "a"), svc("db", "d")
	publish(10, api1, db, web)
	if _, _, _, whole := p.Since(0); !whole {
		t.Fatal("version 0 is not whole")
	}
	db2 := db
	db2.Spec.Ports = []api.Port{{Name: "sql", Port: 5432}}
	publish(11, api1, db2, web) // db changed
	publish(12, api1, db2)      // web removed
	snap, changed, removed, whole := p.Since(10)
	if whole || snap.Version != 12 || len(changed) != 1 || changed[0].Name != "db" || len(removed) != 1 || removed[0] != "default/web" {
		t.Fatalf("since 10: whole %v, changed %v, removed %v", whole, changed, removed)
	}
	if _, changed, removed, whole := p.Since(11); whole || len(changed) != 0 || len(removed) != 1 {
		t.Fatalf("since 11: whole %v, changed %v, removed %v", whole, changed, removed)
	}
	if _, changed, removed, whole := p.Since(12); whole || changed != nil || removed != nil {
		t.Fatal("since the latest: something to send")
	}
	if _, _, _, whole := p.Since(7); !whole {
		t.Fatal("an unknown version is not whole")
	}
	// Past keepDeltas publishes, an old version gets the whole snapshot.
	for i := range keepDeltas + 1 {
		w := svc("web", "w")
		w.Spec.Ports = []api.Port{{Name: "http", Port: int32(9000 + i)}}
		publish(int64(13+i), api1, db2, w)
	}
	if _, _, _, whole := p.Since(10); !whole {
		t.Fatal("a version older than the kept deltas is not whole")
	}
}

// Endpoint-level deltas, applied by an agent (pb.ApplyServiceDelta) to
// the snapshot it holds, give exactly the latest snapshot, from any base
// the publisher remembers, over random changes: endpoints added, removed,
// readiness and addresses changed, new revisions, ports changed, services
// added and deleted.
func TestEndpointDeltasRebuildTheSnapshot(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 15))
	p := NewPublisher(nil, nil, nil)
	nodes := []api.Node{{Name: "a", State: api.NodeReady}, {Name: "b", State: api.NodeReady}}
	type svcState struct {
		svc       api.Service
		instances map[string]bool // ready?
		ips       map[string]string
	}
	services := map[string]*svcState{}
	seq := 0
	addService := func() {
		seq++
		name := fmt.Sprintf("svc-%d", seq)
		services[name] = &svcState{svc: api.Service{Metadata: api.ObjectMeta{Name: name, Namespace: "default"},
			Spec:   api.ServiceSpec{Image: "x", Ports: []api.Port{{Name: "http", Port: 8080}}},
			Status: api.ServiceStatus{Revision: 1}}, instances: map[string]bool{}, ips: map[string]string{}}
	}
	for range 4 {
		addService()
	}
	published := map[uint64]*discovery.Snapshot{}
	var versions []uint64
	ipSeq := 0
	// gens: what the cache's View.ServiceGens would say (a service's
	// generation moves with any change of it, its instances or statuses).
	gens := map[string]uint64{}
	for step := range 300 {
		// Change something.
		names := slices.Sorted(maps.Keys(services))
		s := services[names[rng.IntN(len(names))]]
		gens["default/"+s.svc.Metadata.Name] = uint64(step + 1)
		switch rng.IntN(10) {
		case 0, 1, 2:
			seq++
			id := fmt.Sprintf("%s-%d", s.svc.Metadata.Name, seq)
			s.instances[id] = rng.IntN(2) == 0
			ipSeq++
			s.ips[id] = fmt.Sprintf("10.213.%d.%d", ipSeq/250, 1+ipSeq%250)
		case 3, 4:
			for id := range s.instances {
				delete(s.instances, id)
				break
			}
		case 5, 6:
			for id := range s.instances {
				s.instances[id] = !s.instances[id]
				break
			}
		case 7:
			s.svc.Status.Revision++ // a new revision: every endpoint moves
		case 8:
			s.svc.Spec.Ports = []api.Port{{Name: "http", Port: int32(8000 + rng.IntN(100))}}
		case 9:
			if len(services) > 2 && rng.IntN(2) == 0 {
				delete(services, s.svc.Metadata.Name)
			} else {
				addService()
				gens[fmt.Sprintf("default/svc-%d", seq)] = uint64(step + 1)
			}
		}
		// Publish it.
		v := testView(&store.View{Nodes: nodes})
		v.LiveNodes["b"] = true
		for _, name := range slices.Sorted(maps.Keys(services)) {
			st := services[name]
			v.Services = append(v.Services, st.svc)
			for _, id := range slices.Sorted(maps.Keys(st.instances)) {
				node := "a"
				if len(id)%2 == 0 {
					node = "b"
				}
				v.Instances = append(v.Instances, store.VersionedInstance{Instance: api.Instance{ID: id, Namespace: "default", Service: name,
					Revision: st.svc.Status.Revision, Node: node, Desired: api.DesiredRunning}})
				v.Statuses[id] = api.InstanceStatus{ID: id, Node: node, Ready: st.instances[id], IP: st.ips[id], Phase: api.PhaseRunning}
			}
		}
		v.Revision, v.Gen = int64(100+step), uint64(step+1)
		v.ServiceGens, v.NodesGen = maps.Clone(gens), 1
		p.publish(v)
		latest := p.Latest()
		// Built only where inputs moved, it is what a whole build gives.
		if want := discovery.Build(stateFromView(v)); !reflect.DeepEqual(latest.Services, want.Services) {
			t.Fatalf("step %d: the snapshot built per changed service differs from a whole build", step)
		}
		if _, ok := published[latest.Version]; !ok {
			published[latest.Version] = latest
			versions = append(versions, latest.Version)
		}
		want := pb.FromSnapshot(latest)
		// Follow from a few bases.
		for _, base := range []uint64{versions[max(0, len(versions)-2)], versions[rng.IntN(len(versions))], versions[max(0, len(versions)-keepDeltas)]} {
			snap, deltas, removed, whole := p.SinceEndpoints(base)
			if whole {
				t.Fatalf("step %d: base %d (of %d kept) answered whole", step, base, keepDeltas)
			}
			held := map[string]*pb.DiscoveryService{}
			for _, svc := range pb.FromSnapshot(published[base]).Services {
				held[svc.Namespace+"/"+svc.Name] = svc
			}
			before := proto.Clone(pb.FromSnapshot(published[base]))
			for _, d := range pb.FromServiceDeltas(deltas) {
				svc, err := pb.ApplyServiceDelta(held[d.Namespace+"/"+d.Name], d)
				if err != nil {
					t.Fatalf("step %d, base %d: %v", step, base, err)
				}
				held[d.Namespace+"/"+d.Name] = svc
			}
			for _, k := range removed {
				delete(held, k)
			}
			got := &pb.DiscoverySnapshot{Version: snap.Version}
			for _, k := range slices.Sorted(maps.Keys(held)) {
				got.Services = append(got.Services, held[k])
			}
			if !proto.Equal(got, want) {
				t.Fatalf("step %d, from base %d: applying the deltas gave\n%v\nwant\n%v", step, base, got, want)
			}
			if !proto.Equal(before, pb.FromSnapshot(published[base])) {
				t.Fatalf("step %d: applying modified the base", step)
			}
		}
	}
}

// One endpoint turning ready is one endpoint in the delta: not the
// service's hundred others, not its header.
func TestEndpointDeltaIsTheEndpoint(t *testing.T) {
	p := NewPublisher(nil, nil, nil)
	view := func(rev int64, readyOne bool) *store.View {
		v := testView(&store.View{Nodes: []api.Node{{Name: "a", State: api.NodeReady}},
			Services: []api.Service{{Metadata: api.ObjectMeta{Name: "web", Namespace: "default"}, Spec: api.ServiceSpec{Image: "x"}, Status: api.ServiceStatus{Revision: 1}}}})
		for i := range 100 {
			id := fmt.Sprintf("web-%03d", i)
			v.Instances = append(v.Instances, store.VersionedInstance{Instance: api.Instance{ID: id, Namespace: "default", Service: "web", Revision: 1, Node: "a", Desired: api.DesiredRunning}})
			v.Statuses[id] = api.InstanceStatus{ID: id, Node: "a", Ready: i != 42 || readyOne, IP: fmt.Sprintf("10.213.0.%d", i+2), Phase: api.PhaseRunning}
		}
		v.Revision, v.Gen = rev, uint64(rev)
		return v
	}
	p.publish(view(10, false))
	p.publish(view(11, true))
	_, deltas, removed, whole := p.SinceEndpoints(10)
	if whole || len(removed) != 0 || len(deltas) != 1 || deltas[0].Header != nil || len(deltas[0].Endpoints) != 1 ||
		deltas[0].Endpoints[0].Endpoint.Instance != "web-042" || !deltas[0].Endpoints[0].Endpoint.Ready {
		t.Fatalf("delta: whole %v removed %v deltas %+v", whole, removed, deltas)
	}
}

// fakeViews is a cache the test moves by hand.
type fakeViews struct {
	mu   sync.Mutex
	v    *store.View
	subs []chan struct{}
}

func (f *fakeViews) View() *store.View { f.mu.Lock(); defer f.mu.Unlock(); return f.v }
func (f *fakeViews) Stamp() (int64, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.v.Revision, f.v.Gen
}
func (f *fakeViews) Subscribe() (<-chan struct{}, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	f.subs = append(f.subs, ch)
	return ch, func() {}
}
func (f *fakeViews) set(v *store.View) {
	f.mu.Lock()
	f.v = v
	subs := f.subs
	f.mu.Unlock()
	for _, ch := range subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// A burst of changes (a deploy's status reports, milliseconds apart) is
// published in fewer snapshots than changes, the last one holding the
// last change; a change after a quiet spell is published at once.
func TestBurstsArePublishedTogether(t *testing.T) {
	view := func(rev int64, ip string) *store.View {
		v := testView(&store.View{Nodes: []api.Node{{Name: "a", State: api.NodeReady}},
			Services:  []api.Service{{Metadata: api.ObjectMeta{Name: "web", Namespace: "default"}, Spec: api.ServiceSpec{Image: "x"}, Status: api.ServiceStatus{Revision: 1}}},
			Instances: []store.VersionedInstance{{Instance: api.Instance{ID: "w1", Namespace: "default", Service: "web", Revision: 1, Node: "a", Desired: api.DesiredRunning}}}})
		v.Statuses["w1"] = api.InstanceStatus{ID: "w1", Node: "a", Ready: true, IP: ip, Phase: api.PhaseRunning}
		v.Revision, v.Gen = rev, uint64(rev)
		return v
	}
	f := &fakeViews{v: view(1, "10.213.0.1")}
	var mu sync.Mutex
	var versions []uint64
	p := NewPublisher(f, nil, nil, func(s *discovery.Snapshot) { mu.Lock(); versions = append(versions, s.Version); mu.Unlock() })
	waits := 0 // how often Run held a change back
	p.after = func(d time.Duration) <-chan time.Time { mu.Lock(); waits++; mu.Unlock(); return time.After(d) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(versions) }
	for count() == 0 {
		time.Sleep(time.Millisecond)
	}
	const burst = 30
	for i := range burst {
		f.set(view(int64(2+i), fmt.Sprintf("10.213.0.%d", 2+i)))
		time.Sleep(time.Millisecond)
	}
	last := uint64(1 + burst)
	for p.Latest().Version != last {
		time.Sleep(time.Millisecond)
	}
	if n := count() - 1; n >= burst/2 {
		t.Fatalf("%d changes a millisecond apart made %d publishes", burst, n)
	}
	// Quiet, then one change: published without holding it back.
	time.Sleep(2 * MinPublishInterval)
	mu.Lock()
	before, waitsBefore := len(versions), waits
	mu.Unlock()
	f.set(view(int64(100), "10.213.0.99"))
	for count() == before {
		time.Sleep(time.Millisecond)
	}
	if got := p.Latest(); got.Version != 100 {
		t.Fatalf("latest %d, want 100", got.Version)
	}
	mu.Lock()
	defer mu.Unlock()
	if waitsBefore == 0 || waits != waitsBefore {
		t.Fatalf("held back %d times in the burst (want some) and %d times after a quiet spell (want none)", waitsBefore, waits-waitsBefore)
	}
}

// stateFromView turns a cache view into the input of discovery.Build, the
// whole-state build the publisher's per-service one must equal.
func stateFromView(v *store.View) discovery.State {
	st := discovery.State{Version: uint64(v.Revision), Services: v.Services, Statuses: v.Statuses,
		DownNodes: discovery.DownNodesOf(v.Nodes, v.LiveNodes, nil), Rollouts: map[string]api.Rollout{}}
	for k, r := range v.Rollouts {
		st.Rollouts[k] = r.Rollout
	}
	st.Instances = make([]api.Instance, len(v.Instances))
	for i, vi := range v.Instances {
		st.Instances[i] = vi.Instance
	}
	return st
}

// A follower's version is a delta base only when the publisher has it;
// any other (another replica's, made up, too old) is 0, the whole
// snapshot: the API server files the encoded messages it sends under this
// base, so a node naming versions at random shares the one whole message
// instead of having the snapshot encoded once for each.
func TestDeltaBaseIsAKnownVersionOrZero(t *testing.T) {
	p := NewPublisher(nil, nil, nil)
	publish := func(rev int64, image string) {
		v := testView(&store.View{Nodes: []api.Node{{Name: "a", State: api.NodeReady}},
			Services: []api.Service{{Metadata: api.ObjectMeta{Name: "web", Namespace: "default"}, Spec: api.ServiceSpec{Image: image, Ports: []api.Port{{Name: "http", Port: int32(rev)}}}, Status: api.ServiceStatus{Revision: 1}}}})
		v.Revision, v.Gen = rev, uint64(rev)
		p.publish(v)
	}
	if p.DeltaBase(5) != 0 {
		t.Fatal("a base before anything was published")
	}
	for rev := int64(10); rev < 10+keepDeltas+5; rev++ {
		publish(rev, "x")
	}
	latest := p.Latest().Version
	for _, c := range []struct{ have, want uint64 }{
		{latest, latest}, {latest - 1, latest - 1}, {latest - keepDeltas, latest - keepDeltas},
		{10, 0}, {latest + 1, 0}, {1 << 50, 0}, {0, 0},
	} {
		if got := p.DeltaBase(c.have); got != c.want {
			t.Errorf("DeltaBase(%d) = %d, want %d", c.have, got, c.want)
		}
		if _, _, _, whole := p.SinceEndpoints(c.have); whole != (c.want == 0 && c.have != latest) {
			t.Errorf("SinceEndpoints(%d) whole %v, DeltaBase %d", c.have, whole, c.want)
		}
	}
}

// When the only node of a service stops reporting, the publisher keeps its
// endpoint, marked, and says so in berth_discovery_panic; a Lost node's
// endpoint leaves; a deleted service's series goes with it.
func TestPanicRoutingGauge(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := NewPublisher(nil, nil, reg)
	replicas := int32(1)
	svc := api.Service{Metadata: api.ObjectMeta{Name: "web", Namespace: "default"}, Spec: api.ServiceSpec{Image: "x", Replicas: &replicas}, Status: api.ServiceStatus{Revision: 1}}
	in := api.Instance{ID: "w1", Namespace: "default", Service: "web", Revision: 1, Node: "a", Desired: api.DesiredRunning}
	view := func(gen uint64, live bool, state string, services ...api.Service) *store.View {
		v := testView(&store.View{Nodes: []api.Node{{Name: "a", State: state}}, Services: services,
			Instances: []store.VersionedInstance{{Instance: in}},
			Statuses:  map[string]api.InstanceStatus{"w1": {ID: "w1", Node: "a", Ready: true, IP: "10.213.0.9"}}})
		v.LiveNodes["a"] = live
		v.Revision, v.Gen, v.NodesGen = int64(10*gen), gen, gen
		return v
	}
	// series returns berth_discovery_panic's values by "ns/service".
	series := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "berth_discovery_panic" {
				continue
			}
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				out[labels["namespace"]+"/"+labels["service"]] = m.GetGauge().GetValue()
			}
		}
		return out
	}
	gauge := func() float64 { return series()["default/web"] }
	endpoint := func() (discovery.Endpoint, bool) {
		eps := p.Latest().Lookup("default", "web").Revisions[0].Endpoints
		if len(eps) != 1 {
			return discovery.Endpoint{}, false
		}
		return eps[0], true
	}
	p.publish(view(1, true, api.NodeReady, svc))
	// The series exists from the first build, at 0.
	if e, ok := endpoint(); !ok || e.Panic || len(series()) != 1 || gauge() != 0 {
		t.Fatalf("node live: endpoint %+v, panic series %v", e, series())
	}
	p.publish(view(2, false, api.NodeNotReady, svc))
	if e, ok := endpoint(); !ok || !e.Panic || !e.Serves() || gauge() != 1 {
		t.Fatalf("node silent: endpoint %+v (kept %v), gauge %v", e, ok, gauge())
	}
	if base, deltas, _, _ := p.SinceEndpoints(10); base == nil || len(deltas) != 1 || len(deltas[0].Endpoints) != 1 || !deltas[0].Endpoints[0].Endpoint.Panic {
		t.Fatalf("the delta feed does not carry the kept endpoint: %+v", deltas)
	}
	p.publish(view(3, false, api.NodeLost, svc))
	if e, ok := endpoint(); ok || gauge() != 0 {
		t.Fatalf("node lost: endpoint %+v kept, gauge %v", e, gauge())
	}
	p.publish(view(4, false, api.NodeLost))
	if n := len(series()); n != 0 {
		t.Fatalf("deleted service: %d panic series left", n)
	}
}
