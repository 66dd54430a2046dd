// Package dns is Berth's service-discovery DNS server, authoritative for the
// cluster zone (berth.internal. by default).
//
// It owns answering from a discovery snapshot: Update turns a
// *discovery.Snapshot into an immutable answer Table and swaps it in
// atomically, so a query never waits for an update. Names outside the zone
// are forwarded to configured upstream resolvers, for loopback and pod
// network clients only, through a small TTL-honouring cache (see Hostile
// clients below).
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
// Hostile clients (the rules a public-facing resolver keeps):
//
//   - Forwarding is for loopback and pod clients only, and only for
//     recursive (RD) class IN queries that are not zone transfers; CH
//     queries such as version.bind, AXFR/IXFR of outside names and RD=0
//     queries get REFUSED. Each client address has its own share of
//     forwarding (MaxForwardsPerClient in flight, ForwardRatePerClient a
//     second), so one pod flooding outside names gets SERVFAIL for its
//     excess while other pods resolve.
//   - The forwarding cache keys on the question and the DO and CD bits (as
//     CoreDNS does) and is bounded by entries and by bytes.
//   - The DO bit is echoed (RFC 3225 §3) on both paths; two OPT records or
//     a question without its class get FORMERR; TC is set only when answer
//     or authority records were cut, never for dropped glue (RFC 2181 §9).
//   - TCP: a per-client connection cap besides the global one; answers
//     are written as they are ready, so a slow forward never holds back a
//     zone answer on the same connection (RFC 7766 §6.2.1.1).
//   - Loops: upstreams given by name are resolved once at start; an
//     upstream that is the server itself or in NoForwardTo (the other
//     Berth DNS servers) is refused by New (dropped with a warning when
//     it was read from resolv.conf rather than given).
//   - Optional response rate limiting per client /24 or /56 for UDP, with
//     slip (RateLimit): off for node-local servers, on for a host
//     listener that is not on loopback.
//
// It must not know about etcd, the control plane or the node agent: it only
// ever sees snapshots handed to Update. Wiring (which address to bind, where
// snapshots come from) lives in cmd/berth.
package dns
