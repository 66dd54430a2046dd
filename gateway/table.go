package gateway

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// table is one immutable routing decision set, built from accepted xDS
// resources and swapped whole. Nothing in it changes after the build but
// atomic counters (round robin, weighted schedules); per-endpoint and
// per-cluster runtime state (pools, in-flight counts, ejections, load
// reports) lives in objects shared across tables (endpoint.go).
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
	routes []*routeEntry // in configuration order: the first match wins
}

type routeEntry struct {
	name    string
	prefix  string
	exact   bool // path must equal prefix
	headers []headerMatcher

	direct      *directResponse
	directStats *routeStats
	clusters    []weightedCluster
	total       uint32
	// schedule is a smooth weighted round-robin order of cluster indexes
	// (weights reduced by their gcd); nil for one cluster or when the
	// reduced total is too large, then pick draws at random.
	schedule []uint16
	next     atomic.Uint32

	// sticky is set on a split whose cluster a request's cohort may
	// choose (weighted_clusters header_name); nil otherwise.
	sticky *stickyCohort

	// timeout bounds the whole upstream exchange (Envoy's route timeout,
	// 15 s unless set; 0 = none).
	timeout time.Duration
	retry   *retryPolicy
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

// upstreamCluster is one cluster as this table sees it: its eligible
// endpoints (healthy, best priority) and its policies. Its runtime state
// is in state, which outlives the table.
type upstreamCluster struct {
	name      string
	state     *clusterState
	endpoints []*endpoint
	lb        lbPolicy
	choices   int // least request: hosts sampled per pick
	outlier   outlierPolicy
	retries   retryBudget
	// connectTimeout is the cluster's connect_timeout (Envoy: 5 s).
	connectTimeout time.Duration
	next           atomic.Uint32
}

type lbPolicy uint8

const (
	lbRoundRobin lbPolicy = iota
	lbLeastRequest
)

// headerSource reads a request header by name (case-insensitive); several
// values come back joined with ",", as Envoy matches them.
type headerSource interface {
	headerValue(name string) (string, bool)
}

type headerMatchKind uint8

const (
	headerPresent headerMatchKind = iota
	headerExact
	headerPrefix
	headerSuffix
	headerContains
)

// headerMatcher is Envoy's HeaderMatcher, without regex and range.
type headerMatcher struct {
	name       string // canonical or lowercase: lookup is case-insensitive
	kind       headerMatchKind
	value      string // lowercased when ignoreCase
	ignoreCase bool
	present    bool // for headerPresent: the header must (true) or must not be there
	invert     bool
	// missingAsEmpty matches an absent header as "" (Envoy's
	// treat_missing_header_as_empty).
	missingAsEmpty bool
}

func (m *headerMatcher) matches(h headerSource) bool {
	v, ok := h.headerValue(m.name)
	if m.kind == headerPresent {
		return (ok == m.present) != m.invert
	}
	if !ok {
		if !m.missingAsEmpty {
			return false // Envoy: an absent header never matches, inverted or not
		}
		v = ""
	}
	if m.ignoreCase {
		v = strings.ToLower(v)
	}
	var r bool
	switch m.kind {
	case headerExact:
		r = v == m.value
	case headerPrefix:
		r = strings.HasPrefix(v, m.value)
	case headerSuffix:
		r = strings.HasSuffix(v, m.value)
	case headerContains:
		r = strings.Contains(v, m.value)
	}
	return r != m.invert
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

// matchHostBytes is matchHost for a raw Host header value: it drops the
// port and lowercases into scratch when needed, without allocating.
func (t *table) matchHostBytes(host []byte, scratch *[256]byte) *virtualHost {
	if i := lastColonBytes(host); i >= 0 {
		host = host[:i]
	}
	for i, c := range host {
		if 'A' <= c && c <= 'Z' {
			if len(host) > len(scratch) {
				return t.matchHost(toLower(string(host)))
			}
			n := copy(scratch[:], host)
			for j := i; j < n; j++ {
				if c := scratch[j]; 'A' <= c && c <= 'Z' {
					scratch[j] = c + 'a' - 'A'
				}
			}
			host = scratch[:n]
			break
		}
	}
	if vh, ok := t.exact[string(host)]; ok {
		return vh
	}
	if len(t.suffixes) == 0 && len(t.prefixes) == 0 {
		return t.catchAll
	}
	return t.matchHost(string(host))
}

// matchPath returns the first route whose path and headers match; path is
// the request target's path, without the query.
func (vh *virtualHost) matchPath(path string, h headerSource) *routeEntry {
	for _, r := range vh.routes {
		if r.exact {
			if path != r.prefix {
				continue
			}
		} else if !strings.HasPrefix(path, r.prefix) {
			continue
		}
		if len(r.headers) > 0 && !matchHeaders(r.headers, h) {
			continue
		}
		return r
	}
	return nil
}

func matchHeaders(ms []headerMatcher, h headerSource) bool {
	for i := range ms {
		if !ms[i].matches(h) {
			return false
		}
	}
	return true
}

// pick chooses a cluster by weight: by the precomputed smooth weighted
// round-robin schedule (exact over every window of the reduced total), or
// at random when there is none.
func (r *routeEntry) pick() *weightedCluster {
	if len(r.clusters) == 1 {
		return &r.clusters[0]
	}
	if s := r.schedule; s != nil {
		i := r.next.Add(1) - 1
		return &r.clusters[s[i%uint32(len(s))]]
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

// pickFor chooses a request's cluster: on a sticky split, by the
// request's cohort when it has one (derived: the gateway computed it and
// must send it upstream); otherwise by pick.
func (r *routeEntry) pickFor(h cohortHeaders) (wc *weightedCluster, cohort uint64, derived bool) {
	if r.sticky != nil {
		if c, d, ok := r.sticky.cohort(h); ok {
			return r.orServing(r.pickCohort(c)), c, d
		}
	}
	return r.orServing(r.pick()), 0, false
}

// orServing returns wc, or, when its cluster has no endpoint (a revision
// whose instances all went away, or whose endpoints have not arrived yet),
// the first other cluster of the route with weight and endpoints: another
// revision serving the request is better than refusing it. (Envoy would
// answer 503 here.)
func (r *routeEntry) orServing(wc *weightedCluster) *weightedCluster {
	if len(r.clusters) == 1 || (wc.cluster != nil && len(wc.cluster.endpoints) > 0) {
		return wc
	}
	for i := range r.clusters {
		if c := &r.clusters[i]; c.weight > 0 && c.cluster != nil && len(c.cluster.endpoints) > 0 {
			return c
		}
	}
	return wc
}

// pickCohort is Envoy's weighted cluster pick for a given random value:
// cohort % total weight, walking the clusters in configuration order. The
// translator lists the canary first, so a cohort whose value mod 100 is
// below the canary's weight goes to the canary whatever the other
// weights, and raising that weight only moves cohorts to the canary.
func (r *routeEntry) pickCohort(cohort uint64) *weightedCluster {
	n := cohort % uint64(r.total)
	for i := range r.clusters {
		w := uint64(r.clusters[i].weight)
		if n < w {
			return &r.clusters[i]
		}
		n -= w
	}
	return &r.clusters[len(r.clusters)-1]
}

// stickyCohort is Envoy's weighted_clusters header_name with the route's
// hash policy, as the proxy in front of Envoy would apply them: a request
// whose cohort header holds a number keeps it; one that carries the hash
// policy's header or cookie gets FNV-1a 64 of its value as its cohort,
// sent upstream in the cohort header. Names are canonical MIME keys.
type stickyCohort struct {
	header    string // the cohort header (header_name)
	keyHeader string // the hash policy's header, or
	keyCookie string // the hash policy's cookie (name as is), or neither
}

// cohortHeaders reads request headers for cohort selection without
// allocating: value i (from 0) of the header name, case-insensitively.
type cohortHeaders interface {
	headerAt(name string, i int) (string, bool)
}

// cohort returns the request's cohort: a single numeric cohort header as
// it is (Envoy reads an unsigned 64-bit number, else ignores it), else the
// hash of the first value of the key header or of the first cookie of
// that name. ok is false when the request has neither or the key is
// empty; derived is true when the cohort comes from the hash.
func (s *stickyCohort) cohort(h cohortHeaders) (cohort uint64, derived, ok bool) {
	if v, found := h.headerAt(s.header, 0); found {
		if _, more := h.headerAt(s.header, 1); !more && isDecimal(v) {
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				return n, false, true
			}
		}
	}
	var key string
	switch {
	case s.keyHeader != "":
		key, _ = h.headerAt(s.keyHeader, 0)
	case s.keyCookie != "":
		for i := 0; key == ""; i++ {
			v, found := h.headerAt("Cookie", i)
			if !found {
				break
			}
			key, _ = cookieValue(v, s.keyCookie)
		}
	}
	if key == "" {
		return 0, false, false
	}
	return fnv1a64(key), true, true
}

// isDecimal reports whether v is 1 to 20 ASCII digits (so parsing it
// allocates no error for the common junk).
func isDecimal(v string) bool {
	if len(v) == 0 || len(v) > 20 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return false
		}
	}
	return true
}

// cookieValue finds cookie name in one Cookie header value as Envoy does:
// pairs split on ';', leading spaces dropped, the name compared exactly,
// the value taken as is but for surrounding double quotes.
func cookieValue(header, name string) (string, bool) {
	for header != "" {
		pair := header
		if i := strings.IndexByte(header, ';'); i >= 0 {
			pair, header = header[:i], header[i+1:]
		} else {
			header = ""
		}
		pair = strings.TrimLeft(pair, " ")
		k, v, found := strings.Cut(pair, "=")
		if !found || k != name {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return v, true
	}
	return "", false
}

// fnv1a64 is FNV-1a 64 (hash/fnv's New64a) of s, without allocating.
func fnv1a64(s string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime
	}
	return h
}

// maxSchedule bounds the precomputed weighted schedule's length.
const maxSchedule = 10000

// weightSchedule returns nginx's smooth weighted round robin over weights
// reduced by their gcd, or nil when that is longer than maxSchedule.
func weightSchedule(weights []uint32) []uint16 {
	if len(weights) < 2 {
		return nil
	}
	g := uint32(0)
	for _, w := range weights {
		g = gcd(g, w)
	}
	var total uint64
	red := make([]int64, len(weights))
	for i, w := range weights {
		red[i] = int64(w / g)
		total += uint64(w / g)
	}
	if total > maxSchedule || len(weights) > 1<<16 {
		return nil
	}
	cur := make([]int64, len(weights))
	out := make([]uint16, total)
	for n := range out {
		best := 0
		for i := range cur {
			cur[i] += red[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= int64(total)
		out[n] = uint16(best)
	}
	return out
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// pickEndpoint chooses an endpoint by the cluster's policy, skipping
// ejected ones and those a retry already tried (Envoy's previous_hosts
// predicate), and on a retry those in the localities already tried while
// another locality has one (with two endpoints on a dead node, a retry
// from one must not go to the other), or returns nil if
// the cluster has none. When too few endpoints are left (Envoy's panic
// threshold, 50%), it balances over all of them.
func (c *upstreamCluster) pickEndpoint(tried []*endpoint) *endpoint {
	if c == nil {
		return nil
	}
	eps := c.endpoints
	n := len(eps)
	switch n {
	case 0:
		return nil
	case 1:
		return eps[0]
	}
	// Ejections and the endpoint a retry leaves narrow the choice; with
	// more than half ejected, all take traffic (Envoy's panic mode).
	var now int64
	check := len(tried) > 0
	if u := c.state.ejectedUntil.Load(); u != 0 {
		if now = nanotime(); u > now {
			check = true
			if 2*c.countEjected(now) > n {
				now = 0
			}
		} else {
			now = 0
		}
	}
	usableHere := func(e *endpoint) bool {
		if !check {
			return true
		}
		return !slices.Contains(tried, e) && (now == 0 || !e.ejected(now))
	}
	// A retry goes to another locality (node) when one has a usable
	// endpoint: a node whose link was cut times out on each of its
	// endpoints in turn, and two such waits use up the request's time.
	triedZone := func(e *endpoint) bool {
		if e.zone == "" {
			return false
		}
		for _, t := range tried {
			if t.zone == e.zone {
				return true
			}
		}
		return false
	}
	spread := false
	for i := 0; i < n && len(tried) > 0 && !spread; i++ {
		spread = usableHere(eps[i]) && !triedZone(eps[i])
	}
	usable := func(e *endpoint) bool { return usableHere(e) && !(spread && triedZone(e)) }
	if c.lb == lbLeastRequest {
		var best *endpoint
		for try := 0; try < c.choices+n && (best == nil || try < c.choices); try++ {
			e := eps[rand.IntN(n)]
			if !usable(e) {
				continue
			}
			if best == nil || e.active.Load() < best.active.Load() {
				best = e
			}
		}
		if best != nil {
			return best
		}
	}
	start := c.next.Add(1) - 1
	for i := 0; i < n; i++ {
		if e := eps[(start+uint32(i))%uint32(n)]; usable(e) {
			return e
		}
	}
	return eps[start%uint32(n)]
}

func (c *upstreamCluster) countEjected(now int64) int {
	k := 0
	for _, e := range c.endpoints {
		if e.ejected(now) {
			k++
		}
	}
	return k
}

// lastColonBytes is lastColon for bytes.
func lastColonBytes(host []byte) int {
	if bytes.IndexByte(host, ']') >= 0 {
		i := bytes.LastIndexByte(host, ':')
		if i > bytes.LastIndexByte(host, ']') {
			return i
		}
		return -1
	}
	return bytes.LastIndexByte(host, ':')
}
