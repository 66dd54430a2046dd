// Package xds owns the translation of the discovery snapshot into Envoy v3
// resources and the aggregated discovery service (ADS) that serves them to
// gateways, Berth's own and real Envoy alike, together with the record of
// which gateway has ACKed or NACKed which version.
//
// Translate is a pure function: discovery.Snapshot in, typed Envoy resources
// out, no I/O. Server publishes translated resources through
// go-control-plane's snapshot cache, one node-agnostic snapshot shared by
// every gateway, after checking every resource with ValidateAll and the
// whole snapshot with Consistent, so a gateway is never offered something
// the control plane could have known to be wrong.
//
// The package must not read etcd, build discovery snapshots, or decide
// rollout policy: it only serves what it is given and reports ACKs.
//
// # Names
//
// Resource names are built only from namespace and service names (DNS
// labels: [a-z0-9-]) and decimal revision numbers, joined by "_", so they
// never contain '.', ':' or '/', which Envoy's stat names and the common
// stats sinks treat specially, and they parse back unambiguously:
//
//	Listener             berth_http                 (TranslateOptions.ListenerName)
//	RouteConfiguration   berth_routes               (TranslateOptions.RouteConfigName)
//	VirtualHost          the route host, lowercased (one per host)
//	Route                <namespace>_<service>
//	Cluster, CLA         <namespace>_<service>_r<revision>   e.g. default_hello_r1
//
// # Versions
//
// Every resource type of a published snapshot carries the discovery
// snapshot's version as a decimal string, so "gateway G ACKed version N"
// means G runs what snapshot N said. Versions only grow (they are etcd
// revisions).
//
// # NACKs
//
// go-control-plane's snapshot cache answers a NACK (whose version_info
// names the last good version) by re-sending the rejected snapshot at
// once, forever. The Server records the NACK and then tells the cache the
// client holds the rejected version, so nothing is re-sent until a newer
// snapshot is published.
package xds
