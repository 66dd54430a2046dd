package store

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

// cacheWith fills a cache as a watch would, without etcd: services
// services with perService instances each (and their statuses), nodes
// nodes with heartbeats.
func cacheWith(services, perService, nodes int) *Cache {
	c := NewCache(nil, nil)
	rev := int64(1)
	put := func(key string, v any) {
		rev++
		c.put(key, []byte(mustJSON(v)), rev)
	}
	for n := range nodes {
		name := fmt.Sprintf("node-%04d", n)
		put(nodeKey(name), api.Node{Name: name, Address: "10.0.0.1", PodCIDR: "10.213.0.0/24", Labels: map[string]string{"zone": "a"}})
		put(leaseKey(name), LeaseValue{At: time.Unix(1_700_000_000, 0), DNSVersion: 7})
	}
	for s := range services {
		svc := api.Service{Metadata: api.ObjectMeta{Name: fmt.Sprintf("svc-%04d", s), Namespace: "default"},
			Spec:   api.ServiceSpec{Image: "berth.local/hello:v1", Env: map[string]string{"A": "1", "B": "2"}, Ports: []api.Port{{Name: "http", Port: 8080, Protocol: "http"}}},
			Status: api.ServiceStatus{Revision: 1}}
		put(serviceKey("default", svc.Metadata.Name), svc)
		for i := range perService {
			id := fmt.Sprintf("%s-%03d", svc.Metadata.Name, i)
			put(InstancesPrefix+id, api.Instance{ID: id, Namespace: "default", Service: svc.Metadata.Name, Revision: 1, Ordinal: int32(i),
				Template: svc.Spec, Node: fmt.Sprintf("node-%04d", (s+i)%nodes), Desired: api.DesiredRunning})
			put(StatusPrefix+id, api.InstanceStatus{ID: id, Node: fmt.Sprintf("node-%04d", (s+i)%nodes), Phase: "Running", Ready: true, IP: "10.213.0.2"})
		}
	}
	c.rev = rev
	return c
}

// BenchmarkCacheViewAfterHeartbeat: the View rebuilt after one node's
// heartbeat, at 1,000 services x 10 instances on 100 nodes (heartbeats
// arrive 2/s per node, so this runs 200 times a second at that size).
func BenchmarkCacheViewAfterHeartbeat(b *testing.B) {
	c := cacheWith(1000, 10, 100)
	c.View()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.put(leaseKey("node-0001"), []byte(mustJSON(LeaseValue{At: time.Unix(int64(1_700_000_000+i), 0)})), c.rev+1)
		c.rev++
		if v := c.View(); len(v.Instances) != 10000 {
			b.Fatal(len(v.Instances))
		}
	}
}

// The view is the same whether built at once or after changes one by one,
// and a change is seen in the next view.
func TestCacheViewFollowsChanges(t *testing.T) {
	c := cacheWith(3, 2, 2)
	v := c.View()
	if len(v.Services) != 3 || len(v.Instances) != 6 || len(v.Statuses) != 6 || len(v.Nodes) != 2 || !v.LiveNodes["node-0000"] || v.DNSVersions["node-0001"] != 7 {
		t.Fatalf("view: %d services, %d instances, %d statuses, %d nodes, live %v, dns %v", len(v.Services), len(v.Instances), len(v.Statuses), len(v.Nodes), v.LiveNodes, v.DNSVersions)
	}
	in := v.Instances[0].Instance
	in.Desired = api.DesiredStopped
	c.put(InstancesPrefix+in.ID, []byte(mustJSON(in)), c.rev+1)
	c.rev++
	c.delete(StatusPrefix + in.ID)
	c.delete(leaseKey("node-0000"))
	v2 := c.View()
	if v2 == v {
		t.Fatal("the view was not rebuilt after a change")
	}
	if got := v2.Instances[0]; got.Instance.Desired != api.DesiredStopped || got.ModRevision != c.rev {
		t.Fatalf("changed instance: %+v", got)
	}
	if _, ok := v2.Statuses[in.ID]; ok || v2.LiveNodes["node-0000"] || len(v2.Statuses) != 5 {
		t.Fatalf("deleted keys still in the view: status %v live %v", v2.Statuses[in.ID], v2.LiveNodes)
	}
	if v.Instances[0].Instance.Desired != api.DesiredRunning {
		t.Fatal("an earlier view changed")
	}
	// A heartbeat alone: the instances are shared with the view before,
	// the node's liveness is new.
	c.put(leaseKey("node-0000"), []byte(mustJSON(LeaseValue{At: time.Unix(1_700_000_100, 0), DNSVersion: 9})), c.rev+1)
	c.rev++
	v3 := c.View()
	if &v3.Instances[0] != &v2.Instances[0] || !v3.LiveNodes["node-0000"] || v3.DNSVersions["node-0000"] != 9 || !v3.Nodes[0].Ready || v3.Nodes[0].DNSVersion != 9 {
		t.Fatalf("after a heartbeat: shared %v, live %v, dns %v, node %+v", &v3.Instances[0] == &v2.Instances[0], v3.LiveNodes, v3.DNSVersions, v3.Nodes[0])
	}
	// The indexes agree with a scan, on a rebuilt view and a shared one.
	for _, view := range []*View{v2, v3} {
		hand := &View{Instances: view.Instances}
		for _, key := range []string{"default/svc-0000", "default/svc-0002", "default/none"} {
			if got, want := view.ServiceInstances(key), hand.ServiceInstances(key); !slices.EqualFunc(got, want, func(a, b VersionedInstance) bool { return a.Instance.ID == b.Instance.ID }) {
				t.Errorf("ServiceInstances(%s) = %d instances, a scan finds %d", key, len(got), len(want))
			}
		}
		for _, node := range []string{"node-0000", "node-0001"} {
			if got, want := view.NodeInstances(node), hand.NodeInstances(node); len(got) != len(want) || len(got) == 0 {
				t.Errorf("NodeInstances(%s) = %d, a scan finds %d", node, len(got), len(want))
			}
		}
		if got := view.InstanceServices(); !slices.Equal(got, hand.InstanceServices()) || len(got) != 3 {
			t.Errorf("InstanceServices = %v", got)
		}
	}
	// A status change after that is seen (the shared copy is not reused).
	c.put(StatusPrefix+in.ID, []byte(mustJSON(api.InstanceStatus{ID: in.ID, Phase: "Stopped"})), c.rev+1)
	c.rev++
	if v4 := c.View(); v4.Statuses[in.ID].Phase != "Stopped" || len(v4.Statuses) != 6 {
		t.Fatalf("status after a heartbeat-only view: %+v (%d)", v4.Statuses[in.ID], len(v4.Statuses))
	}
	// A malformed value is left out, not fatal.
	c.put(serviceKey("default", "bad"), []byte("{not json"), c.rev+1)
	if v3 := c.View(); len(v3.Services) != 3 {
		t.Fatalf("malformed service: %d services", len(v3.Services))
	}
}

// BenchmarkCacheViewAfterStatus: the View rebuilt after one instance's
// status changed, at the same size (every object decoded once; the
// instances are collected and sorted again).
func BenchmarkCacheViewAfterStatus(b *testing.B) {
	c := cacheWith(1000, 10, 100)
	c.View()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.put(StatusPrefix+"svc-0001-001", []byte(mustJSON(api.InstanceStatus{ID: "svc-0001-001", Ready: i%2 == 0})), c.rev+1)
		c.rev++
		if v := c.View(); len(v.Instances) != 10000 {
			b.Fatal(len(v.Instances))
		}
	}
}

// A node's assignment stream is woken when an instance placed on it (or
// moved off it) changes, and not by changes elsewhere: at 1,000 nodes every
// stream woke on every change of the cluster.
func TestSubscribeNodeWakesOnlyThatNode(t *testing.T) {
	c := cacheWith(2, 2, 3) // instances on node-0000 .. node-0002
	c.notify()              // started
	woken := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	ch0, stop0 := c.SubscribeNode("node-0000")
	defer stop0()
	ch1, stop1 := c.SubscribeNode("node-0001")
	defer stop1()
	ch2, stop2 := c.SubscribeNode("node-0002")
	defer stop2()
	if !woken(ch0) || !woken(ch1) || !woken(ch2) {
		t.Fatal("a subscription to a started cache is not woken at once")
	}
	// Move an instance from node-0000 to node-0001: both woken, not 2.
	var moved api.Instance
	for _, vi := range c.View().Instances {
		if vi.Instance.Node == "node-0000" {
			moved = vi.Instance
			break
		}
	}
	moved.Node = "node-0001"
	c.mu.Lock()
	c.put(InstancesPrefix+moved.ID, []byte(mustJSON(moved)), c.rev+1)
	c.put(leaseKey("node-0002"), []byte(mustJSON(LeaseValue{At: time.Unix(1_700_000_100, 0)})), c.rev+2) // a heartbeat
	c.put(StatusPrefix+moved.ID, []byte(mustJSON(api.InstanceStatus{ID: moved.ID, Node: "node-0001"})), c.rev+3)
	c.rev += 3
	c.mu.Unlock()
	c.notify()
	if !woken(ch0) || !woken(ch1) {
		t.Fatal("the nodes an instance moved between were not woken")
	}
	if woken(ch2) {
		t.Fatal("node-0002 woken by changes that assign it nothing")
	}
	// Deleting an instance wakes its node.
	c.mu.Lock()
	c.delete(InstancesPrefix + moved.ID)
	c.mu.Unlock()
	c.notify()
	if !woken(ch1) || woken(ch0) || woken(ch2) {
		t.Fatal("deleting an instance of node-0001 woke the wrong nodes")
	}
}

// A view patched from the last one (instances and statuses changed in
// place) is exactly the view built from every key, indexes included,
// over random changes: placements, status reports, adds and deletes.
func TestPatchedViewsEqualFullViews(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	c := cacheWith(5, 20, 4)
	rev := c.rev
	put := func(key string, v any) {
		rev++
		c.put(key, []byte(mustJSON(v)), rev)
	}
	for step := range 400 {
		v := c.View()
		ids := make([]string, 0, len(v.Instances))
		for _, vi := range v.Instances {
			ids = append(ids, vi.Instance.ID)
		}
		for range 1 + rng.IntN(4) {
			id := ids[rng.IntN(len(ids))]
			vi, _ := v.Instance(id)
			in := vi.Instance
			switch rng.IntN(10) {
			case 0, 1, 2: // placed elsewhere
				in.Node = fmt.Sprintf("node-%04d", rng.IntN(4))
				put(InstancesPrefix+id, in)
			case 3, 4: // draining
				in.Draining = !in.Draining
				put(InstancesPrefix+id, in)
			case 5, 6, 7: // a status report
				put(StatusPrefix+id, api.InstanceStatus{ID: id, Node: in.Node, Ready: rng.IntN(2) == 0, IP: fmt.Sprintf("10.213.0.%d", rng.IntN(250))})
			case 8: // a new instance
				in.ID = fmt.Sprintf("new-%d", step)
				put(InstancesPrefix+in.ID, in)
			case 9: // deleted, with its status
				c.delete(InstancesPrefix + id)
				c.delete(StatusPrefix + id)
			}
		}
		got := c.View()
		fresh := NewCache(nil, nil)
		fresh.kvs, fresh.instances, fresh.statuses, fresh.rev, fresh.gen = c.kvs, c.instances, c.statuses, c.rev, c.gen
		want := fresh.View()
		if !reflect.DeepEqual(got.Instances, want.Instances) || !reflect.DeepEqual(got.Statuses, want.Statuses) {
			t.Fatalf("step %d: patched view differs from the full one", step)
		}
		for _, vi := range want.Instances {
			in := vi.Instance
			if g, _ := got.Instance(in.ID); !reflect.DeepEqual(g, vi) {
				t.Fatalf("step %d: Instance(%s) = %+v, want %+v", step, in.ID, g, vi)
			}
			if !reflect.DeepEqual(got.NodeInstances(in.Node), want.NodeInstances(in.Node)) {
				t.Fatalf("step %d: NodeInstances(%s) differ", step, in.Node)
			}
			if !reflect.DeepEqual(got.ServiceInstances(in.ServiceKey()), want.ServiceInstances(in.ServiceKey())) {
				t.Fatalf("step %d: ServiceInstances(%s) differ", step, in.ServiceKey())
			}
		}
	}
}

// A service's generation moves when it, one of its instances or their
// statuses change, and not for other services' changes or heartbeats:
// the publisher rebuilds only the services whose generation moved.
func TestServiceGensMoveWithTheirInputs(t *testing.T) {
	c := cacheWith(3, 2, 2)
	before := c.View().ServiceGens
	moved := func(what string, want ...string) {
		t.Helper()
		after := c.View().ServiceGens
		for _, key := range []string{"default/svc-0000", "default/svc-0001", "default/svc-0002"} {
			if (after[key] != before[key]) != slices.Contains(want, key) {
				t.Fatalf("%s: %s generation %d -> %d", what, key, before[key], after[key])
			}
		}
		before = after
	}
	rolloutsGen := c.RolloutsGen()
	c.rev++
	c.put(StatusPrefix+"svc-0001-000", []byte(mustJSON(api.InstanceStatus{ID: "svc-0001-000", Node: "node-0001", Ready: false})), c.rev)
	moved("a status of svc-0001", "default/svc-0001")
	if c.RolloutsGen() != rolloutsGen {
		t.Fatal("a status report moved RolloutsGen: the rollout recorder builds a view for it")
	}
	nodesGen := c.View().NodesGen
	c.rev++
	c.put(leaseKey("node-0000"), []byte(mustJSON(LeaseValue{At: time.Unix(1_700_000_500, 0), DNSVersion: 7})), c.rev)
	moved("a heartbeat")
	if got := c.View().NodesGen; got != nodesGen {
		t.Fatalf("a lease rewrite moved NodesGen %d -> %d: every service is rebuilt on the next publish", nodesGen, got)
	}
	c.delete(leaseKey("node-0000"))
	if got := c.View().NodesGen; got == nodesGen {
		t.Fatal("a lease that went (the node stopped reporting) left NodesGen as it was")
	}
	c.rev++
	c.put(leaseKey("node-0000"), []byte(mustJSON(LeaseValue{At: time.Unix(1_700_000_600, 0)})), c.rev)
	before = c.View().ServiceGens
	c.delete(InstancesPrefix + "svc-0002-001")
	moved("an instance of svc-0002 deleted", "default/svc-0002")
	c.rev++
	c.put(RolloutsPrefix+"default/svc-0000", []byte(mustJSON(api.Rollout{Namespace: "default", Service: "svc-0000", Revision: 2})), c.rev)
	moved("a rollout of svc-0000", "default/svc-0000")
	if c.RolloutsGen() == rolloutsGen {
		t.Fatal("a rollout record left RolloutsGen as it was")
	}
}
