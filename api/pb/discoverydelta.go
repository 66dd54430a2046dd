package pb

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/berth-dev/berth/discovery"
)

func fromEndpoint(e *discovery.Endpoint) *Endpoint {
	return &Endpoint{Instance: e.Instance, Node: e.Node, Ip: e.IP, Ready: e.Ready, Draining: e.Draining, Panic: e.Panic}
}

// FromServiceDeltas converts endpoint-level service deltas to the wire.
func FromServiceDeltas(ds []discovery.ServiceDelta) []*ServiceDelta {
	out := make([]*ServiceDelta, 0, len(ds))
	for _, d := range ds {
		p := &ServiceDelta{Namespace: d.Namespace, Name: d.Name}
		if d.Header != nil {
			p.Header = FromSnapshot(&discovery.Snapshot{Services: []discovery.Service{*d.Header}}).Services[0]
		}
		for _, e := range d.Endpoints {
			p.Endpoints = append(p.Endpoints, &RevisionEndpoint{Revision: e.Revision, Endpoint: fromEndpoint(&e.Endpoint)})
		}
		for _, e := range d.Removed {
			p.RemovedEndpoints = append(p.RemovedEndpoints, &RevisionEndpoint{Revision: e.Revision, Endpoint: &Endpoint{Instance: e.Endpoint.Instance}})
		}
		out = append(out, p)
	}
	return out
}

// ApplyServiceDelta returns held (nil: a service the follower does not
// have) with d applied, as a new service: held is not modified (snapshots
// handed out share it). Endpoints stay in instance order, revisions in
// number order, as the control plane builds them.
func ApplyServiceDelta(held *DiscoveryService, d *ServiceDelta) (*DiscoveryService, error) {
	var svc *DiscoveryService
	switch {
	case d.Header != nil:
		svc = proto.Clone(d.Header).(*DiscoveryService)
		for _, r := range svc.Revisions {
			r.Endpoints = nil
			if held == nil {
				continue
			}
			for _, old := range held.Revisions {
				if old.Number == r.Number {
					r.Endpoints = slices.Clone(old.Endpoints) // endpoints are replaced, never modified
				}
			}
		}
	case held != nil:
		svc = proto.Clone(held).(*DiscoveryService)
	default:
		return nil, fmt.Errorf("discovery delta for %s/%s, which the agent does not have, without its header", d.Namespace, d.Name)
	}
	revision := func(n int64) (*DiscoveryRevision, error) {
		for _, r := range svc.Revisions {
			if r.Number == n {
				return r, nil
			}
		}
		return nil, fmt.Errorf("discovery delta for %s/%s: no revision %d", d.Namespace, d.Name, n)
	}
	byInstance := func(e *Endpoint, instance string) int { return strings.Compare(e.Instance, instance) }
	for _, re := range d.RemovedEndpoints {
		r, err := revision(re.Revision)
		if err != nil {
			continue // the revision left with the header: its endpoints with it
		}
		if i, ok := slices.BinarySearchFunc(r.Endpoints, re.Endpoint.GetInstance(), byInstance); ok {
			r.Endpoints = slices.Delete(r.Endpoints, i, i+1)
		}
	}
	for _, re := range d.Endpoints {
		r, err := revision(re.Revision)
		if err != nil {
			return nil, err
		}
		e := re.Endpoint
		if e == nil {
			return nil, fmt.Errorf("discovery delta for %s/%s: an endpoint of revision %d without its fields", d.Namespace, d.Name, re.Revision)
		}
		if i, ok := slices.BinarySearchFunc(r.Endpoints, e.Instance, byInstance); ok {
			r.Endpoints[i] = e
		} else {
			r.Endpoints = slices.Insert(r.Endpoints, i, e)
		}
	}
	slices.SortFunc(svc.Revisions, func(a, b *DiscoveryRevision) int { return cmp.Compare(a.Number, b.Number) })
	return svc, nil
}
