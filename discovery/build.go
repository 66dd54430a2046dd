package discovery

import (
	"sort"
	"strings"

	"github.com/berth-dev/berth/api"
)

// State is the stored state a snapshot is built from. Build only reads it.
type State struct {
	// Version is the etcd revision the state was read at.
	Version   uint64
	Services  []api.Service
	Instances []api.Instance
	Statuses  map[string]api.InstanceStatus // by instance id
	// DownNodes are the nodes whose endpoints must not receive traffic,
	// and why (DownNodesOf). Nil means all nodes are fine.
	DownNodes map[string]NodeDown
	// Rollouts by service "<ns>/<name>": an active one splits traffic
	// between its canary and stable revisions by its weight.
	Rollouts map[string]api.Rollout
}

// Build turns services x instances x statuses into a snapshot. It is a
// pure function: the same state always gives the same snapshot.
//
// Weights: until rollouts set them explicitly, the service's current
// revision takes all traffic once it has a ready endpoint; before that,
// traffic stays on the older revisions that still have ready endpoints,
// split evenly, so replacing a revision never leaves a service without
// endpoints it could have had.
func Build(st State) *Snapshot {
	byService := make(map[string][]api.Instance)
	for _, in := range st.Instances {
		byService[in.ServiceKey()] = append(byService[in.ServiceKey()], in)
	}
	snap := &Snapshot{Version: st.Version, Services: make([]Service, 0, len(st.Services))}
	for i := range st.Services {
		svc := &st.Services[i]
		var ro *api.Rollout
		if r, ok := st.Rollouts[svc.Key()]; ok {
			ro = &r
		}
		snap.Services = append(snap.Services, BuildService(svc, byService[svc.Key()], st.Statuses, st.DownNodes, ro))
	}
	SortServices(snap.Services)
	return snap
}

// SortServices sorts services as a snapshot holds them: by namespace,
// then name.
func SortServices(svcs []Service) {
	sort.Slice(svcs, func(a, b int) bool {
		x, y := svcs[a], svcs[b]
		if x.Namespace != y.Namespace {
			return x.Namespace < y.Namespace
		}
		return x.Name < y.Name
	})
}

// NodeDown says why a node's endpoints take no traffic.
type NodeDown uint8

const (
	// NodeUnreachable: the node stopped reporting (its heartbeats lapsed)
	// but is not Lost: its containers may well still run, so its
	// endpoints may be kept by panic routing.
	NodeUnreachable NodeDown = iota + 1
	// NodeGone: the node stopped reporting and is Lost, removed or being
	// drained: its endpoints left for real and are never kept.
	NodeGone
)

// DownNodesOf is the one rule for which nodes' endpoints take no traffic:
// those without a live heartbeat claim (live), unless spared (the
// publisher spares the nodes a restarted replica has not heard yet).
// A node that is Lost, removed or drained is NodeGone; any other
// NodeUnreachable.
func DownNodesOf(nodes []api.Node, live map[string]bool, spared func(*api.Node) bool) map[string]NodeDown {
	down := map[string]NodeDown{}
	for i := range nodes {
		n := &nodes[i]
		if live[n.Name] || (spared != nil && spared(n)) {
			continue
		}
		if n.State == api.NodeLost || n.Removed || n.Drain {
			down[n.Name] = NodeGone
		} else {
			down[n.Name] = NodeUnreachable
		}
	}
	return down
}

// BuildService is one service of Build: from the service, its instances,
// their statuses (by instance id), the nodes whose endpoints must not
// receive traffic, and its rollout (nil: none). The same inputs always
// give the same service.
//
// Panic routing (Envoy's panic threshold is the model): when no endpoint
// of the service serves, the endpoints that would serve but for their
// node having stopped reporting (NodeUnreachable; the instance still
// wanted and last reported ready) are kept, marked Panic, until one
// endpoint truly serves again. A node that stops reporting often runs on
// (an agent restarted, a partition between agent and control plane):
// answering with its last known endpoints beats answering with none.
// The rule is per service, not per revision: a canary whose nodes stopped
// reporting passes its share to the stable revision (canaryWeights), as
// any revision without a ready endpoint does.
func BuildService(svc *api.Service, instances []api.Instance, statuses map[string]api.InstanceStatus, down map[string]NodeDown, ro *api.Rollout) Service {
	out := Service{Namespace: svc.Metadata.Namespace, Name: svc.Metadata.Name}
	for _, p := range svc.Spec.Ports {
		out.Ports = append(out.Ports, Port{Name: p.Name, Port: uint32(p.Port), Protocol: p.Protocol})
	}
	if r := svc.Spec.Route; r != nil {
		paths := r.Paths
		if len(paths) == 0 {
			paths = []string{"/"}
		}
		out.Route = &Route{Hosts: append([]string(nil), r.Hosts...), Paths: append([]string(nil), paths...), Since: svc.Status.CreatedAt}
	}
	revs := map[int64]*Revision{}
	if svc.Status.Revision > 0 {
		revs[svc.Status.Revision] = &Revision{Number: svc.Status.Revision}
	}
	type keptEndpoint struct {
		rev *Revision
		ep  Endpoint
	}
	var kept []keptEndpoint // would serve but for their node: panic routing's
	serving := false
	for _, in := range instances {
		rev := revs[in.Revision]
		if rev == nil {
			rev = &Revision{Number: in.Revision}
			revs[in.Revision] = rev
		}
		status, ok := statuses[in.ID]
		if !ok || status.IP == "" || in.Node == "" || status.Node != in.Node {
			continue
		}
		if d, isDown := down[in.Node]; isDown {
			if d == NodeUnreachable && in.Live() && in.ReadyWith(status) {
				kept = append(kept, keptEndpoint{rev, Endpoint{Instance: in.ID, Node: in.Node, IP: status.IP, Ready: true, Panic: true}})
			}
			continue
		}
		draining := !in.Live()
		e := Endpoint{
			Instance: in.ID,
			Node:     in.Node,
			IP:       status.IP,
			Ready:    in.ReadyWith(status) && !draining,
			Draining: draining,
		}
		serving = serving || e.Serves()
		rev.Endpoints = append(rev.Endpoints, e)
	}
	if !serving {
		for _, k := range kept {
			k.rev.Endpoints = append(k.rev.Endpoints, k.ep)
		}
	}
	for _, rev := range revs {
		sort.Slice(rev.Endpoints, func(a, b int) bool { return rev.Endpoints[a].Instance < rev.Endpoints[b].Instance })
		out.Revisions = append(out.Revisions, *rev)
	}
	sort.Slice(out.Revisions, func(a, b int) bool { return out.Revisions[a].Number < out.Revisions[b].Number })
	if ro != nil && ro.Active() && ro.Canary() && ro.Revision == svc.Status.Revision {
		canaryWeights(out.Revisions, *ro)
		if out.Route != nil && canaryReady(out.Revisions, ro.Revision) {
			canaryRouting(out.Route, svc.Spec.Rollout, ro.Revision)
		}
	} else {
		assignWeights(out.Revisions, svc.Status.Revision)
	}
	return out
}

// canaryWeights gives the canary its weight and the stable revision the
// rest; a side without ready endpoints passes its share to the other.
func canaryWeights(revs []Revision, ro api.Rollout) {
	var canary, stable *Revision
	for i := range revs {
		switch revs[i].Number {
		case ro.Revision:
			canary = &revs[i]
		case ro.Stable:
			stable = &revs[i]
		}
	}
	switch {
	case canary == nil || stable == nil:
		assignWeights(revs, ro.Revision)
	case !hasReady(canary) && hasReady(stable):
		stable.Weight = 100
	case hasReady(canary) && !hasReady(stable):
		canary.Weight = 100
	default:
		canary.Weight = min(ro.Weight, 100)
		stable.Weight = 100 - canary.Weight
	}
}

func canaryReady(revs []Revision, canary int64) bool {
	for i := range revs {
		if revs[i].Number == canary {
			return hasReady(&revs[i])
		}
	}
	return false
}

// canaryRouting adds what spec.rollout asks of the gateways while a canary
// with ready endpoints runs: the canary header's route and the sticky
// cohorts' hash key.
func canaryRouting(rt *Route, spec *api.RolloutSpec, canary int64) {
	if spec == nil {
		return
	}
	if h := spec.CanaryHeader; h != nil {
		rt.CanaryHeader, rt.CanaryValue, rt.CanaryRevision = strings.ToLower(h.Name), h.Value, canary
	}
	if st := spec.Sticky; st != nil {
		rt.StickyHeader, rt.StickyCookie, rt.CanaryRevision = strings.ToLower(st.Header), st.Cookie, canary
	}
}

func hasReady(r *Revision) bool {
	for _, e := range r.Endpoints {
		if e.Ready {
			return true
		}
	}
	return false
}

func assignWeights(revs []Revision, current int64) {
	if len(revs) == 0 {
		return
	}
	var ready []int
	cur := -1
	for i := range revs {
		if revs[i].Number == current {
			cur = i
		}
		if hasReady(&revs[i]) {
			ready = append(ready, i)
		}
	}
	switch {
	case cur >= 0 && hasReady(&revs[cur]):
		revs[cur].Weight = 100
	case len(ready) > 0:
		share := uint32(100 / len(ready))
		for _, i := range ready {
			revs[i].Weight = share
		}
		revs[ready[len(ready)-1]].Weight += 100 - share*uint32(len(ready))
	case cur >= 0:
		revs[cur].Weight = 100
	default:
		revs[len(revs)-1].Weight = 100
	}
}
