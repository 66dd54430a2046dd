package publish

import (
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
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
