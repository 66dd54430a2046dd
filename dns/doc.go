// Package dns is Berth's service-discovery DNS server, authoritative for the
// cluster zone (berth.internal. by default).
//
// It owns answering from a discovery snapshot: Update turns a
// *discovery.Snapshot into an immutable answer Table and swaps it in
// atomically, so a query never waits for an update. Names outside the zone
// are forwarded to configured upstream resolvers, for loopback and pod
// network clients only, through a small TTL-honouring cache.
//
// Names in the zone:
//
//	berth.internal.                            SOA, NS (apex)
//	ns.dns.berth.internal.                     A/AAAA of the server itself, when bound to a specific address
//	svc.berth.internal.                        empty non-terminal
//	<ns>.svc.berth.internal.                   empty non-terminal
//	<svc>.<ns>.svc.berth.internal.             A/AAAA of the serving endpoints (below)
//	<instance>.<svc>.<ns>.svc.berth.internal.  A/AAAA of that instance, when ready and not draining
//	_tcp.<svc>..., _udp.<svc>...               empty non-terminals
//	_<port>._tcp.<svc>.<ns>.svc.berth.internal. SRV per serving endpoint, the targets' A/AAAA as additional
//	                                           records (_udp for protocol udp; http, http2, grpc, tcp are TCP)
//
// A name exists from the moment its service is in the snapshot: with no
// ready endpoint it answers NODATA, never NXDOMAIN. Negative answers carry
// the SOA, whose minimum (NegativeTTL) bounds how long they are cached.
//
// Serving endpoints and canary weights: like the gateway, a service's
// addresses are the ready, non-draining endpoints of the revisions whose
// weight is above zero (if none of those has one, every ready endpoint, so a
// name never goes empty while something could serve it). While several
// revisions carry weight, the first address of each A/AAAA answer is chosen
// by a smooth weighted round robin over the revisions, rotating within each
// (see picker): over any N answers a revision's share of first places is
// its weight to within one cycle of the round robin (at most 100 answers)
// out of N. SRV weights are the revision's weight
// spread over its endpoints.
//
// Reverse names: a PTR query for the in-addr.arpa/ip6.arpa name of an
// endpoint in the snapshot (ready or not, until it leaves the snapshot) is
// answered authoritatively with its instance name. Every other reverse
// name, and every other type at those names, is treated as outside the
// zone: forwarded for clients that may recurse, REFUSED for others. The
// server is not authoritative for the reverse zones, so it never says
// NXDOMAIN there.
//
// Two paths give the same answers from the same records:
//
//   - the general path (Table.Answer) over miekg/dns messages: pure, driven
//     by table tests with netip client addresses and no sockets;
//   - the fast path (wire.go): every answer is packed in wire format when
//     the table is built, so a common query costs parsing its header and
//     question in place, one map lookup, and copies into the reader's
//     reused buffer, patching the id, flags and the question (the client's
//     0x20 case comes back as sent), plus the OPT. It allocates nothing.
//     Anything unusual (ANY, AXFR, other classes or opcodes, EDNS options
//     other than cookies and padding, truncation, names outside the zone,
//     malformed packets) takes the general path. Tests and the fuzz target
//     check that both paths agree.
//
// A table is built off the query path, from the previous one: services
// whose DNS-relevant content did not change keep their built (and packed)
// names, so an update touching 1,000 endpoints rebuilds only their
// services. On Linux the server reads one SO_REUSEPORT UDP socket per core.
//
// It must not know about etcd, the control plane or the node agent: it only
// ever sees snapshots handed to Update. Wiring (which address to bind, where
// snapshots come from) lives in cmd/berth.
package dns
