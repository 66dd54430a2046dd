// Package gateway is Berth's own edge data plane: an xDS client that keeps
// an immutable routing table and an HTTP proxy that serves from it.
//
// It owns these parts, kept in separate files so each can be replaced:
//
//	ads.go       the ADS client: one aggregated stream to the control
//	             plane, subscribing (wildcard) to Listener,
//	             RouteConfiguration, Cluster and ClusterLoadAssignment; it
//	             ACKs what it can serve, NACKs the rest with the reason, and
//	             reconnects with backoff while serving the last good config.
//	             Delta by default (ads_delta.go, config_delta.go: only the
//	             resources a response adds or updates are compiled, and a
//	             reconnect names the versions held); state of the world with
//	             Config.XDSProtocol "sotw"
//	config.go    validation and compilation of xDS resources, the build of
//	             the routing table (table.go) swapped atomically, and the
//	             registry of per-endpoint/per-cluster state kept across tables
//	endpoint.go  upstream endpoints: keep-alive pools, in-flight counts,
//	             outlier ejection, retry budgets
//	h1request.go the HTTP/1.x request framer: every HTTP/1.x request,
//	             whichever path forwards it, is read and checked here first
//	             (RFC 9112, strictly: see below)
//	fastpath.go  the fast path: the gateway's own HTTP/1.1 connection loop
//	             and forwarder on pooled upstream connections
//	outcome.go   how a request ended, one rule for both paths: what is the
//	             upstream's fault (outlier detection, load-report errors)
//	             and what is the client's (never counted against it)
//	server.go    accept loop, connection limit, shutdown, hand-off to
//	             net/http, access logs
//	proxy.go     the general path's forwarder (net/http + http.Transport):
//	             HTTP/2 (h2c prior knowledge), WebSocket upgrades, chunked
//	             request bodies, HTTP/1.0, Expect, other target forms
//	h2.go        the guard in front of net/http's HTTP/2 server: preface
//	             check, frames read with x/net's Framer and passed on,
//	             rewritten only where RFC 9113 asks what Go's server does
//	             not do
//
//	  control plane ──ADS──▶ ads.go ──▶ config.go ──▶ atomic.Pointer[table]
//	                                                          │
//	  client ──▶ fast path (HTTP/1.1) ─┬─ host ▶ path+headers ▶ cluster
//	       └──▶ net/http (h2c, upgrades, big bodies) ─┘ (weights) ▶ endpoint
//	                                   (round robin | least request,
//	                                    ejected ones skipped) ▶ upstream
//
// Request framing (h1request.go): one framer decides where every HTTP/1.x
// request ends, so the gateway and its upstreams can never disagree about
// it (request smuggling). Content-Length with Transfer-Encoding, two
// Content-Length lines (even equal), a malformed length, obs-fold, a bare
// CR or LF, whitespace before a colon, a missing or repeated Host, an
// HTTP/0.9 line: 400 and the connection closed; a transfer coding other
// than chunked: 501; a head over MaxHeaderBytes or MaxHeaderCount lines:
// 431. Empty lines before a request are skipped. The client's framing lines
// never go upstream: the fast path writes one canonical Content-Length,
// net/http's Transport its own framing; Connection options cannot remove
// framing, Host or the gateway's own headers. A request handed to the
// general path is the last one on its connection (the answer says
// Connection: close), so net/http never frames a request by its own,
// laxer rules (it accepts CL with TE, and equal duplicate lengths).
// FuzzRequestHead checks the framer against net/http's reader.
//
// Outcomes (outcome.go): only what the upstream did counts against it.
// A client that goes away is logged and counted as 499; a short,
// malformed or too slow body gets 400/408 and closes the connection; none
// of these ejects an endpoint, is retried, or is an error in the load
// reports that canary analysis reads. A request whose streamed body was
// already sent is never retried; a stale pooled connection is retried
// only with the whole request in hand. A client's X-Request-Id is kept
// only with TrustRequestID.
//
// Configuration comes only from xDS. The gateway listens on
// Config.ListenAddr whatever port the Listener resource names (that port is
// for Envoy); it uses the Listener named Config.ListenerName only to find
// its route configuration (RDS name, or inline). Matching follows Envoy:
// the Host header without its port, case-insensitively, against the
// virtual hosts' domains (exact, then "*.suffix" and "prefix.*" wildcards,
// then "*"); then the first route in order whose path (prefix or exact,
// on the raw path without the query) and headers (present, exact, prefix,
// suffix, contains, optionally ignoring case or inverted) match. A cluster
// is picked by weight from a precomputed smooth weighted round-robin
// schedule (exact within every window of the reduced total weight) -- or,
// on a split whose weighted_clusters name a header_name (sticky canary
// cohorts), by the request's cohort: that header's number if it has one,
// else FNV-1a 64 of the route's one header or cookie hash_policy value,
// sent upstream in that header; cohort % total weight picks along the
// clusters in order, as Envoy does -- then
// an endpoint by the cluster's lb_policy (ROUND_ROBIN or LEAST_REQUEST with
// choice_count samples), skipping ejected endpoints (Envoy's panic mode
// when more than half are ejected).
//
// Per route: timeout (Envoy's default 15 s; 0 disables; 504 when it
// passes), retry_policy (5xx, gateway-error, connect-failure, reset,
// retriable-status-codes; num_retries; per_try_timeout; jittered back-off)
// for idempotent requests whose request can be sent again, within the
// cluster's retry budget (circuit_breakers retry_budget, else max_retries,
// default 3). Per cluster: connect_timeout, outlier_detection's
// consecutive_5xx and consecutive_gateway_failure (with Envoy's defaults
// when the cluster has none), base/max ejection time, max_ejection_percent
// (at least one). Endpoints whose health_status is DRAINING (or that left
// the assignment) get no new requests; requests in flight on them finish,
// then their connections close.
//
// A weighted cluster with no endpoint (a revision whose instances all went
// away, or whose load assignment has not arrived) gives its share to the
// first other cluster of the route with weight and endpoints, where Envoy
// would answer 503.
//
// HTTP/2 (h2c with prior knowledge on the plain listener, whether the fast
// path hands the connection over or not; ALPN h2 on the TLS listener)
// passes the h2spec conformance suite, all 145 cases on both listeners
// (TestH2spec). In particular: a request carrying a connection-specific
// field (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding,
// Upgrade, TE other than "trailers") is reset with PROTOCOL_ERROR before
// any handler runs and never reaches an upstream (RFC 9113 8.2.2), and
// ServeHTTP resets such a request itself should one get past the server;
// an invalid preface closes the connection without an answer (on the plain
// listener: a first line that starts like the preface and is not it, or
// is no HTTP/1.x request line at all); SETTINGS values are applied in
// order; frames larger than 16 KiB (the SETTINGS_MAX_FRAME_SIZE it
// advertises) are a FRAME_SIZE_ERROR; TLS 1.2 suites on RFC 7540's block
// list get INADEQUATE_SECURITY. Requests of HTTP/2 over TLS have no
// Request.TLS (net/http serves them behind the guard as h2c); they are
// still forwarded with X-Forwarded-Proto: https.
//
// Load reports (LRS) carry, per cluster and interval, the requests issued,
// their outcomes, and a latency histogram of the time to the response
// head as load_metric_stats "berth.latency_ms.le_<bound>".
//
// What it does not do (yet): query/regex/range matches,
// rewrites, mirrors, TLS to upstreams, HTTP/2 to upstreams, h2c via
// Upgrade (served as HTTP/1.1), the statistical outlier detectors. A resource that asks for something unsupported is NACKed with a
// clear reason, never half-applied. The package must not talk to etcd or
// the Berth API: the control plane reaches it only through xDS.
package gateway
