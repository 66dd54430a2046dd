package gateway

import (
	"math/rand/v2"
	"strings"
	"sync/atomic"
)

// table is one immutable routing decision set, built from accepted xDS
// resources and swapped whole. Nothing in it changes after the build but
// the round-robin counters.
type table struct {
	// version is the version_info of the last response accepted;
	// versions has it per type URL.
	version  string
	versions map[string]string

	// hasListener is false until the named Listener (and so a route
	// configuration name) is known.
	hasListener bool
	exact       map[string]*virtualHost // lowercased host, no port
	suffixes    []domainWildcard        // "*.example.com": longest first
	prefixes    []domainWildcard        // "www.example.*": longest first
	catchAll    *virtualHost            // "*"
}

type domainWildcard struct {
	part string // ".example.com" for a suffix, "www.example." for a prefix
	vh   *virtualHost
}

type virtualHost struct {
	name   string
	routes []*routeEntry // longest prefix first
}

type routeEntry struct {
	name   string
	prefix string
	exact  bool // path must equal prefix

	direct      *directResponse
	directStats *routeStats
	clusters    []weightedCluster
	total       uint32
}

type directResponse struct {
	status int
	body   string
}

type weightedCluster struct {
	name    string
	weight  uint32
	cluster *upstreamCluster // nil when CDS has no such cluster
	stats   *routeStats
}

type upstreamCluster struct {
	name      string
	endpoints []string // "ip:port", healthy ones only
	next      atomic.Uint32
}

// matchHost finds the virtual host for host, which must already be
// lowercased and stripped of its port.
func (t *table) matchHost(host string) *virtualHost {
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, w := range t.suffixes {
		if len(host) > len(w.part) && strings.HasSuffix(host, w.part) {
			return w.vh
		}
	}
	for _, w := range t.prefixes {
		if len(host) > len(w.part) && strings.HasPrefix(host, w.part) {
			return w.vh
		}
	}
	return t.catchAll
}

// matchPath returns the longest route whose prefix (or exact path) matches.
func (vh *virtualHost) matchPath(path string) *routeEntry {
	for _, r := range vh.routes {
		if r.exact {
			if path == r.prefix {
				return r
			}
		} else if strings.HasPrefix(path, r.prefix) {
			return r
		}
	}
	return nil
}

// pick chooses a cluster by weight.
func (r *routeEntry) pick() *weightedCluster {
	if len(r.clusters) == 1 {
		return &r.clusters[0]
	}
	n := rand.Uint32N(r.total)
	for i := range r.clusters {
		if n < r.clusters[i].weight {
			return &r.clusters[i]
		}
		n -= r.clusters[i].weight
	}
	return &r.clusters[len(r.clusters)-1]
}

// endpoint returns the next endpoint round robin, or "" if there is none.
func (c *upstreamCluster) endpoint() string {
	if c == nil || len(c.endpoints) == 0 {
		return ""
	}
	i := c.next.Add(1) - 1
	return c.endpoints[i%uint32(len(c.endpoints))]
}
