// Package gateway is Berth's own edge data plane: an xDS client that keeps
// an immutable routing table and an HTTP proxy that serves from it.
//
// It owns three things, kept in separate files so each can be replaced:
//
//	ads.go       the ADS client: one aggregated state-of-the-world stream
//	             to the control plane, subscribing (wildcard) to Listener,
//	             RouteConfiguration, Cluster and ClusterLoadAssignment; it
//	             ACKs what it can serve, NACKs the rest with the reason, and
//	             reconnects with backoff while serving the last good config
//	config.go    validation and compilation of xDS resources, and the build
//	             of the routing table (table.go) swapped atomically
//	proxy.go     the forwarder: one request to one upstream endpoint over
//	             pooled keep-alive connections, streaming both ways
//
//	  control plane ──ADS──▶ ads.go ──▶ config.go ──▶ atomic.Pointer[table]
//	                                                          │
//	  client ──HTTP──▶ Gateway.ServeHTTP: host ▶ prefix ▶ cluster (weight)
//	                   ▶ endpoint (round robin) ▶ proxy.go ──▶ upstream
//
// Configuration comes only from xDS. The gateway listens on
// Config.ListenAddr whatever port the Listener resource names (that port is
// for Envoy); it uses the Listener named Config.ListenerName only to find
// its route configuration (RDS name, or inline). Matching: the Host header
// without its port, case-insensitively, against the virtual hosts' domains
// (exact, then "*.suffix" and "prefix.*" wildcards, then "*"); then the
// longest matching path prefix (Envoy takes the first match; Berth's
// translator orders routes longest first, so the two agree). A cluster is
// picked by weight, then one of its healthy endpoints round robin.
//
// What it does not do (yet): delta xDS, header/query/regex matches,
// retries, outlier ejection, HTTP/2 or TLS on either side, WebSockets. A
// resource that asks for one of these is NACKed with a clear reason, never
// half-applied. The package must not talk to etcd or the Berth API: the
// control plane reaches it only through xDS.
package gateway
