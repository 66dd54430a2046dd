// Package xds owns the translation of the discovery snapshot into Envoy v3
// resources, the aggregated discovery service (ADS) that serves them to
// gateways (Berth's own and real Envoy) and to proxyless gRPC clients, the
// record of which client has ACKed or NACKed which version, and the Load
// Reporting Service (LRS) that gateways send per-revision request counts to.
//
// Translate is a pure function: discovery.Snapshot in, typed Envoy resources
// out, no I/O. Server.Update translates incrementally (translateNext): a
// service equal to the previous snapshot's keeps its resources (the same
// pointers), so what changed is found by pointer comparison, and only new
// or changed resources are checked with ValidateAll. Consistency (what
// Snapshot.Consistent checks, extended to API listeners, which it does not
// understand, and to route -> cluster references) is checked on what
// changed, before anything is published.
//
// The package must not read etcd, build discovery snapshots, or decide
// rollout policy: it only serves what it is given, reports ACKs, and sums
// load reports (requests, outcomes and a latency histogram per revision,
// over a sliding window).
//
//	discovery.Snapshot --translateNext--> translation (6 resource sets by name)
//	        |                                   | diff: updated/removed names
//	        v                                   v
//	  state of the world                   delta (incremental)
//	  SnapshotCache, one snapshot          deltaCache per type: only the
//	  per view, each type versioned        changed resources, marshalled
//	  by the version that last changed it  once, to every delta stream
//
// # Views
//
// Gateways (any node whose user_agent_name does not start with "gRPC") see
// the HTTP Listener, its RouteConfiguration, the Clusters and the
// ClusterLoadAssignments. Proxyless gRPC clients (grpc-go and the other gRPC
// libraries name themselves "gRPC ...") see one API listener per gRPC
// service, its RouteConfiguration, and the same Clusters and
// ClusterLoadAssignments. A proxy cannot use an API listener, so gateways
// never get one. Delta streams are served the gateway view (grpc-go speaks
// only state of the world).
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
//	API Listener         <service>.<namespace>      (the xds:/// target; the one name with a '.')
//	API RouteConfig      <namespace>_<service>_grpc
//
// # Versions and ACKs
//
// Versions are discovery snapshot versions (etcd revisions; they only grow).
// On a state-of-the-world stream each type's version_info is the last
// snapshot version that changed that type in the client's view, so a type
// that did not change is not sent again. On a delta stream each resource's
// version is the snapshot that last changed it, and system_version_info the
// snapshot the response reflects.
//
// "Client C runs version V for type T" (WaitForAck, GatewayStatus.Acked):
// state of the world: C ACKed a version_info at least the last version up to
// V that changed T. Delta: C ACKed every response sent for T, and V was
// published when the server last found nothing more to send it, or was
// published since without touching anything C subscribed to (the delta
// cache tells which watches a change answers). WaitForAck(V) returns when
// every connected client runs V for every type it subscribed to.
//
// # NACKs
//
// go-control-plane's snapshot cache answers a NACK (whose version_info
// names the last good version) by re-sending the rejected snapshot at
// once, forever. The Server records the NACK and then tells the cache the
// client holds the rejected version, so nothing is re-sent until the type
// changes again. The delta server records what it sent as held, so a delta
// NACK is not re-sent either; the stream counts as rejecting until it ACKs
// a later response.
//
// # Load reports
//
// LRS streams are told to report every cluster every
// Config.LoadReportInterval. Reports are summed per cluster (= revision)
// into one-second buckets over Config.LoadWindow; Server.Load answers
// requests, successes, errors and the error rate of a revision over a
// window, for rollout analysis.
package xds
