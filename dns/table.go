package dns

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/berth-dev/berth/discovery"
)

// Action tells the server what to do with the result of Table.Answer.
type Action int

const (
	// Reply: send the returned message.
	Reply Action = iota
	// Forward: the name is outside the zone and the client may use
	// recursion; the returned message is nil and the query goes upstream.
	Forward
)

func (a Action) String() string {
	switch a {
	case Reply:
		return "reply"
	case Forward:
		return "forward"
	}
	return "unknown"
}

// SOA timers. Nobody transfers this zone (AXFR is refused), so only the
// serial and the minimum matter; the rest are sane placeholders.
const (
	soaRefresh = 60
	soaRetry   = 30
	soaExpire  = 3600
)

// Table is the immutable answer table built from one snapshot. Every name's
// records are built once, in NewTable, twice over: as miekg/dns records for
// Answer (the general path) and as packed wire sections for answerWire (the
// fast path, see wire.go). A query is a map lookup on the lower-cased name.
// A Table is safe for concurrent use and never changes, except for the
// counters that choose which address goes first.
type Table struct {
	zone    string // lower-case, fully qualified
	serial  uint32
	ready   bool // false until the first snapshot: in-zone queries get SERVFAIL
	names   map[string]*node
	reverse map[string]*node // in-addr.arpa/ip6.arpa names of endpoint addresses: PTR only
	negSOA  []dns.RR         // the SOA for authority sections, TTL = min(TTL, minimum)
	allow   []netip.Prefix
	recurse bool                 // upstreams are configured
	frags   map[string]*fragment // by "<ns>/<name>" of the service

	// The fast path's view of the same records (wire.go).
	wire     map[string]*wireNode // by lower-cased wire-format name
	zoneWire []byte               // the zone in wire format
	negTail  []byte               // the negative SOA after its owner name
}

// node holds the RRsets of one name. A node with no sets is an empty
// non-terminal or a service without ready endpoints: it exists (NODATA),
// it is not NXDOMAIN.
type node struct {
	sets []rrset
}

type rrset struct {
	qtype uint16
	rrs   []dns.RR
	// extra is the additional section that goes with the set: the
	// addresses of SRV targets, of the apex NS.
	extra []dns.RR
	// pick chooses the first record of a multi-address set (rotation,
	// canary weights); nil for sets answered in their stored order.
	pick *picker
}

func (n *node) set(qtype uint16) *rrset {
	for i := range n.sets {
		if n.sets[i].qtype == qtype {
			return &n.sets[i]
		}
	}
	return nil
}

func (n *node) get(qtype uint16) []dns.RR {
	if s := n.set(qtype); s != nil {
		return s.rrs
	}
	return nil
}

func (n *node) add(rr dns.RR) {
	t := rr.Header().Rrtype
	if s := n.set(t); s != nil {
		for _, have := range s.rrs {
			if dns.IsDuplicate(have, rr) {
				return
			}
		}
		s.rrs = append(s.rrs, rr)
		return
	}
	n.sets = append(n.sets, rrset{qtype: t, rrs: []dns.RR{rr}})
}

// anyOrder is which RRset an ANY query gets (RFC 8482: one set suffices).
var anyOrder = [...]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeSOA, dns.TypeNS}

// NewTable builds the answer table for snap (nil means an empty snapshot).
// Only cfg's Zone, TTL, NegativeTTL, Upstreams and AllowRecursion matter;
// zero values take their defaults. Services, namespaces, instances and
// ports whose names are not DNS labels, and endpoints whose IP does not
// parse, are left out.
func NewTable(snap *discovery.Snapshot, cfg Config) *Table {
	return newTable(snap, cfg.normalize(), true)
}

func newTable(snap *discovery.Snapshot, cfg Config, ready bool) *Table {
	return newTableFrom(snap, cfg, ready, nil)
}

// newTableFrom builds the table for snap, reusing the fragments of prev
// (built with the same cfg, may be nil) for services that did not change.
func newTableFrom(snap *discovery.Snapshot, cfg Config, ready bool, prev *Table) *Table {
	zone := cfg.Zone
	ttl := seconds(cfg.TTL)
	neg := seconds(cfg.NegativeTTL)
	t := &Table{
		zone:    zone,
		ready:   ready,
		names:   make(map[string]*node, len(prev.namesOrNil())),
		reverse: make(map[string]*node, len(prev.reverseOrNil())),
		allow:   cfg.AllowRecursion,
		recurse: len(cfg.Upstreams) > 0,
	}
	if snap != nil {
		t.serial = uint32(snap.Version)
	}
	nsName := "ns.dns." + zone
	soa := func(ttl uint32) *dns.SOA {
		return &dns.SOA{
			Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
			Ns:      nsName,
			Mbox:    "hostmaster." + zone,
			Serial:  t.serial,
			Refresh: soaRefresh,
			Retry:   soaRetry,
			Expire:  soaExpire,
			Minttl:  neg,
		}
	}
	apex := t.ensure(zone)
	apex.add(soa(ttl))
	apex.add(&dns.NS{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: ttl}, Ns: nsName})
	// RFC 2308 section 5: negative answers live min(SOA TTL, SOA minimum).
	t.negSOA = []dns.RR{soa(min(ttl, neg))}
	if cfg.nsAddr.IsValid() && !cfg.nsAddr.IsUnspecified() {
		t.ensure("dns." + zone)
		nsAddr := addrRR(nsName, cfg.nsAddr, ttl)
		t.ensure(nsName).add(nsAddr)
		apex.set(dns.TypeNS).extra = []dns.RR{nsAddr}
	}

	t.wire = make(map[string]*wireNode, prev.Len()+8)
	if snap != nil {
		svcZone := "svc." + zone
		t.frags = make(map[string]*fragment, len(snap.Services))
		for i := range snap.Services {
			svc := &snap.Services[i]
			key := svc.Namespace + "/" + svc.Name
			f := prev.fragment(key)
			if f == nil || !sameService(f.svc, svc) {
				f = buildFragment(svc, svcZone, ttl)
			}
			if f == nil {
				continue
			}
			t.ensure(svcZone)
			t.merge(f)
			t.frags[key] = f
		}
	}
	t.buildWire()
	return t
}

// fragment returns the fragment the table built for the service ns/name,
// or nil. t may be nil.
func (t *Table) fragment(key string) *fragment {
	if t == nil {
		return nil
	}
	return t.frags[key]
}

// servingRev is one revision's part of a service's address answers.
type servingRev struct {
	weight uint32
	eps    []servingEndpoint
}

type servingEndpoint struct {
	inst string // lower-cased instance label, "" when not a DNS label
	ip   netip.Addr
}

// serving is discovery's Serving (who answers for the service, by
// revision) with each endpoint's address parsed and instance name made a
// DNS label; endpoints without a valid address are left out.
func serving(svc *discovery.Service) []servingRev {
	var out []servingRev
	for _, rev := range svc.Serving() {
		sr := servingRev{weight: rev.Weight}
		for _, ep := range rev.Endpoints {
			ip, ok := endpointIP(ep.IP)
			if !ok {
				continue
			}
			inst, _ := label(ep.Instance)
			sr.eps = append(sr.eps, servingEndpoint{inst: inst, ip: ip})
		}
		if len(sr.eps) > 0 {
			out = append(out, sr)
		}
	}
	return out
}

func endpointIP(s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap().WithZone(""), true
}

// fragment is the part of a table one service contributes: its names with
// their records and packed answers. Fragments never change once built, so
// the next table reuses those of services that did not change (see
// sameService): an update that touches 1,000 endpoints rebuilds only their
// services, not 10,000.
type fragment struct {
	svc     *discovery.Service // what it was built from; snapshots are immutable
	nsName  string             // <ns>.svc.<zone>, an empty non-terminal
	entries []fragEntry
	index   map[string]int // name -> entries index, while building
}

type fragEntry struct {
	name    string // lower case, fully qualified
	key     string // the name in wire format: the fast path's key
	reverse bool
	node    *node
	wire    *wireNode
}

func (f *fragment) ensure(name string, reverse bool) *node {
	if i, ok := f.index[name]; ok {
		return f.entries[i].node
	}
	n := &node{}
	f.index[name] = len(f.entries)
	f.entries = append(f.entries, fragEntry{name: name, reverse: reverse, node: n})
	return n
}

// buildFragment builds the names of one service: its address sets (canary
// weighted), its instances, one SRV set per named port and the PTRs of its
// endpoints' addresses. Nil when the service's names are not DNS labels.
func buildFragment(svc *discovery.Service, svcZone string, ttl uint32) *fragment {
	nsLabel, ok1 := label(svc.Namespace)
	nameLabel, ok2 := label(svc.Name)
	if !ok1 || !ok2 {
		return nil
	}
	f := &fragment{svc: svc, nsName: nsLabel + "." + svcZone, index: make(map[string]int)}
	svcName := nameLabel + "." + nsLabel + "." + svcZone
	sn := f.ensure(svcName, false)
	revs := serving(svc)

	// Addresses, by family, in revision order; the picker knows which
	// records belong to which revision.
	for _, v4 := range []bool{true, false} {
		var rrs []dns.RR
		var groups []pickGroup
		for _, r := range revs {
			g := pickGroup{weight: r.weight, first: len(rrs)}
			for _, ep := range r.eps {
				if ep.ip.Is4() == v4 {
					rrs = append(rrs, addrRR(svcName, ep.ip, ttl))
				}
			}
			if g.n = len(rrs) - g.first; g.n > 0 {
				groups = append(groups, g)
			}
		}
		if len(rrs) == 0 {
			continue
		}
		sn.sets = append(sn.sets, rrset{qtype: rrs[0].Header().Rrtype, rrs: rrs, pick: newPicker(groups)})
	}

	// Every instance name exists; only ready, non-draining ones have an
	// address. Every published endpoint address has its PTR.
	for _, rev := range svc.Revisions {
		for _, ep := range rev.Endpoints {
			inst, ok := label(ep.Instance)
			if !ok {
				continue
			}
			instName := inst + "." + svcName
			in := f.ensure(instName, false)
			ip, ok := endpointIP(ep.IP)
			if !ok {
				continue
			}
			if ep.Ready && !ep.Draining {
				in.add(addrRR(instName, ip, ttl))
			}
			rev := reverseName(ip)
			f.ensure(rev, true).add(&dns.PTR{Hdr: dns.RR_Header{Name: rev, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: ttl}, Ptr: instName})
		}
	}

	// SRV: _<port>._<proto>.<svc>: one target per serving endpoint, the
	// revision's weight spread over its endpoints, the targets' addresses
	// in the additional section.
	for _, p := range svc.Ports {
		portLabel, ok := label(p.Name)
		if !ok || p.Port == 0 || p.Port > 65535 {
			continue
		}
		proto := "_tcp." // http, http2, grpc and tcp all run over TCP
		if strings.EqualFold(p.Protocol, "udp") {
			proto = "_udp."
		}
		f.ensure(proto+svcName, false)
		srvName := "_" + portLabel + "." + proto + svcName
		srvNode := f.ensure(srvName, false)
		var rrs, extra []dns.RR
		for _, r := range revs {
			var n int
			for _, ep := range r.eps {
				if ep.inst != "" {
					n++
				}
			}
			for _, ep := range r.eps {
				if ep.inst == "" {
					continue
				}
				target := ep.inst + "." + svcName
				rrs = append(rrs, &dns.SRV{
					Hdr:      dns.RR_Header{Name: srvName, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
					Priority: 0,
					Weight:   srvWeight(r.weight, n),
					Port:     uint16(p.Port),
					Target:   target,
				})
				extra = append(extra, addrRR(target, ep.ip, ttl))
			}
		}
		if len(rrs) > 0 {
			srvNode.sets = append(srvNode.sets, rrset{qtype: dns.TypeSRV, rrs: rrs, extra: extra})
		}
	}
	for i := range f.entries {
		e := &f.entries[i]
		e.key = string(wireName(e.name))
		e.wire = packNode(e.name, e.node, e.reverse)
	}
	f.index = nil
	return f
}

// merge adds a fragment's names to the table. A name another fragment
// already holds (two endpoints with one address: two PTRs) gets a new node
// with both sets of records, packed anew; the fragments stay as they are.
func (t *Table) merge(f *fragment) {
	t.ensure(f.nsName)
	for i := range f.entries {
		e := &f.entries[i]
		m := t.names
		if e.reverse {
			m = t.reverse
		}
		have := m[e.name]
		if have == nil {
			m[e.name] = e.node
			t.wire[e.key] = e.wire
			continue
		}
		merged := &node{sets: slices.Clone(have.sets)}
		for j := range merged.sets {
			merged.sets[j].rrs = slices.Clone(merged.sets[j].rrs)
		}
		for _, set := range e.node.sets {
			for _, rr := range set.rrs {
				merged.add(rr)
			}
		}
		for j := range merged.sets {
			if merged.sets[j].pick != nil {
				merged.sets[j].pick = newPicker([]pickGroup{{n: len(merged.sets[j].rrs)}})
			}
		}
		m[e.name] = merged
		t.wire[e.key] = packNode(e.name, merged, e.reverse)
	}
}

// sameService reports whether a and b give the same DNS records: the
// fields that matter to DNS are equal (not the route, not the nodes).
func sameService(a, b *discovery.Service) bool {
	if a.Namespace != b.Namespace || a.Name != b.Name || !slices.Equal(a.Ports, b.Ports) || len(a.Revisions) != len(b.Revisions) {
		return false
	}
	for i := range a.Revisions {
		ra, rb := &a.Revisions[i], &b.Revisions[i]
		if ra.Number != rb.Number || ra.Weight != rb.Weight || len(ra.Endpoints) != len(rb.Endpoints) {
			return false
		}
		for j := range ra.Endpoints {
			ea, eb := &ra.Endpoints[j], &rb.Endpoints[j]
			if ea.Instance != eb.Instance || ea.IP != eb.IP || ea.Ready != eb.Ready || ea.Draining != eb.Draining {
				return false
			}
		}
	}
	return true
}

// srvWeight spreads a revision's weight (0..100) over its n endpoints in
// SRV weight units (RFC 2782: 0..65535, relative among one priority), so
// that the sum over a revision's targets is its share of the total. Without
// weights (the fallback of serving) every target weighs the same. A
// serving target never weighs 0, which RFC 2782 reserves for "rarely".
func srvWeight(revWeight uint32, n int) uint16 {
	if n == 0 {
		return 0
	}
	if revWeight == 0 {
		return 100
	}
	w := (min(revWeight, 100)*600 + uint32(n)/2) / uint32(n)
	return uint16(max(w, 1))
}

// reverseName is the in-addr.arpa or ip6.arpa name of ip, lower case.
func reverseName(ip netip.Addr) string {
	const hexDigits = "0123456789abcdef"
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		for i := 3; i >= 0; i-- {
			b.WriteString(strconv.Itoa(int(a[i])))
			b.WriteByte('.')
		}
		b.WriteString("in-addr.arpa.")
		return b.String()
	}
	a := ip.As16()
	for i := 15; i >= 0; i-- {
		b.WriteByte(hexDigits[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hexDigits[a[i]>>4])
		b.WriteByte('.')
	}
	b.WriteString("ip6.arpa.")
	return b.String()
}

func (t *Table) ensure(name string) *node {
	n := t.names[name]
	if n == nil {
		n = &node{}
		t.names[name] = n
	}
	return n
}

func addrRR(name string, ip netip.Addr, ttl uint32) dns.RR {
	if ip.Is4() {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ip.AsSlice()}
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: ip.AsSlice()}
}

// Records returns every record in the table in presentation format, one
// per line, sorted, PTRs of endpoint addresses included; names that exist
// without records (empty non-terminals, services without ready endpoints)
// appear as "<name> ; exists". For debugging and golden tests; it is not
// on the query path.
func (t *Table) Records() []string {
	var out []string
	for _, m := range []map[string]*node{t.names, t.reverse} {
		for name, n := range m {
			if len(n.sets) == 0 {
				out = append(out, name+" ; exists")
			}
			for _, set := range n.sets {
				for _, rr := range set.rrs {
					out = append(out, rr.String())
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// Len is the number of names in the table, reverse names included. A nil
// Table has none.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.names) + len(t.reverse)
}

func (t *Table) namesOrNil() map[string]*node {
	if t == nil {
		return nil
	}
	return t.names
}

func (t *Table) reverseOrNil() map[string]*node {
	if t == nil {
		return nil
	}
	return t.reverse
}

// Serial is the SOA serial: the snapshot version truncated to 32 bits.
func (t *Table) Serial() uint32 { return t.serial }

// MayRecurse reports whether client may have names outside the zone
// forwarded: upstreams are configured and the client is loopback or in one
// of the allowed networks.
func (t *Table) MayRecurse(client netip.Addr) bool {
	if !t.recurse || !client.IsValid() {
		return false
	}
	client = client.Unmap()
	if client.IsLoopback() {
		return true
	}
	for _, p := range t.allow {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// Answer answers req, asked by client, from the table. It returns the
// reply, without EDNS OPT and not yet fitted to a transport, and Reply; or
// nil and Forward when the name is outside the zone and client may recurse.
// Answer never modifies req, and the RRs in the reply are shared with the
// table: callers must not modify them.
//
// A PTR query for the reverse name of an endpoint address is answered
// here, authoritatively, whoever asks (like any name in the zone). Every
// other reverse name, and every other type at those names, is outside the
// zone: forwarded for clients that may recurse, REFUSED for the rest. The
// server is not authoritative for in-addr.arpa or ip6.arpa, so it never
// says NXDOMAIN there.
func (t *Table) Answer(req *dns.Msg, client netip.Addr) (*dns.Msg, Action) {
	m := new(dns.Msg)
	m.SetReply(req)
	switch {
	case req.Response:
		m.Rcode = dns.RcodeFormatError
		return m, Reply
	case req.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		return m, Reply
	case len(req.Question) != 1:
		m.Rcode = dns.RcodeFormatError
		return m, Reply
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		m.Rcode = dns.RcodeBadVers // the server adds the OPT this needs
		return m, Reply
	}
	q := req.Question[0]
	name := lowerASCII(q.Name)
	mayRecurse := t.MayRecurse(client)
	if !t.inZone(name) {
		if rn := t.reverse[name]; rn != nil && q.Qtype == dns.TypePTR && q.Qclass == dns.ClassINET {
			m.RecursionAvailable = mayRecurse
			m.Authoritative = true
			m.Answer = rn.get(dns.TypePTR)
			m.Answer = m.Answer[:len(m.Answer):len(m.Answer)]
			return m, Reply
		}
		if mayRecurse {
			return nil, Forward
		}
		m.Rcode = dns.RcodeRefused
		return m, Reply
	}
	m.RecursionAvailable = mayRecurse
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m, Reply
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		m.Rcode = dns.RcodeRefused
		return m, Reply
	case dns.TypeOPT:
		m.Rcode = dns.RcodeFormatError
		return m, Reply
	}
	if !t.ready {
		m.Rcode = dns.RcodeServerFailure
		return m, Reply
	}
	m.Authoritative = true
	n := t.names[name]
	if n == nil {
		m.Rcode = dns.RcodeNameError
		m.Ns = t.negSOA
		return m, Reply
	}
	var set *rrset
	if q.Qtype == dns.TypeANY {
		for _, typ := range anyOrder {
			if set = n.set(typ); set != nil {
				break
			}
		}
	} else {
		set = n.set(q.Qtype)
	}
	if set == nil || len(set.rrs) == 0 {
		m.Ns = t.negSOA
		return m, Reply
	}
	m.Answer = set.ordered()
	if len(set.extra) > 0 {
		m.Extra = set.extra[:len(set.extra):len(set.extra)]
	}
	return m, Reply
}

// ordered returns the set's records for one answer: starting at the record
// its picker chooses, the rest following in turn. Sets without a picker
// come in their stored order. The result must not be appended to.
func (s *rrset) ordered() []dns.RR {
	rrs := s.rrs[:len(s.rrs):len(s.rrs)]
	if s.pick == nil {
		return rrs
	}
	k := s.pick.next()
	if k == 0 {
		return rrs
	}
	out := make([]dns.RR, 0, len(rrs))
	out = append(out, rrs[k:]...)
	return append(out, rrs[:k]...)
}

func (t *Table) inZone(name string) bool {
	if len(name) == len(t.zone) {
		return name == t.zone
	}
	i := len(name) - len(t.zone) - 1 // the dot before the zone
	if len(name) <= len(t.zone) || name[i] != '.' || name[i+1:] != t.zone {
		return false
	}
	// The dot must end a label, not be an escaped "\." inside one.
	esc := 0
	for j := i - 1; j >= 0 && name[j] == '\\'; j-- {
		esc++
	}
	return esc%2 == 0
}

// label lower-cases s and reports whether it is a usable DNS label.
func label(s string) (string, bool) {
	if len(s) == 0 || len(s) > 63 {
		return "", false
	}
	s = lowerASCII(s)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", false
		}
	}
	return s, true
}

// lowerASCII lower-cases ASCII letters only, without allocating when s is
// already lower case. (strings.ToLower would rewrite invalid UTF-8.)
func lowerASCII(s string) string {
	i := 0
	for ; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			break
		}
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// seconds converts a TTL to whole seconds, clamped to what DNS can carry.
func seconds(d time.Duration) uint32 {
	s := d / time.Second
	switch {
	case s < 0:
		return 0
	case s > 1<<31-1:
		return 1<<31 - 1
	}
	return uint32(s)
}
