package xds

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/berth-dev/berth/discovery"
)

// TranslateOptions shape the resources Translate produces. It is
// comparable (no slices or maps) so a zero value can be told apart.
type TranslateOptions struct {
	// ListenerName names the one HTTP Listener. Gateways look it up by name.
	ListenerName string
	// RouteConfigName is the RDS name the Listener refers to.
	RouteConfigName string
	// ListenerPort is the port Envoy binds (0.0.0.0:ListenerPort). Berth's
	// own gateway ignores it and listens where it is told.
	ListenerPort uint32
	// ConnectTimeout is every cluster's upstream connect timeout.
	ConnectTimeout time.Duration

	// RouteTimeout bounds each routed HTTP request, from the end of the
	// request to the end of the response (Envoy's route timeout; 0 leaves
	// Envoy's default of 15 s). gRPC API listener routes carry none.
	RouteTimeout time.Duration
	// Retries is the number of retries per request on connect failure, a
	// refused stream, or a 503 answer; requests are retried only when
	// their method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE),
	// and no more than RetryBudgetPercent of the active requests may be
	// retries at once (the cluster's retry budget). 0 sends no retry
	// policy at all.
	Retries uint32
	// RetryBudgetPercent is the cluster retry budget (active retries as a
	// percentage of active requests); used only when Retries > 0.
	RetryBudgetPercent float64

	// Circuit breakers, per cluster at default priority. 0 leaves Envoy's
	// default (1024) for that threshold.
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32

	// Outlier detection: an endpoint answering OutlierConsecutive5xx 5xx
	// (or connect failures) in a row is ejected for OutlierBaseEjection
	// times the number of its ejections; at most OutlierMaxEjectionPercent
	// of a cluster is ejected at once. 0 consecutive turns it off.
	OutlierConsecutive5xx     uint32
	OutlierInterval           time.Duration
	OutlierBaseEjection       time.Duration
	OutlierMaxEjectionPercent uint32
}

// DefaultTranslateOptions returns the options Berth runs with.
//
// Retries stay off by default: the Berth gateway rejects routes with a
// retry policy until it implements them; turn them on with Retries.
func DefaultTranslateOptions() TranslateOptions {
	return TranslateOptions{
		ListenerName:              "berth_http",
		RouteConfigName:           "berth_routes",
		ListenerPort:              8080,
		ConnectTimeout:            2 * time.Second,
		RouteTimeout:              15 * time.Second,
		RetryBudgetPercent:        20,
		MaxConnections:            1024,
		MaxPendingRequests:        1024,
		MaxRequests:               1024,
		OutlierConsecutive5xx:     5,
		OutlierInterval:           10 * time.Second,
		OutlierBaseEjection:       30 * time.Second,
		OutlierMaxEjectionPercent: 50,
	}
}

func (o TranslateOptions) check() error {
	if o.ListenerName == "" || o.RouteConfigName == "" {
		return errors.New("xds: translate: listener and route config names are required")
	}
	if o.ConnectTimeout <= 0 {
		return errors.New("xds: translate: connect timeout must be positive")
	}
	if o.RouteTimeout < 0 || o.OutlierInterval < 0 || o.OutlierBaseEjection < 0 {
		return errors.New("xds: translate: timeouts must not be negative")
	}
	if o.RetryBudgetPercent < 0 || o.RetryBudgetPercent > 100 || o.OutlierMaxEjectionPercent > 100 {
		return errors.New("xds: translate: percentages must be within 0..100")
	}
	return nil
}

// Resources is one translated snapshot: typed Envoy resources, each slice
// sorted by name so that output is deterministic.
//
// Listeners, Routes, Clusters and Endpoints are what gateways (Berth's own
// and Envoy) get. APIListeners and APIRoutes are for proxyless gRPC
// clients only: one Listener per gRPC service named "<service>.<namespace>"
// whose api_listener gets its RouteConfiguration over ADS. They are kept
// apart because a proxy cannot use an API listener; proxyless clients get
// them together with the same Clusters and Endpoints.
type Resources struct {
	Listeners []*listener.Listener
	Routes    []*route.RouteConfiguration
	Clusters  []*cluster.Cluster
	Endpoints []*endpoint.ClusterLoadAssignment

	APIListeners []*listener.Listener
	APIRoutes    []*route.RouteConfiguration

	// Warnings are parts of the snapshot that could not be expressed and
	// were left out (a host/path claimed twice, an endpoint without a
	// valid IP, a service without an HTTP port). They do not fail the
	// translation: one service's mistake must not stop every other
	// service's update.
	Warnings []string
}

// ClusterName is the Cluster and ClusterLoadAssignment name of one service
// revision: "<namespace>_<service>_r<revision>".
func ClusterName(namespace, service string, revision int64) string {
	return namespace + "_" + service + "_r" + strconv.FormatInt(revision, 10)
}

// ParseClusterName reverses ClusterName.
func ParseClusterName(name string) (namespace, service string, revision int64, err error) {
	parts := strings.Split(name, "_")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || !strings.HasPrefix(parts[2], "r") {
		return "", "", 0, fmt.Errorf("xds: cluster name %q is not <namespace>_<service>_r<revision>", name)
	}
	revision, err = strconv.ParseInt(parts[2][1:], 10, 64)
	if err != nil {
		return "", "", 0, fmt.Errorf("xds: cluster name %q: bad revision: %w", name, err)
	}
	return parts[0], parts[1], revision, nil
}

// RouteName names the routes of one service: "<namespace>_<service>".
func RouteName(namespace, service string) string { return namespace + "_" + service }

// APIListenerName is the Listener a proxyless gRPC client with target
// "xds:///<service>.<namespace>" asks for. It is the one resource name
// with a '.', because grpc-go names it after the target.
func APIListenerName(namespace, service string) string { return service + "." + namespace }

// APIRouteConfigName is the RouteConfiguration of a service's API
// listener: "<namespace>_<service>_grpc".
func APIRouteConfigName(namespace, service string) string {
	return namespace + "_" + service + "_grpc"
}

// Translate turns a discovery snapshot into Envoy resources. It is pure: the
// same snapshot and options always give equal resources in the same order.
//
//   - one Listener on 0.0.0.0:ListenerPort whose HttpConnectionManager gets
//     its routes over RDS from the ADS stream and ends in the router filter;
//   - one RouteConfiguration with a VirtualHost per route host (domains
//     "host" and "host:*") and, in it, a prefix route per service path,
//     longest prefix first, sending to the service's revisions by weight,
//     with the route timeout and (if enabled) retry policy; a sticky
//     canary split adds a hash policy and takes its random value from
//     discovery.CohortHeader, canary first (stickyCohorts);
//   - one EDS Cluster (circuit breakers, outlier detection) and one
//     ClusterLoadAssignment per service revision, exposed or not, holding
//     the revision's ready endpoints, and its draining ones marked
//     DRAINING, on the service's first HTTP-speaking port;
//   - for each service whose first HTTP-speaking port is gRPC, an API
//     listener and its RouteConfiguration for proxyless gRPC clients.
//
// Server.Update uses the incremental form (translateNext), which gives the
// same resources while rebuilding only the services that changed.
func Translate(snap *discovery.Snapshot, opts TranslateOptions) (*Resources, error) {
	t, err := translateNext(nil, snap, opts)
	if err != nil {
		return nil, err
	}
	return t.resources(), nil
}

// translatedService is everything one service contributes, besides its
// routes in the shared RouteConfiguration.
type translatedService struct {
	src         discovery.Service
	clusters    []*cluster.Cluster
	endpoints   []*endpoint.ClusterLoadAssignment
	apiListener *listener.Listener        // nil unless the service speaks gRPC
	apiRoute    *route.RouteConfiguration // with apiListener
	warnings    []string
}

func translateService(svc *discovery.Service, opts TranslateOptions) (*translatedService, error) {
	key := svc.Namespace + "/" + svc.Name
	ts := &translatedService{src: *svc}
	port, hasPort := httpPort(svc.Ports)
	if !hasPort && len(svc.Revisions) > 0 {
		ts.warnings = append(ts.warnings, fmt.Sprintf("service %s: no http, http2 or grpc port: its clusters have no endpoints", key))
	}
	for _, rev := range svc.Revisions {
		name := ClusterName(svc.Namespace, svc.Name, rev.Number)
		ts.clusters = append(ts.clusters, edsCluster(name, port, opts))
		cla, warns := loadAssignment(name, key, rev, port, hasPort)
		ts.endpoints = append(ts.endpoints, cla)
		ts.warnings = append(ts.warnings, warns...)
	}
	if hasPort && port.Protocol == discovery.ProtocolGRPC {
		if action := weightedAction(svc); action != nil {
			l, rc, err := apiListener(svc, action)
			if err != nil {
				return nil, err
			}
			ts.apiListener, ts.apiRoute = l, rc
		}
	}
	return ts, nil
}

// buildRoutes makes the gateways' RouteConfiguration from every service in
// snapshot order. A host and prefix claimed twice goes to the first
// service (namespace, name); the others get a warning.
func buildRoutes(services []discovery.Service, opts TranslateOptions) (*route.RouteConfiguration, []string) {
	type hostRoutes struct {
		routes []*route.Route
		owner  map[string]string // prefix -> service key
	}
	var warnings []string
	hosts := map[string]*hostRoutes{}
	// The oldest service first: a host and path two services claim goes
	// to the older (the oldest claim wins, as at apply).
	order := make([]int, 0, len(services))
	for i := range services {
		if services[i].Route != nil {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return services[a].Route.Since.Compare(services[b].Route.Since)
	})
	for _, i := range order {
		svc := &services[i]
		key := svc.Namespace + "/" + svc.Name
		paths := svc.Route.Paths
		if len(paths) == 0 {
			paths = []string{"/"}
		}
		for _, h := range svc.Route.Hosts {
			host := strings.ToLower(strings.TrimSpace(h))
			if host == "" {
				continue
			}
			hr := hosts[host]
			if hr == nil {
				hr = &hostRoutes{owner: map[string]string{}}
				hosts[host] = hr
			}
			for _, p := range paths {
				if owner, taken := hr.owner[p]; taken {
					if owner != key {
						warnings = append(warnings, fmt.Sprintf("service %s: host %s path %s already routed to %s", key, host, p, owner))
					}
					continue
				}
				hr.owner[p] = key
				if r := canaryRoute(svc, p, opts); r != nil {
					hr.routes = append(hr.routes, r) // before the weighted route: first match wins
				}
				hr.routes = append(hr.routes, serviceRoute(svc, p, opts))
			}
		}
	}
	rc := &route.RouteConfiguration{Name: opts.RouteConfigName}
	for _, host := range sortedKeys(hosts) {
		routes := hosts[host].routes
		// Envoy takes the first matching route: longest prefix first.
		slices.SortStableFunc(routes, func(a, b *route.Route) int {
			return len(b.GetMatch().GetPrefix()) - len(a.GetMatch().GetPrefix())
		})
		domains := []string{host}
		if !strings.Contains(host, "*") {
			domains = append(domains, host+":*")
		}
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{Name: host, Domains: domains, Routes: routes})
	}
	return rc, warnings
}

func httpListener(opts TranslateOptions) (*listener.Listener, error) {
	routerCfg, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, fmt.Errorf("xds: translate: router config: %w", err)
	}
	manager := &hcm.HttpConnectionManager{
		StatPrefix: opts.ListenerName,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: opts.RouteConfigName,
		}},
		// An edge proxy: the peer is the client, X-Forwarded-For gets it.
		UseRemoteAddress: wrapperspb.Bool(true),
		HttpFilters: []*hcm.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerCfg},
		}},
	}
	if err := manager.ValidateAll(); err != nil {
		return nil, fmt.Errorf("xds: translate: http connection manager: %w", err)
	}
	managerCfg, err := anypb.New(manager)
	if err != nil {
		return nil, fmt.Errorf("xds: translate: http connection manager: %w", err)
	}
	return &listener.Listener{
		Name: opts.ListenerName,
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address:       "0.0.0.0",
			PortSpecifier: &core.SocketAddress_PortValue{PortValue: opts.ListenerPort},
		}}},
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: managerCfg},
			}},
		}},
	}, nil
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

// weightedAction sends to the service's revisions by weight: a single
// revision with weight goes to its cluster directly. Nil when no revision
// takes traffic.
func weightedAction(svc *discovery.Service) *route.RouteAction {
	var weighted []*route.WeightedCluster_ClusterWeight
	for _, rev := range svc.Revisions {
		if rev.Weight == 0 {
			continue
		}
		weighted = append(weighted, &route.WeightedCluster_ClusterWeight{
			Name:   ClusterName(svc.Namespace, svc.Name, rev.Number),
			Weight: wrapperspb.UInt32(rev.Weight),
		})
	}
	switch len(weighted) {
	case 0:
		return nil
	case 1:
		return &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: weighted[0].Name}}
	}
	return &route.RouteAction{ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: weighted}}}
}

// serviceRoute sends prefix to the service's revisions by weight, with the
// route timeout and retry policy of opts.
func serviceRoute(svc *discovery.Service, prefix string, opts TranslateOptions) *route.Route {
	r := &route.Route{
		Name:  RouteName(svc.Namespace, svc.Name),
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
	}
	action := weightedAction(svc)
	if action == nil {
		// Exposed but nothing to send to: answer like an empty cluster.
		r.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 503,
			Body:   &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "no revision of " + svc.Namespace + "/" + svc.Name + " takes traffic\n"}},
		}}
		return r
	}
	stickyCohorts(action, svc)
	if opts.RouteTimeout > 0 {
		action.Timeout = durationpb.New(opts.RouteTimeout)
	}
	if opts.Retries > 0 {
		action.RetryPolicy = retryPolicy(opts.Retries)
	}
	r.Action = &route.Route_Route{Route: action}
	return r
}

// stickyCohorts makes a split sticky when the route has a sticky key: a
// hash_policy names the header or cookie that identifies a user, and the
// weighted clusters take their random value from discovery.CohortHeader with
// the canary listed first. Envoy picks cluster i where value % total
// (100) falls in the i-th run of weights, so a cohort below the canary's
// weight goes to the canary, and raising the weight only moves cohorts
// from stable to canary. A proxy in front of Envoy sets the header from
// the hash; Berth's gateway does it itself. A single cluster is left as
// it is: nothing to choose.
func stickyCohorts(action *route.RouteAction, svc *discovery.Service) {
	rt := svc.Route
	wc := action.GetWeightedClusters()
	if rt == nil || wc == nil || (rt.StickyHeader == "" && rt.StickyCookie == "") {
		return
	}
	canary := ClusterName(svc.Namespace, svc.Name, rt.CanaryRevision)
	if i := slices.IndexFunc(wc.Clusters, func(c *route.WeightedCluster_ClusterWeight) bool { return c.GetName() == canary }); i > 0 {
		c := wc.Clusters[i]
		wc.Clusters = slices.Insert(slices.Delete(wc.Clusters, i, i+1), 0, c)
	}
	wc.RandomValueSpecifier = &route.WeightedCluster_HeaderName{HeaderName: discovery.CohortHeader}
	policy := &route.RouteAction_HashPolicy{}
	if rt.StickyHeader != "" {
		policy.PolicySpecifier = &route.RouteAction_HashPolicy_Header_{Header: &route.RouteAction_HashPolicy_Header{HeaderName: rt.StickyHeader}}
	} else {
		policy.PolicySpecifier = &route.RouteAction_HashPolicy_Cookie_{Cookie: &route.RouteAction_HashPolicy_Cookie{Name: rt.StickyCookie}}
	}
	action.HashPolicy = []*route.RouteAction_HashPolicy{policy}
}

// canaryRoute sends requests that carry the rollout's canary header to the
// canary revision, whatever the weights; nil without a canary header.
func canaryRoute(svc *discovery.Service, prefix string, opts TranslateOptions) *route.Route {
	rt := svc.Route
	if rt == nil || rt.CanaryHeader == "" || rt.CanaryRevision == 0 {
		return nil
	}
	action := &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: ClusterName(svc.Namespace, svc.Name, rt.CanaryRevision)}}
	if opts.RouteTimeout > 0 {
		action.Timeout = durationpb.New(opts.RouteTimeout)
	}
	if opts.Retries > 0 {
		action.RetryPolicy = retryPolicy(opts.Retries)
	}
	return &route.Route{
		Name: RouteName(svc.Namespace, svc.Name) + "_canary",
		Match: &route.RouteMatch{
			PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix},
			Headers: []*route.HeaderMatcher{{Name: rt.CanaryHeader, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
				StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: rt.CanaryValue}}}}},
		},
		Action: &route.Route_Route{Route: action},
	}
}

// idempotentMethods are the methods a request may be retried for.
var idempotentMethods = []string{"DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE"}

// retryPolicy retries on connect failure, a refused stream and a 503, and
// only requests with an idempotent method: Envoy applies
// retriable_request_headers to every retry condition. The budget that caps
// retries lives on the cluster (circuit breakers).
func retryPolicy(n uint32) *route.RetryPolicy {
	rp := &route.RetryPolicy{
		RetryOn:              "connect-failure,refused-stream,retriable-status-codes",
		NumRetries:           wrapperspb.UInt32(n),
		RetriableStatusCodes: []uint32{503},
	}
	for _, m := range idempotentMethods {
		rp.RetriableRequestHeaders = append(rp.RetriableRequestHeaders, &route.HeaderMatcher{
			Name: ":method",
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
				MatchPattern: &matcher.StringMatcher_Exact{Exact: m},
			}},
		})
	}
	return rp
}

// apiListener is a proxyless gRPC client's view of a service: a Listener
// named after the xds:/// target whose api_listener is an
// HttpConnectionManager getting its one-host RouteConfiguration over ADS
// and ending in the router filter (grpc-go requires it).
func apiListener(svc *discovery.Service, action *route.RouteAction) (*listener.Listener, *route.RouteConfiguration, error) {
	name := APIListenerName(svc.Namespace, svc.Name)
	rcName := APIRouteConfigName(svc.Namespace, svc.Name)
	routerCfg, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, nil, fmt.Errorf("xds: translate: router config: %w", err)
	}
	manager := &hcm.HttpConnectionManager{
		StatPrefix: RouteName(svc.Namespace, svc.Name),
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: rcName,
		}},
		HttpFilters: []*hcm.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerCfg},
		}},
	}
	managerCfg, err := anypb.New(manager)
	if err != nil {
		return nil, nil, fmt.Errorf("xds: translate: api listener %s: %w", name, err)
	}
	l := &listener.Listener{
		Name:        name,
		ApiListener: &listener.ApiListener{ApiListener: managerCfg},
	}
	rc := &route.RouteConfiguration{
		Name: rcName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{name, "*"},
			Routes: []*route.Route{{
				Name:   RouteName(svc.Namespace, svc.Name),
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: action},
			}},
		}},
	}
	return l, rc, nil
}

func edsCluster(name string, port discovery.Port, opts TranslateOptions) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(opts.ConnectTimeout),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	th := &cluster.CircuitBreakers_Thresholds{Priority: core.RoutingPriority_DEFAULT}
	setU32 := func(dst **wrapperspb.UInt32Value, v uint32) {
		if v > 0 {
			*dst = wrapperspb.UInt32(v)
		}
	}
	setU32(&th.MaxConnections, opts.MaxConnections)
	setU32(&th.MaxPendingRequests, opts.MaxPendingRequests)
	setU32(&th.MaxRequests, opts.MaxRequests)
	if opts.Retries > 0 {
		th.RetryBudget = &cluster.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       &typev3.Percent{Value: opts.RetryBudgetPercent},
			MinRetryConcurrency: wrapperspb.UInt32(3),
		}
	}
	if th.MaxConnections != nil || th.MaxPendingRequests != nil || th.MaxRequests != nil || th.RetryBudget != nil {
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{th}}
	}
	if opts.OutlierConsecutive5xx > 0 {
		od := &cluster.OutlierDetection{
			Consecutive_5Xx:                    wrapperspb.UInt32(opts.OutlierConsecutive5xx),
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(opts.OutlierConsecutive5xx),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			MaxEjectionPercent:                 wrapperspb.UInt32(opts.OutlierMaxEjectionPercent),
		}
		if opts.OutlierInterval > 0 {
			od.Interval = durationpb.New(opts.OutlierInterval)
		}
		if opts.OutlierBaseEjection > 0 {
			od.BaseEjectionTime = durationpb.New(opts.OutlierBaseEjection)
		}
		c.OutlierDetection = od
	}
	if port.Protocol == discovery.ProtocolHTTP2 || port.Protocol == discovery.ProtocolGRPC {
		// Envoy speaks HTTP/1.1 upstream unless told; gRPC needs HTTP/2.
		opt, err := anypb.New(&upstreamhttp.HttpProtocolOptions{
			UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
						Http2ProtocolOptions: &core.Http2ProtocolOptions{},
					},
				},
			},
		})
		if err == nil { // cannot fail for a registered message
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: opt}
		}
	}
	return c
}

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// loadAssignment lists the revision's ready endpoints, and its draining
// ones marked DRAINING (proxies send them no new requests; the next
// snapshot drops them), one locality per node. Endpoints neither ready nor
// draining are left out. Every locality carries a load-balancing weight
// equal to its ready endpoint count (at least 1): grpc-go drops
// localities without a weight, and equal per-endpoint shares keep the
// spread even.
func loadAssignment(name, serviceKey string, rev discovery.Revision, port discovery.Port, hasPort bool) (*endpoint.ClusterLoadAssignment, []string) {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	if !hasPort {
		return cla, nil
	}
	var warns []string
	byNode := map[string][]*endpoint.LbEndpoint{}
	ready := map[string]uint32{}
	for _, e := range rev.Endpoints {
		health := core.HealthStatus_HEALTHY
		switch {
		case e.Draining:
			health = core.HealthStatus_DRAINING
		case !e.Ready:
			continue
		}
		ip, err := netip.ParseAddr(e.IP)
		if err != nil {
			warns = append(warns, fmt.Sprintf("service %s revision %d: instance %s: bad IP %q", serviceKey, rev.Number, e.Instance, e.IP))
			continue
		}
		if health == core.HealthStatus_HEALTHY {
			ready[e.Node]++
		}
		byNode[e.Node] = append(byNode[e.Node], &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Protocol:      core.SocketAddress_TCP,
					Address:       ip.String(),
					PortSpecifier: &core.SocketAddress_PortValue{PortValue: port.Port},
				}}},
				Hostname: e.Instance,
			}},
			HealthStatus: health,
		})
	}
	for _, node := range sortedKeys(byNode) {
		eps := byNode[node]
		slices.SortFunc(eps, func(a, b *endpoint.LbEndpoint) int {
			return cmp.Or(
				cmp.Compare(a.GetEndpoint().GetAddress().GetSocketAddress().GetAddress(), b.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()),
				cmp.Compare(a.GetEndpoint().GetHostname(), b.GetEndpoint().GetHostname()),
			)
		})
		cla.Endpoints = append(cla.Endpoints, &endpoint.LocalityLbEndpoints{
			Locality:            &core.Locality{Zone: "berth", SubZone: node},
			LbEndpoints:         eps,
			LoadBalancingWeight: wrapperspb.UInt32(max(1, ready[node])),
		})
	}
	return cla, warns
}

// httpPort is the service's first port speaking HTTP (http, http2, grpc;
// an empty protocol means http).
func httpPort(ports []discovery.Port) (discovery.Port, bool) {
	for _, p := range ports {
		switch p.Protocol {
		case "", discovery.ProtocolHTTP, discovery.ProtocolHTTP2, discovery.ProtocolGRPC:
			if p.Port > 0 && p.Port <= 65535 {
				return p, true
			}
		}
	}
	return discovery.Port{}, false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// validator is what protoc-gen-validate generates on every Envoy message.
type validator interface {
	proto.Message
	ValidateAll() error
}

// Validate checks every resource with its generated ValidateAll.
func (r *Resources) Validate() error {
	var errs []error
	check := func(kind, name string, v validator) {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", kind, name, err))
		}
	}
	for _, l := range r.Listeners {
		check("listener", l.GetName(), l)
	}
	for _, rc := range r.Routes {
		check("route configuration", rc.GetName(), rc)
	}
	for _, c := range r.Clusters {
		check("cluster", c.GetName(), c)
	}
	for _, e := range r.Endpoints {
		check("cluster load assignment", e.GetClusterName(), e)
	}
	for _, l := range r.APIListeners {
		check("api listener", l.GetName(), l)
	}
	for _, rc := range r.APIRoutes {
		check("api route configuration", rc.GetName(), rc)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("xds: invalid resources: %w", err)
	}
	return nil
}
