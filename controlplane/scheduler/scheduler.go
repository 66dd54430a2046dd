// Package scheduler decides where instances run. It is a pure function
// over an immutable snapshot of nodes and placed instances: it reads a
// Snapshot and returns Placements, and never touches etcd. The controller
// that calls it commits placements with a compare-and-swap on the revision
// the snapshot was taken at.
//
// A decision runs every node through the filters (can it run this at
// all?) and ranks the survivors by the weighted sum of the scores (where
// should it run?). Filters and scores are small plugins wired in New.
package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/berth-dev/berth/api"
)

// NodeInfo is a node with what is already placed on it.
type NodeInfo struct {
	Node      api.Node
	Ready     bool
	Allocated api.Capacity
	// PerService counts instances per "<ns>/<service>" on the node.
	PerService map[string]int
	Count      int
}

// Free returns allocatable minus allocated.
func (n *NodeInfo) Free() api.Capacity {
	return api.Capacity{
		MilliCPU:    n.Node.Capacity.MilliCPU - n.Allocated.MilliCPU,
		MemoryBytes: n.Node.Capacity.MemoryBytes - n.Allocated.MemoryBytes,
	}
}

// Snapshot is the scheduler's view of the cluster. Schedule copies what
// it changes, so a Snapshot may be reused.
type Snapshot struct {
	Nodes []NodeInfo
	// VolumeNodes maps a volume ("<ns>/<name>") to the node holding its
	// data, or the node it is pinned to; absent or "" means unbound.
	VolumeNodes map[string]string
}

// NewSnapshot builds a snapshot from nodes, which of them are alive, and
// the instances already placed (stopped ones do not count).
func NewSnapshot(nodes []api.Node, live map[string]bool, placed []api.Instance) *Snapshot {
	s := &Snapshot{Nodes: make([]NodeInfo, len(nodes))}
	index := map[string]int{}
	for i, n := range nodes {
		s.Nodes[i] = NodeInfo{Node: n, Ready: live[n.Name], PerService: map[string]int{}}
		index[n.Name] = i
	}
	for _, in := range placed {
		i, ok := index[in.Node]
		if !ok || in.Desired == api.DesiredStopped {
			continue
		}
		add(&s.Nodes[i], &in)
	}
	return s
}

func add(n *NodeInfo, in *api.Instance) {
	addPod(n, newPod(in))
}

func addPod(n *NodeInfo, p *Pod) {
	n.Allocated.MilliCPU += p.Req.MilliCPU
	n.Allocated.MemoryBytes += p.Req.MemoryBytes
	n.PerService[p.Key]++
	n.Count++
}

// Pod is an instance being placed, with what the filters and scores need
// computed once per decision rather than once per node.
type Pod struct {
	*api.Instance
	Req api.Capacity
	Key string // "<ns>/<service>"
	// Volumes are the named volumes the instance mounts ("<ns>/<name>")
	// and VolumeNodes where each one's data is ("" while unbound).
	Volumes     []string
	VolumeNodes map[string]string
}

func newPod(in *api.Instance) *Pod {
	return &Pod{Instance: in, Req: in.Template.Resources.Request(), Key: in.ServiceKey(),
		Volumes: in.Template.VolumeNames(in.Namespace, in.Ordinal)}
}

// Filter says whether an instance may run on a node, and if not, why
// (a short reason counted in "0/5 nodes: 3 insufficient memory").
type Filter interface {
	Name() string
	Filter(p *Pod, n *NodeInfo) (reason string, ok bool)
}

// Score ranks a feasible node for an instance in [0, 1]; higher is better.
type Score interface {
	Name() string
	Score(p *Pod, n *NodeInfo) float64
}

// FilterFunc adapts a function to Filter.
type FilterFunc struct {
	N string
	F func(p *Pod, n *NodeInfo) (string, bool)
}

func (f FilterFunc) Name() string { return f.N }
func (f FilterFunc) Filter(p *Pod, n *NodeInfo) (string, bool) {
	return f.F(p, n)
}

type weighted struct {
	score  Score
	weight float64
}

// Scheduler places instances.
type Scheduler struct {
	filters []Filter
	scores  []weighted
}

// New returns the default scheduler. Order matters for the filters only in
// cost: cheap checks first.
//
//   - NodeReady: a node whose heartbeat lapsed gets nothing new.
//   - Schedulable: a cordoned node gets nothing new.
//   - Selector: the node carries every label of the nodeSelector.
//   - VolumeAffinity: a volume's data lives on one node; its consumers
//     run there (and wait, with this reason, while that node is down).
//   - Resources: requests must fit in allocatable minus allocated.
//
// Scores, weighted:
//   - LeastAllocated (1): prefer the node with the most free CPU and
//     memory, so load evens out.
//   - Spread (2): prefer the node with the fewest replicas of the same
//     service, so one node's loss takes as few replicas as possible.
func New() *Scheduler {
	return &Scheduler{
		filters: []Filter{NodeReady, Schedulable, Selector, VolumeAffinity, Resources},
		scores: []weighted{
			{LeastAllocated{}, 1},
			{Spread{}, 2},
		},
	}
}

// NodeReady rejects nodes that are not alive.
var NodeReady = FilterFunc{N: "NodeReady", F: func(_ *Pod, n *NodeInfo) (string, bool) {
	if !n.Ready {
		return "not ready", false
	}
	return "", true
}}

// Schedulable rejects cordoned nodes.
var Schedulable = FilterFunc{N: "Schedulable", F: func(_ *Pod, n *NodeInfo) (string, bool) {
	if n.Node.Cordoned {
		return "cordoned", false
	}
	return "", true
}}

// Selector rejects nodes without the labels the instance asks for.
var Selector = FilterFunc{N: "Selector", F: func(p *Pod, n *NodeInfo) (string, bool) {
	for k, want := range p.Template.NodeSelector {
		if got, ok := n.Node.Labels[k]; !ok || got != want {
			return "node selector mismatch", false
		}
	}
	return "", true
}}

// VolumeAffinity rejects nodes other than the one holding a volume the
// instance mounts.
var VolumeAffinity = FilterFunc{N: "VolumeAffinity", F: func(p *Pod, n *NodeInfo) (string, bool) {
	for _, v := range p.Volumes {
		if at := p.VolumeNodes[v]; at != "" && at != n.Node.Name {
			return "volume " + v + " is on node " + at, false
		}
	}
	return "", true
}}

// Resources rejects nodes without room for the instance's requests.
var Resources = FilterFunc{N: "Resources", F: func(p *Pod, n *NodeInfo) (string, bool) {
	req := p.Req
	free := n.Free()
	if req.MilliCPU > free.MilliCPU {
		return "insufficient cpu", false
	}
	if req.MemoryBytes > free.MemoryBytes {
		return "insufficient memory", false
	}
	return "", true
}}

// LeastAllocated scores the fraction of the node left free after placing.
type LeastAllocated struct{}

func (LeastAllocated) Name() string { return "LeastAllocated" }
func (LeastAllocated) Score(p *Pod, n *NodeInfo) float64 {
	req := p.Req
	frac := func(free, req, total int64) float64 {
		if total <= 0 {
			return 0
		}
		return float64(free-req) / float64(total)
	}
	free := n.Free()
	cpu := frac(free.MilliCPU, req.MilliCPU, n.Node.Capacity.MilliCPU)
	mem := frac(free.MemoryBytes, req.MemoryBytes, n.Node.Capacity.MemoryBytes)
	return (cpu + mem) / 2
}

// Spread scores nodes with fewer replicas of the same service higher.
type Spread struct{}

func (Spread) Name() string { return "Spread" }
func (Spread) Score(p *Pod, n *NodeInfo) float64 {
	return 1 / float64(1+n.PerService[p.Key])
}

// Placement is a decision: instance -> node.
type Placement struct {
	InstanceID string
	Node       string
	// Bind lists the volumes this placement binds to Node (they had no
	// node yet); the caller records the binding with the placement.
	Bind []string
}

// Unschedulable explains why an instance could not be placed.
type Unschedulable struct {
	InstanceID string
	Nodes      int
	// Reasons counts nodes per rejection reason.
	Reasons map[string]int
}

// String reads like "0/5 nodes: 3 insufficient memory, 2 not ready".
func (u Unschedulable) String() string {
	if u.Nodes == 0 {
		return "0/0 nodes: no nodes have joined"
	}
	keys := make([]string, 0, len(u.Reasons))
	for k := range u.Reasons {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if u.Reasons[keys[i]] != u.Reasons[keys[j]] {
			return u.Reasons[keys[i]] > u.Reasons[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", u.Reasons[k], k)
	}
	return fmt.Sprintf("0/%d nodes available: %s", u.Nodes, strings.Join(parts, ", "))
}

// numNodesToScore is how many feasible nodes one decision scores. Like
// kube-scheduler's percentageOfNodesToScore: every node in small clusters,
// a shrinking share in large ones (50% at 100 nodes, 10% at 5,000), never
// fewer than 100. Filters still explain failures over every node.
func numNodesToScore(total int) int {
	if total <= 100 {
		return total
	}
	pct := 50 - total/125
	if pct < 5 {
		pct = 5
	}
	n := total * pct / 100
	if n < 100 {
		n = 100
	}
	return n
}

// Schedule places pending instances one by one, each decision seeing the
// ones before it. Each decision walks the nodes from where the previous
// one stopped (round robin over the cluster) until it has found
// numNodesToScore feasible nodes, and picks the best of those; ties go to
// the node whose name sorts first. The result is deterministic for a
// given snapshot and pending list.
func (s *Scheduler) Schedule(snap *Snapshot, pending []api.Instance) ([]Placement, []Unschedulable) {
	nodes := make([]NodeInfo, len(snap.Nodes))
	for i, n := range snap.Nodes {
		n.PerService = make(map[string]int, len(snap.Nodes[i].PerService))
		for k, v := range snap.Nodes[i].PerService {
			n.PerService[k] = v
		}
		nodes[i] = n
	}
	want := numNodesToScore(len(nodes))
	next := 0
	volNodes := make(map[string]string, len(snap.VolumeNodes))
	for k, v := range snap.VolumeNodes {
		volNodes[k] = v
	}
	var placements []Placement
	var failed []Unschedulable
	for i := range pending {
		p := newPod(&pending[i])
		p.VolumeNodes = volNodes
		best, bestScore := -1, -1.0
		var reasons map[string]int
		found, k := 0, 0
		for ; k < len(nodes) && found < want; k++ {
			j := (next + k) % len(nodes)
			n := &nodes[j]
			ok := true
			for _, f := range s.filters {
				if reason, pass := f.Filter(p, n); !pass {
					if reasons == nil {
						reasons = map[string]int{}
					}
					reasons[reason]++
					ok = false
					break
				}
			}
			if !ok {
				continue
			}
			found++
			total := 0.0
			for _, w := range s.scores {
				total += w.weight * w.score.Score(p, n)
			}
			if total > bestScore || (total == bestScore && n.Node.Name < nodes[best].Node.Name) {
				best, bestScore = j, total
			}
		}
		if len(nodes) > 0 {
			next = (next + k) % len(nodes)
		}
		if best < 0 {
			failed = append(failed, Unschedulable{InstanceID: p.ID, Nodes: len(nodes), Reasons: reasons})
			continue
		}
		addPod(&nodes[best], p)
		pl := Placement{InstanceID: p.ID, Node: nodes[best].Node.Name}
		for _, v := range p.Volumes {
			if volNodes[v] == "" {
				volNodes[v] = pl.Node
				pl.Bind = append(pl.Bind, v)
			}
		}
		placements = append(placements, pl)
	}
	return placements, failed
}
