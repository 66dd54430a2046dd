package scheduler

import (
	"fmt"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

// clusterOf builds the benchmark's simulated cluster: nodes with 16 CPUs
// and 64 GiB, and replicas of services asking 100m/128Mi.
func clusterOf(nodes, services, replicas int) (*Snapshot, []api.Instance) {
	ns := make([]api.Node, nodes)
	live := make(map[string]bool, nodes)
	for i := range ns {
		ns[i] = api.Node{Name: fmt.Sprintf("node-%05d", i), Capacity: api.Capacity{MilliCPU: 16000, MemoryBytes: 64 << 30}}
		live[ns[i].Name] = true
	}
	pending := make([]api.Instance, replicas)
	for i := range pending {
		pending[i] = api.Instance{ID: fmt.Sprintf("i-%06d", i), Namespace: "default", Service: fmt.Sprintf("svc-%04d", i%services),
			Desired: api.DesiredRunning, Template: api.ServiceSpec{Resources: api.Resources{CPU: "100m", Memory: "128Mi"}}}
	}
	return NewSnapshot(ns, live, nil), pending
}

// BenchmarkSchedule5000Nodes is `make bench-scheduler`: 5,000 simulated
// nodes, 1,000 services, 50,000 replicas placed in batches of 1,000 (as the
// controller does per pass). It reports placements/s, the p99 time of one
// batch divided by its size, and the heap in use.
func BenchmarkSchedule5000Nodes(b *testing.B) {
	const nodes, services, replicas, batch = 5000, 1000, 50000, 1000
	for iter := 0; iter < b.N; iter++ {
		b.StopTimer()
		snap, pending := clusterOf(nodes, services, replicas)
		s := New()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		start := time.Now()
		var perPlacement []time.Duration
		placed := 0
		for off := 0; off < replicas; off += batch {
			t0 := time.Now()
			ps, failed := s.Schedule(snap, pending[off:off+batch])
			d := time.Since(t0)
			if len(failed) > 0 {
				b.Fatalf("unschedulable: %v", failed[0])
			}
			for range ps {
				perPlacement = append(perPlacement, d/time.Duration(len(ps)))
			}
			// Commit the batch into the snapshot, as the next pass sees it.
			byID := map[string]string{}
			for _, p := range ps {
				byID[p.InstanceID] = p.Node
			}
			idx := map[string]int{}
			for i := range snap.Nodes {
				idx[snap.Nodes[i].Node.Name] = i
			}
			for i := off; i < off+batch; i++ {
				in := pending[i]
				in.Node = byID[in.ID]
				add(&snap.Nodes[idx[in.Node]], &in)
			}
			placed += len(ps)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		sort.Slice(perPlacement, func(i, j int) bool { return perPlacement[i] < perPlacement[j] })
		p99 := perPlacement[len(perPlacement)*99/100]
		b.ReportMetric(float64(placed)/elapsed.Seconds(), "placements/s")
		b.ReportMetric(float64(p99.Microseconds()), "p99-us/placement")
		b.ReportMetric(float64(after.HeapInuse)/(1<<20), "heap-MiB")
		// Spread check: one service's 50 replicas over many nodes.
		perNode := map[string]int{}
		for _, n := range snap.Nodes {
			if c := n.PerService["default/svc-0000"]; c > 0 {
				perNode[n.Node.Name] += c
			}
		}
		maxOnOne := 0
		for _, c := range perNode {
			maxOnOne = max(maxOnOne, c)
		}
		b.ReportMetric(float64(maxOnOne), "max-replicas-of-a-service-per-node")
		b.StartTimer()
	}
}
