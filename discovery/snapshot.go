// Package discovery owns the discovery snapshot: the one immutable,
// versioned view of which services exist, how their traffic is split across
// revisions, and which endpoints are ready to serve. The control plane builds
// it (Build, a pure function over stored state) and publishes it; the xDS
// translator and the DNS server both read it, so the gateway and DNS never
// disagree about who serves. It must not do I/O or know about etcd.
package discovery

import (
	"slices"
	"sort"
	"time"

	"github.com/berth-dev/berth/api"
)

// Snapshot is immutable once built: readers share it without locks and
// nobody may modify it. Version increases with every change (it is the etcd
// revision the snapshot reflects).
type Snapshot struct {
	Version  uint64    `json:"version"`
	Services []Service `json:"services"` // sorted by Namespace, Name
}

// Service is one service as seen by traffic.
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Ports     []Port `json:"ports,omitempty"`
	// Route is nil for services that are not exposed through gateways.
	Route *Route `json:"route,omitempty"`
	// Revisions that may receive traffic, with their weights. Weights of a
	// service sum to 100 when it has any revision.
	Revisions []Revision `json:"revisions"`
}

// Port protocols as a snapshot carries them (a manifest's values): what
// the xDS translation and the gateway read.
const (
	ProtocolHTTP  = api.ProtocolHTTP
	ProtocolHTTP2 = api.ProtocolHTTP2
	ProtocolGRPC  = api.ProtocolGRPC
	ProtocolTCP   = api.ProtocolTCP
)

// CohortHeader carries a request's sticky cohort from the gateway to the
// weighted clusters that split traffic by it.
const CohortHeader = api.CohortHeader

// Port is a named service port.
type Port struct {
	Name     string `json:"name"`
	Port     uint32 `json:"port"`
	Protocol string `json:"protocol"`
}

// Route says which requests a gateway sends to the service.
type Route struct {
	Hosts []string `json:"hosts"`
	Paths []string `json:"paths"` // prefixes, at least "/"
	// Since is when the service was created: where two services claim
	// the same host and path (stored before the API refused that), the
	// older one gets the traffic, as the oldest claim does.
	Since time.Time `json:"since,omitzero"`
	// While a canary with ready endpoints runs: with a canary header,
	// requests carrying CanaryHeader: CanaryValue go to CanaryRevision
	// whatever the weights. CanaryRevision is set when the rollout has a
	// canary header or sticky cohorts.
	CanaryHeader   string `json:"canaryHeader,omitempty"`
	CanaryValue    string `json:"canaryValue,omitempty"`
	CanaryRevision int64  `json:"canaryRevision,omitempty"`
	// With sticky cohorts, gateways hash the request header StickyHeader
	// (lowercase) or the cookie StickyCookie (exactly one is set) into the
	// user's cohort, and a cohort mod 100 below the canary's weight goes
	// to CanaryRevision: as the weight rises, users only move from stable
	// to canary. Requests without either are split by weight as usual.
	StickyHeader string `json:"stickyHeader,omitempty"`
	StickyCookie string `json:"stickyCookie,omitempty"`
}

// Revision is one revision's share of a service's traffic.
type Revision struct {
	Number    int64      `json:"number"`
	Weight    uint32     `json:"weight"` // 0..100
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one instance's address. Only Ready endpoints receive new
// traffic; Draining ones are kept so gateways can finish what they have.
// Panic ones are Ready as last reported and kept by panic routing: their
// node stopped reporting and the service has no other endpoint that
// serves (BuildService).
type Endpoint struct {
	Instance string `json:"instance"`
	Node     string `json:"node"`
	IP       string `json:"ip"`
	Ready    bool   `json:"ready"`
	Draining bool   `json:"draining,omitempty"`
	Panic    bool   `json:"panic,omitempty"`
}

// Lookup returns the service ns/name, or nil.
func (s *Snapshot) Lookup(ns, name string) *Service {
	if s == nil {
		return nil
	}
	i := sort.Search(len(s.Services), func(i int) bool {
		a := s.Services[i]
		return a.Namespace > ns || (a.Namespace == ns && a.Name >= name)
	})
	if i < len(s.Services) && s.Services[i].Namespace == ns && s.Services[i].Name == name {
		return &s.Services[i]
	}
	return nil
}

// ReadyEndpoints returns the endpoints of all revisions of the service
// that serve.
func (s *Service) ReadyEndpoints() []Endpoint {
	var out []Endpoint
	for _, r := range s.Revisions {
		for _, e := range r.Endpoints {
			if e.Serves() {
				out = append(out, e)
			}
		}
	}
	return out
}

// PanicNodes returns the nodes, sorted, of the endpoints panic routing
// keeps (none: the service is not in panic).
func (s *Service) PanicNodes() []string {
	var out []string
	for _, r := range s.Revisions {
		for _, e := range r.Endpoints {
			if e.Panic && !slices.Contains(out, e.Node) {
				out = append(out, e.Node)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Serves reports whether the endpoint takes new requests: ready and not
// draining.
func (e Endpoint) Serves() bool { return e.Ready && !e.Draining }

// ServingRevision is one revision's part of who answers for a service.
type ServingRevision struct {
	Number int64
	// Weight is the revision's traffic weight; 0 in the fallback (see
	// Serving).
	Weight    uint32
	Endpoints []Endpoint
}

// Serving returns who answers for the service, by revision: the endpoints
// that serve of the revisions with a weight above zero, as the gateways
// route. Only when none of those has one does it fall back to every
// endpoint that serves (weights then play no part), so a name never
// answers empty while some instance could serve it. The DNS server
// answers these and `berth describe service` prints them: one rule.
func (s *Service) Serving() []ServingRevision {
	collect := func(weighted bool) []ServingRevision {
		var out []ServingRevision
		for _, rev := range s.Revisions {
			if weighted && rev.Weight == 0 {
				continue
			}
			sr := ServingRevision{Number: rev.Number}
			if weighted {
				sr.Weight = rev.Weight
			}
			for _, e := range rev.Endpoints {
				if e.Serves() {
					sr.Endpoints = append(sr.Endpoints, e)
				}
			}
			if len(sr.Endpoints) > 0 {
				out = append(out, sr)
			}
		}
		return out
	}
	if out := collect(true); len(out) > 0 {
		return out
	}
	return collect(false)
}
