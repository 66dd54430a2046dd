package scheduler

import (
	"fmt"
	"testing"

	"github.com/berth-dev/berth/api"
)

func node(name string, cpu, memMi int64) api.Node {
	return api.Node{Name: name, Capacity: api.Capacity{MilliCPU: cpu, MemoryBytes: memMi << 20}}
}

func inst(id, svc, cpu, mem string) api.Instance {
	return api.Instance{ID: id, Namespace: "default", Service: svc, Desired: api.DesiredRunning,
		Template: api.ServiceSpec{Resources: api.Resources{CPU: cpu, Memory: mem}}}
}

func live(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

func TestSpreadsReplicasAcrossNodes(t *testing.T) {
	nodes := []api.Node{node("a", 4000, 4096), node("b", 4000, 4096), node("c", 4000, 4096)}
	snap := NewSnapshot(nodes, live("a", "b", "c"), nil)
	var pending []api.Instance
	for i := 0; i < 6; i++ {
		pending = append(pending, inst(fmt.Sprintf("web-%d", i), "web", "100m", "64Mi"))
	}
	placements, failed := New().Schedule(snap, pending)
	if len(failed) != 0 {
		t.Fatalf("unexpected failures: %v", failed)
	}
	count := map[string]int{}
	for _, p := range placements {
		count[p.Node]++
	}
	for _, n := range []string{"a", "b", "c"} {
		if count[n] != 2 {
			t.Errorf("node %s got %d replicas, want 2 (all: %v)", n, count[n], count)
		}
	}
}

func TestPrefersLeastLoadedNode(t *testing.T) {
	nodes := []api.Node{node("a", 4000, 4096), node("b", 4000, 4096)}
	placed := []api.Instance{inst("big", "other", "3000m", "3Gi")}
	placed[0].Node = "a"
	snap := NewSnapshot(nodes, live("a", "b"), placed)
	placements, _ := New().Schedule(snap, []api.Instance{inst("x", "web", "100m", "64Mi")})
	if len(placements) != 1 || placements[0].Node != "b" {
		t.Fatalf("placements = %v, want x on b", placements)
	}
}

func TestUnschedulableExplainsWhy(t *testing.T) {
	nodes := []api.Node{node("a", 1000, 128), node("b", 1000, 128), node("c", 8000, 8192)}
	snap := NewSnapshot(nodes, live("a", "b"), nil)
	placements, failed := New().Schedule(snap, []api.Instance{inst("x", "web", "500m", "1Gi")})
	if len(placements) != 0 || len(failed) != 1 {
		t.Fatalf("placements=%v failed=%v", placements, failed)
	}
	want := "0/3 nodes available: 2 insufficient memory, 1 not ready"
	if got := failed[0].String(); got != want {
		t.Fatalf("reason = %q, want %q", got, want)
	}
}

func TestBatchSeesEarlierPlacements(t *testing.T) {
	// Room for exactly two on one node: the third must fail, not overcommit.
	nodes := []api.Node{node("a", 1000, 1024)}
	snap := NewSnapshot(nodes, live("a"), nil)
	pending := []api.Instance{inst("1", "w", "400m", "64Mi"), inst("2", "w", "400m", "64Mi"), inst("3", "w", "400m", "64Mi")}
	placements, failed := New().Schedule(snap, pending)
	if len(placements) != 2 || len(failed) != 1 || failed[0].InstanceID != "3" {
		t.Fatalf("placements=%v failed=%v", placements, failed)
	}
	if got := failed[0].String(); got != "0/1 nodes available: 1 insufficient cpu" {
		t.Fatalf("reason = %q", got)
	}
	// The snapshot itself is untouched.
	if snap.Nodes[0].Count != 0 {
		t.Fatalf("Schedule modified its input snapshot")
	}
}

func TestNoNodes(t *testing.T) {
	_, failed := New().Schedule(&Snapshot{}, []api.Instance{inst("1", "w", "", "")})
	if len(failed) != 1 || failed[0].String() != "0/0 nodes: no nodes have joined" {
		t.Fatalf("failed = %v", failed)
	}
}

func TestStoppedInstancesDoNotCount(t *testing.T) {
	nodes := []api.Node{node("a", 1000, 1024)}
	old := inst("old", "w", "900m", "64Mi")
	old.Node, old.Desired = "a", api.DesiredStopped
	snap := NewSnapshot(nodes, live("a"), []api.Instance{old})
	placements, failed := New().Schedule(snap, []api.Instance{inst("new", "w", "900m", "64Mi")})
	if len(placements) != 1 || len(failed) != 0 {
		t.Fatalf("placements=%v failed=%v", placements, failed)
	}
}

func TestVolumeAffinity(t *testing.T) {
	nodes := []api.Node{node("a", 4000, 4096), node("b", 4000, 4096), node("c", 4000, 4096)}
	snap := NewSnapshot(nodes, live("a", "c"), nil)
	snap.VolumeNodes = map[string]string{"default/data": "b"}
	shared := inst("x", "db", "100m", "64Mi")
	shared.Template.Volumes = []api.VolumeMount{{Name: "data", MountPath: "/data"}}
	_, failed := New().Schedule(snap, []api.Instance{shared})
	if len(failed) != 1 || failed[0].String() != "0/3 nodes available: 2 volume default/data is on node b, 1 not ready" {
		t.Fatalf("failed = %v", failed)
	}
	// Unbound volumes bind to the first consumer's node; the second follows.
	snap.VolumeNodes = nil
	a, b := inst("1", "db", "100m", "64Mi"), inst("2", "db", "100m", "64Mi")
	a.Template.Volumes, b.Template.Volumes = shared.Template.Volumes, shared.Template.Volumes
	ps, failed := New().Schedule(snap, []api.Instance{a, b})
	if len(failed) != 0 || len(ps) != 2 || ps[0].Node != ps[1].Node || len(ps[0].Bind) != 1 || len(ps[1].Bind) != 0 {
		t.Fatalf("placements = %+v failed = %v", ps, failed)
	}
	// Per-replica volumes: each ordinal its own volume, spread apart.
	var reps []api.Instance
	for i := int32(0); i < 2; i++ {
		r := inst(fmt.Sprintf("r%d", i), "st", "100m", "64Mi")
		r.Ordinal = i
		r.Template.VolumeTemplates = []api.VolumeTemplate{{Name: "wal", MountPath: "/wal"}}
		reps = append(reps, r)
	}
	ps, _ = New().Schedule(snap, reps)
	if len(ps) != 2 || ps[0].Node == ps[1].Node || ps[0].Bind[0] != "default/wal-0" || ps[1].Bind[0] != "default/wal-1" {
		t.Fatalf("per-replica placements = %+v", ps)
	}
}
