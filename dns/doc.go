// Package dns is Berth's service-discovery DNS server, authoritative for the
// cluster zone (berth.internal. by default).
//
// It owns answering from a discovery snapshot: Update turns a
// *discovery.Snapshot into an immutable answer Table (every name's records
// built once, keyed by lower-cased FQDN) and swaps it in atomically, so a
// query is a map lookup and never waits for an update. Names outside the
// zone are forwarded to configured upstream resolvers, for loopback and pod
// network clients only, through a small TTL-honouring cache.
//
// Names in the zone:
//
//	berth.internal.                          SOA, NS (apex)
//	ns.dns.berth.internal.                   A/AAAA of the server itself, when bound to a specific address
//	svc.berth.internal.                      empty non-terminal
//	<ns>.svc.berth.internal.                 empty non-terminal
//	<svc>.<ns>.svc.berth.internal.           A/AAAA of the ready, non-draining endpoints
//	<instance>.<svc>.<ns>.svc.berth.internal. A/AAAA of that instance, when ready and not draining
//
// The answering core (Table.Answer) is pure: tests drive it with *dns.Msg
// values and netip client addresses, with no sockets.
//
// It must not know about etcd, the control plane or the node agent: it only
// ever sees snapshots handed to Update. Wiring (which address to bind, where
// snapshots come from) lives in cmd/berth.
package dns
