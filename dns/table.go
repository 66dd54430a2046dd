package dns

import (
	"net/netip"
	"slices"
	"sync/atomic"
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
// records are built once, in NewTable; a query is a map lookup on the
// lower-cased FQDN. A Table is safe for concurrent use and never changes,
// except for a counter that rotates multi-address answers.
type Table struct {
	zone    string // lower-case, fully qualified
	serial  uint32
	ready   bool // false until the first snapshot: in-zone queries get SERVFAIL
	names   map[string]*node
	apexNS  []dns.RR
	negSOA  []dns.RR // the SOA for authority sections, TTL = min(TTL, minimum)
	allow   []netip.Prefix
	recurse bool // upstreams are configured
	rotate  atomic.Uint32
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
}

func (n *node) get(qtype uint16) []dns.RR {
	for i := range n.sets {
		if n.sets[i].qtype == qtype {
			return n.sets[i].rrs
		}
	}
	return nil
}

func (n *node) add(rr dns.RR) {
	t := rr.Header().Rrtype
	for i := range n.sets {
		if n.sets[i].qtype != t {
			continue
		}
		for _, have := range n.sets[i].rrs {
			if dns.IsDuplicate(have, rr) {
				return
			}
		}
		n.sets[i].rrs = append(n.sets[i].rrs, rr)
		return
	}
	n.sets = append(n.sets, rrset{qtype: t, rrs: []dns.RR{rr}})
}

// anyOrder is which RRset an ANY query gets (RFC 8482: one set suffices).
var anyOrder = [...]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSOA, dns.TypeNS}

// NewTable builds the answer table for snap (nil means an empty snapshot).
// Only cfg's Zone, TTL, NegativeTTL, Upstreams and AllowRecursion matter;
// zero values take their defaults. Services, namespaces and instances whose
// names are not DNS labels, and endpoints whose IP does not parse, are left
// out.
func NewTable(snap *discovery.Snapshot, cfg Config) *Table {
	return newTable(snap, cfg.normalize(), true)
}

func newTable(snap *discovery.Snapshot, cfg Config, ready bool) *Table {
	zone := cfg.Zone
	ttl := seconds(cfg.TTL)
	neg := seconds(cfg.NegativeTTL)
	t := &Table{
		zone:    zone,
		ready:   ready,
		names:   make(map[string]*node),
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
	ns := &dns.NS{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: ttl}, Ns: nsName}
	apex.add(ns)
	t.apexNS = []dns.RR{ns}
	// RFC 2308 section 5: negative answers live min(SOA TTL, SOA minimum).
	t.negSOA = []dns.RR{soa(min(ttl, neg))}
	if cfg.nsAddr.IsValid() && !cfg.nsAddr.IsUnspecified() {
		t.ensure("dns." + zone)
		t.ensure(nsName).add(addrRR(nsName, cfg.nsAddr, ttl))
	}

	if snap == nil {
		return t
	}
	svcZone := "svc." + zone
	for i := range snap.Services {
		svc := &snap.Services[i]
		nsLabel, ok1 := label(svc.Namespace)
		nameLabel, ok2 := label(svc.Name)
		if !ok1 || !ok2 {
			continue
		}
		t.ensure(svcZone)
		t.ensure(nsLabel + "." + svcZone)
		svcName := nameLabel + "." + nsLabel + "." + svcZone
		sn := t.ensure(svcName)
		ready := make(map[string]bool)
		for _, ep := range svc.ReadyEndpoints() {
			ip, err := netip.ParseAddr(ep.IP)
			if err != nil {
				continue
			}
			ip = ip.Unmap().WithZone("")
			sn.add(addrRR(svcName, ip, ttl))
			ready[ep.Instance] = true
		}
		// Every instance name exists; only ready ones have addresses.
		for _, rev := range svc.Revisions {
			for _, ep := range rev.Endpoints {
				inst, ok := label(ep.Instance)
				if !ok {
					continue
				}
				instName := inst + "." + svcName
				in := t.ensure(instName)
				if !ready[ep.Instance] || !ep.Ready || ep.Draining {
					continue
				}
				if ip, err := netip.ParseAddr(ep.IP); err == nil {
					in.add(addrRR(instName, ip.Unmap().WithZone(""), ttl))
				}
			}
		}
	}
	return t
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
// per line, sorted; names that exist without records (empty non-terminals,
// services without ready endpoints) appear as "<name> ; exists". For
// debugging and golden tests; it is not on the query path.
func (t *Table) Records() []string {
	var out []string
	for name, n := range t.names {
		if len(n.sets) == 0 {
			out = append(out, name+" ; exists")
		}
		for _, set := range n.sets {
			for _, rr := range set.rrs {
				out = append(out, rr.String())
			}
		}
	}
	slices.Sort(out)
	return out
}

// Len is the number of names in the table.
func (t *Table) Len() int { return len(t.names) }

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
	var rrs []dns.RR
	if q.Qtype == dns.TypeANY {
		for _, typ := range anyOrder {
			if rrs = n.get(typ); len(rrs) > 0 {
				break
			}
		}
	} else {
		rrs = n.get(q.Qtype)
	}
	if len(rrs) == 0 {
		m.Ns = t.negSOA
		return m, Reply
	}
	m.Answer = t.rotated(rrs)
	if q.Qtype == dns.TypeNS && name == t.zone {
		if n := t.names["ns.dns."+t.zone]; n != nil {
			m.Extra = append(append([]dns.RR(nil), n.get(dns.TypeA)...), n.get(dns.TypeAAAA)...)
		}
	}
	return m, Reply
}

// rotated returns rrs rotated by one more step each call, so clients that
// take the first address spread over all endpoints. Single records are
// returned as they are; the result must not be appended to.
func (t *Table) rotated(rrs []dns.RR) []dns.RR {
	if len(rrs) < 2 {
		return rrs[:len(rrs):len(rrs)]
	}
	k := int(t.rotate.Add(1) % uint32(len(rrs)))
	out := make([]dns.RR, 0, len(rrs))
	out = append(out, rrs[k:]...)
	return append(out, rrs[:k]...)
}

func (t *Table) inZone(name string) bool {
	if len(name) == len(t.zone) {
		return name == t.zone
	}
	return len(name) > len(t.zone) && name[len(name)-len(t.zone)-1] == '.' && name[len(name)-len(t.zone):] == t.zone
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
