package discovery

import (
	"cmp"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Endpoint-level deltas: a snapshot seen as keyed items, one per service
// (its header: ports, route, revisions and weights) and one per endpoint,
// so that a follower can be sent only the items that changed. During a
// deploy most changes are a few endpoints of a service of a hundred; sent
// whole, every such service cost every node its whole endpoint list.

// ServiceDelta is what changed in one service since a base version.
type ServiceDelta struct {
	Namespace, Name string
	// Header is the service without its endpoints when its header changed
	// (or it is new); nil when only endpoints changed.
	Header *Service
	// Endpoints added or changed; Removed, the endpoints gone (Instance
	// set only).
	Endpoints, Removed []RevisionEndpoint
}

// RevisionEndpoint is an endpoint under its revision.
type RevisionEndpoint struct {
	Revision int64
	Endpoint Endpoint
}

// header returns svc without its endpoints.
func (svc *Service) header() Service {
	h := *svc
	h.Revisions = make([]Revision, len(svc.Revisions))
	for i, r := range svc.Revisions {
		h.Revisions[i] = Revision{Number: r.Number, Weight: r.Weight}
	}
	return h
}

// serviceKey and endpointKey are the items' keys: "ns/name", and
// "ns/name\x00revision\x00instance".
func serviceKey(ns, name string) string { return ns + "/" + name }

func endpointKey(svcKey string, rev int64, instance string) string {
	return svcKey + "\x00" + strconv.FormatInt(rev, 10) + "\x00" + instance
}

// ServiceItems adds one service's keyed items to items, each with a body
// that changes exactly when the item does.
func ServiceItems(svc *Service, items map[string]string) {
	key := serviceKey(svc.Namespace, svc.Name)
	h := svc.header()
	b, _ := json.Marshal(&h)
	items[key] = string(b)
	for _, r := range svc.Revisions {
		for _, e := range r.Endpoints {
			items[endpointKey(key, r.Number, e.Instance)] = e.Node + "\x00" + e.IP + "\x00" + strconv.FormatBool(e.Ready) + strconv.FormatBool(e.Draining) + strconv.FormatBool(e.Panic)
		}
	}
}

// DeltaOf turns the keys of the items that changed since a base (changed:
// present in snap; removed: gone) into service deltas against snap, and
// the services gone ("ns/name"), both sorted.
func DeltaOf(snap *Snapshot, changed map[string]string, removed []string) (deltas []ServiceDelta, gone []string) {
	type touch struct {
		header  bool
		eps     map[string]bool // endpoint keys changed
		removed []RevisionEndpoint
	}
	touched := map[string]*touch{}
	get := func(svcKey string) *touch {
		t := touched[svcKey]
		if t == nil {
			t = &touch{eps: map[string]bool{}}
			touched[svcKey] = t
		}
		return t
	}
	for k := range changed {
		svcKey, rest, isEndpoint := strings.Cut(k, "\x00")
		if !isEndpoint {
			get(svcKey).header = true
			continue
		}
		get(svcKey).eps[rest] = true
	}
	for _, k := range removed {
		svcKey, rest, isEndpoint := strings.Cut(k, "\x00")
		if !isEndpoint {
			get(svcKey) // the service's header is gone: the service is
			continue
		}
		revS, instance, _ := strings.Cut(rest, "\x00")
		rev, _ := strconv.ParseInt(revS, 10, 64)
		t := get(svcKey)
		t.removed = append(t.removed, RevisionEndpoint{Revision: rev, Endpoint: Endpoint{Instance: instance}})
	}
	for _, svcKey := range slices.Sorted(maps.Keys(touched)) {
		t := touched[svcKey]
		ns, name, _ := strings.Cut(svcKey, "/")
		svc := snap.Lookup(ns, name)
		if svc == nil {
			gone = append(gone, svcKey)
			continue
		}
		d := ServiceDelta{Namespace: ns, Name: name, Removed: t.removed}
		if t.header {
			h := svc.header()
			d.Header = &h
		}
		for _, r := range svc.Revisions {
			prefix := strconv.FormatInt(r.Number, 10) + "\x00"
			for _, e := range r.Endpoints {
				if t.eps[prefix+e.Instance] {
					d.Endpoints = append(d.Endpoints, RevisionEndpoint{Revision: r.Number, Endpoint: e})
				}
			}
		}
		slices.SortFunc(d.Removed, func(a, b RevisionEndpoint) int {
			return cmp.Or(cmp.Compare(a.Revision, b.Revision), strings.Compare(a.Endpoint.Instance, b.Endpoint.Instance))
		})
		deltas = append(deltas, d)
	}
	return deltas, gone
}
