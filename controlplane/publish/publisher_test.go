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
