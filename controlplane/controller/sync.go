package controller

import (
	"fmt"
	"strings"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

// Sync is how far the places traffic is steered have applied the
// discovery state of one etcd revision: every xDS client of every control
// plane replica (as the replicas record them) and every ready node's DNS.
// It is the one answer to "has everyone applied it?": drains and canary
// steps wait for it, and `rollout status` shows it.
type Sync struct {
	// Published: a snapshot carrying the revision exists (Version).
	Published bool
	Version   uint64
	// GatewaysBehind run an older snapshot and are not STALE (a gateway
	// behind past its deadline is shown STALE and not waited for: one
	// unresponsive gateway must not hold every drain and canary step).
	GatewaysBehind []string
	// Nacked is a gateway that rejected an update ("id (reason)"): that
	// holds until it accepts one.
	Nacked string
	// DNSBehind are ready nodes whose DNS answers from an older snapshot
	// (a node with none yet has nothing stale to hand out).
	DNSBehind []string
}

// SyncOf computes the Sync of etcd revision rev. versionFor maps a
// revision to the snapshot version carrying it (nil: versions are
// revisions).
func SyncOf(v *store.View, rev int64, versionFor func(int64) (uint64, bool)) Sync {
	s := Sync{Published: true, Version: uint64(rev)}
	if versionFor != nil {
		s.Version, s.Published = versionFor(rev)
		if !s.Published {
			return s
		}
	}
	for _, g := range v.Gateways {
		switch {
		case g.Version >= s.Version:
		case g.State == api.GatewayStale:
		case g.State == api.GatewayNacked:
			if s.Nacked == "" {
				s.Nacked = fmt.Sprintf("%s (it rejected an update: %s)", g.NodeID, g.LastNack)
			}
		default:
			s.GatewaysBehind = append(s.GatewaysBehind, g.NodeID)
		}
	}
	for _, n := range v.Nodes {
		if got := v.DNSVersions[n.Name]; v.LiveNodes[n.Name] && got != 0 && got < s.Version {
			s.DNSBehind = append(s.DNSBehind, n.Name)
		}
	}
	return s
}

// GatewaysApplied: every gateway waited for runs it.
func (s Sync) GatewaysApplied() bool {
	return s.Published && s.Nacked == "" && len(s.GatewaysBehind) == 0
}

// DNSApplied: every ready node's DNS answers from it.
func (s Sync) DNSApplied() bool { return s.Published && len(s.DNSBehind) == 0 }

// Acked reports whether everything applied it; when not, waiting names
// who is behind, the first thing that holds first.
func (s Sync) Acked() (ok bool, waiting string) {
	switch {
	case !s.Published:
		return false, "the discovery snapshot"
	case s.Nacked != "":
		return false, "gateway " + s.Nacked
	case len(s.GatewaysBehind) > 0:
		return false, "gateway " + strings.Join(s.GatewaysBehind, ", ")
	case len(s.DNSBehind) > 0:
		return false, "DNS on node " + strings.Join(s.DNSBehind, ", ")
	}
	return true, ""
}
