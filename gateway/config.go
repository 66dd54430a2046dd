package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// subscribedTypes are the types the gateway asks for, in Envoy's ADS order.
var subscribedTypes = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// xdsState is the accepted configuration per type, compiled. A new state
// is a copy with one type's map replaced; maps are never changed after
// they are built, so a state may be shared.
type xdsState struct {
	versions  map[string]string // type URL -> accepted version
	listeners map[string]*compiledListener
	routes    map[string]*compiledRouteConfig
	clusters  map[string]*compiledCluster
	endpoints map[string][]upstreamAddr // CLA cluster name -> healthy endpoints
}

func newXDSState() *xdsState {
	return &xdsState{versions: map[string]string{}}
}

// with returns a copy of s with typeURL's resources replaced by compiled.
func (s *xdsState) with(typeURL, version string, compiled any) *xdsState {
	n := *s
	n.versions = maps.Clone(s.versions)
	n.versions[typeURL] = version
	switch typeURL {
	case resource.ListenerType:
		n.listeners = compiled.(map[string]*compiledListener)
	case resource.RouteType:
		n.routes = compiled.(map[string]*compiledRouteConfig)
	case resource.ClusterType:
		n.clusters = compiled.(map[string]*compiledCluster)
	case resource.EndpointType:
		n.endpoints = compiled.(map[string][]upstreamAddr)
	}
	return &n
}

type compiledListener struct {
	rdsName string
	inline  *compiledRouteConfig
}

type compiledRouteConfig struct {
	name   string
	vhosts []compiledVirtualHost
}

type compiledVirtualHost struct {
	name    string
	domains []string // lowercased, port part removed
	routes  []compiledRoute
}

type compiledRoute struct {
	name     string
	prefix   string
	exact    bool
	headers  []headerMatcher
	direct   *directResponse
	clusters []clusterWeight
	sticky   *stickyCohort // with weighted clusters' header_name
	timeout  time.Duration
	retry    *retryPolicy
}

type clusterWeight struct {
	name   string
	weight uint32
}

type compiledCluster struct {
	name           string
	edsName        string
	lb             lbPolicy
	choices        int
	connectTimeout time.Duration
	outlier        outlierPolicy
	retries        retryBudget
}

// validator is implemented by every generated Envoy message.
type validator interface {
	proto.Message
	ValidateAll() error
}

// decodeResources unpacks and validates a response's resources as T,
// unwrapping discovery.Resource envelopes (used for TTLs).
func decodeResources[T validator](resp *discoverypb.DiscoveryResponse, newT func() T) ([]T, error) {
	out := make([]T, 0, len(resp.GetResources()))
	for i, a := range resp.GetResources() {
		if a.GetTypeUrl() == resource.APITypePrefix+"envoy.service.discovery.v3.Resource" {
			var wrapped discoverypb.Resource
			if err := anypb.UnmarshalTo(a, &wrapped, proto.UnmarshalOptions{}); err != nil {
				return nil, fmt.Errorf("resource %d: %w", i, err)
			}
			if a = wrapped.GetResource(); a == nil {
				continue // a TTL heartbeat without a body
			}
		}
		if a.GetTypeUrl() != resp.GetTypeUrl() {
			return nil, fmt.Errorf("resource %d has type %s in a %s response", i, a.GetTypeUrl(), resp.GetTypeUrl())
		}
		m := newT()
		if err := anypb.UnmarshalTo(a, m, proto.UnmarshalOptions{}); err != nil {
			return nil, fmt.Errorf("resource %d: %w", i, err)
		}
		if err := m.ValidateAll(); err != nil {
			return nil, fmt.Errorf("resource %d: %w", i, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// compile checks one response and turns it into the gateway's form. An
// error is the NACK's error_detail: it names the resource and the reason.
func compile(resp *discoverypb.DiscoveryResponse, listenerName string) (any, error) {
	switch resp.GetTypeUrl() {
	case resource.ListenerType:
		ls, err := decodeResources(resp, func() *listener.Listener { return &listener.Listener{} })
		if err != nil {
			return nil, err
		}
		return compileListeners(ls, listenerName)
	case resource.RouteType:
		rcs, err := decodeResources(resp, func() *route.RouteConfiguration { return &route.RouteConfiguration{} })
		if err != nil {
			return nil, err
		}
		out := make(map[string]*compiledRouteConfig, len(rcs))
		for _, rc := range rcs {
			c, err := compileRouteConfig(rc)
			if err != nil {
				return nil, err
			}
			if _, dup := out[c.name]; dup {
				return nil, fmt.Errorf("route configuration %q: listed twice", c.name)
			}
			out[c.name] = c
		}
		return out, nil
	case resource.ClusterType:
		cs, err := decodeResources(resp, func() *cluster.Cluster { return &cluster.Cluster{} })
		if err != nil {
			return nil, err
		}
		out := make(map[string]*compiledCluster, len(cs))
		for _, c := range cs {
			cc, err := compileCluster(c)
			if err != nil {
				return nil, err
			}
			if _, dup := out[cc.name]; dup {
				return nil, fmt.Errorf("cluster %q: listed twice", cc.name)
			}
			out[cc.name] = cc
		}
		return out, nil
	case resource.EndpointType:
		clas, err := decodeResources(resp, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
		if err != nil {
			return nil, err
		}
		out := make(map[string][]upstreamAddr, len(clas))
		for _, cla := range clas {
			eps, err := compileLoadAssignment(cla)
			if err != nil {
				return nil, err
			}
			if _, dup := out[cla.GetClusterName()]; dup {
				return nil, fmt.Errorf("cluster load assignment %q: listed twice", cla.GetClusterName())
			}
			out[cla.GetClusterName()] = eps
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected resource type %s", resp.GetTypeUrl())
}

// compileListeners keeps only the listener the gateway serves; others are
// validated and ignored (they are for other proxies).
func compileListeners(ls []*listener.Listener, name string) (map[string]*compiledListener, error) {
	out := map[string]*compiledListener{}
	for _, l := range ls {
		if l.GetName() != name {
			continue
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("listener %q: listed twice", name)
		}
		var manager *hcm.HttpConnectionManager
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains[:len(chains):len(chains)], d)
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				if f.GetName() != wellknown.HTTPConnectionManager && f.GetTypedConfig().GetTypeUrl() != resource.APITypePrefix+"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" {
					continue
				}
				m := &hcm.HttpConnectionManager{}
				if err := anypb.UnmarshalTo(f.GetTypedConfig(), m, proto.UnmarshalOptions{}); err != nil {
					return nil, fmt.Errorf("listener %q: http_connection_manager: %w", name, err)
				}
				manager = m
				break
			}
			if manager != nil {
				break
			}
		}
		if manager == nil {
			return nil, fmt.Errorf("listener %q: no http_connection_manager filter", name)
		}
		if err := manager.ValidateAll(); err != nil {
			return nil, fmt.Errorf("listener %q: http_connection_manager: %w", name, err)
		}
		if err := checkHTTPFilters(manager.GetHttpFilters()); err != nil {
			return nil, fmt.Errorf("listener %q: %w", name, err)
		}
		cl := &compiledListener{}
		switch spec := manager.GetRouteSpecifier().(type) {
		case *hcm.HttpConnectionManager_Rds:
			cl.rdsName = spec.Rds.GetRouteConfigName()
		case *hcm.HttpConnectionManager_RouteConfig:
			rc, err := compileRouteConfig(spec.RouteConfig)
			if err != nil {
				return nil, fmt.Errorf("listener %q: inline %w", name, err)
			}
			cl.inline = rc
		default:
			return nil, fmt.Errorf("listener %q: routes must come from RDS or be inline (scoped routes are not supported)", name)
		}
		out[name] = cl
	}
	return out, nil
}

var routerTypeURL = resource.APITypePrefix + string(proto.MessageName(&router.Router{}))

func checkHTTPFilters(filters []*hcm.HttpFilter) error {
	hasRouter := false
	for _, f := range filters {
		if f.GetName() == wellknown.Router || f.GetTypedConfig().GetTypeUrl() == routerTypeURL {
			hasRouter = true
			continue
		}
		if f.GetIsOptional() {
			continue
		}
		return fmt.Errorf("http filter %q is not supported", f.GetName())
	}
	if !hasRouter {
		return errors.New("http filters: the router filter is required")
	}
	return nil
}

func compileRouteConfig(rc *route.RouteConfiguration) (*compiledRouteConfig, error) {
	out := &compiledRouteConfig{name: rc.GetName()}
	seen := map[string]int{} // domain -> virtual host index
	for vi, vh := range rc.GetVirtualHosts() {
		cv := compiledVirtualHost{name: vh.GetName()}
		if vh.GetRequireTls() != route.VirtualHost_NONE {
			return nil, fmt.Errorf("route configuration %q: virtual host %q: require_tls is not supported", rc.GetName(), vh.GetName())
		}
		for _, d := range vh.GetDomains() {
			d = normalizeDomain(d)
			if other, dup := seen[d]; dup {
				if other == vi {
					continue // "host" and "host:*" in one virtual host
				}
				return nil, fmt.Errorf("route configuration %q: domain %q in virtual hosts %q and %q", rc.GetName(), d, rc.GetVirtualHosts()[other].GetName(), vh.GetName())
			}
			seen[d] = vi
			cv.domains = append(cv.domains, d)
		}
		for i, r := range vh.GetRoutes() {
			cr, err := compileRoute(r)
			if err != nil {
				return nil, fmt.Errorf("route configuration %q: virtual host %q: route %d (%q): %w", rc.GetName(), vh.GetName(), i, r.GetName(), err)
			}
			cv.routes = append(cv.routes, cr)
		}
		out.vhosts = append(out.vhosts, cv)
	}
	return out, nil
}

// normalizeDomain lowercases a domain and drops its port ("host:*" and
// "host:8080" both become "host": the gateway matches hosts without ports).
func normalizeDomain(d string) string {
	d = strings.ToLower(d)
	if i := strings.LastIndexByte(d, ':'); i >= 0 && !strings.HasSuffix(d, "]") {
		d = d[:i]
	}
	return d
}

func compileRoute(r *route.Route) (compiledRoute, error) {
	cr := compiledRoute{name: r.GetName()}
	m := r.GetMatch()
	switch p := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		cr.prefix = p.Prefix
	case *route.RouteMatch_Path:
		cr.prefix, cr.exact = p.Path, true
	default:
		return cr, fmt.Errorf("only prefix and path matches are supported, not %T", p)
	}
	for _, h := range m.GetHeaders() {
		hm, err := compileHeaderMatcher(h)
		if err != nil {
			return cr, err
		}
		cr.headers = append(cr.headers, hm)
	}
	switch {
	case len(m.GetQueryParameters()) > 0:
		return cr, errors.New("query parameter matches are not supported")
	case m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue():
		return cr, errors.New("case-insensitive path matches are not supported")
	case m.GetRuntimeFraction() != nil, m.GetGrpc() != nil, m.GetTlsContext() != nil, len(m.GetDynamicMetadata()) > 0:
		return cr, errors.New("runtime, grpc, tls and metadata matches are not supported")
	}
	switch a := r.GetAction().(type) {
	case *route.Route_Route:
		ra := a.Route
		switch {
		case ra.GetPrefixRewrite() != "", ra.GetRegexRewrite() != nil, ra.GetHostRewriteSpecifier() != nil:
			return cr, errors.New("rewrites are not supported")
		case len(ra.GetRequestMirrorPolicies()) > 0:
			return cr, errors.New("request mirror policies are not supported")
		case ra.GetIdleTimeout() != nil, ra.GetMaxStreamDuration() != nil:
			return cr, errors.New("idle_timeout and max_stream_duration are not supported (timeout is)")
		}
		// Envoy's route timeout: 15 s unless set, 0 disables it.
		cr.timeout = 15 * time.Second
		if t := ra.GetTimeout(); t != nil {
			cr.timeout = t.AsDuration()
		}
		if rp := ra.GetRetryPolicy(); rp != nil {
			p, err := compileRetryPolicy(rp)
			if err != nil {
				return cr, err
			}
			cr.retry = p
		}
		switch cs := ra.GetClusterSpecifier().(type) {
		case *route.RouteAction_Cluster:
			cr.clusters = []clusterWeight{{name: cs.Cluster, weight: 1}}
		case *route.RouteAction_WeightedClusters:
			var total uint64
			for _, w := range cs.WeightedClusters.GetClusters() {
				if w.GetClusterHeader() != "" {
					return cr, errors.New("cluster_header in weighted clusters is not supported")
				}
				total += uint64(w.GetWeight().GetValue())
				if w.GetWeight().GetValue() > 0 {
					cr.clusters = append(cr.clusters, clusterWeight{name: w.GetName(), weight: w.GetWeight().GetValue()})
				}
			}
			if total == 0 || total > 1<<32-1 {
				return cr, fmt.Errorf("weighted clusters: total weight %d out of range", total)
			}
			switch rv := cs.WeightedClusters.GetRandomValueSpecifier().(type) {
			case *route.WeightedCluster_HeaderName:
				sticky, err := compileHashPolicy(ra.GetHashPolicy())
				if err != nil {
					return cr, err
				}
				sticky.header = textproto.CanonicalMIMEHeaderKey(rv.HeaderName)
				cr.sticky = sticky
			case *route.WeightedCluster_UseHashPolicy:
				if rv.UseHashPolicy.GetValue() {
					return cr, errors.New("weighted clusters: use_hash_policy is not supported (header_name is)")
				}
			}
		default:
			return cr, fmt.Errorf("cluster specifier %T is not supported", cs)
		}
	case *route.Route_DirectResponse:
		dr := &directResponse{status: int(a.DirectResponse.GetStatus())}
		if b := a.DirectResponse.GetBody(); b != nil {
			switch s := b.GetSpecifier().(type) {
			case *core.DataSource_InlineString:
				dr.body = s.InlineString
			case *core.DataSource_InlineBytes:
				dr.body = string(s.InlineBytes)
			default:
				return cr, fmt.Errorf("direct response body source %T is not supported", s)
			}
		}
		cr.direct = dr
	default:
		return cr, fmt.Errorf("route action %T is not supported", a)
	}
	return cr, nil
}

// compileHashPolicy reads what a sticky split hashes into a request's
// cohort: at most one hash policy, a header or a cookie without ttl (the
// gateway makes up no cookies). Elsewhere Envoy uses hash policies only
// for ring hash balancing, which the gateway's clusters never use, so the
// gateway reads them only for weighted_clusters with a header_name.
func compileHashPolicy(hp []*route.RouteAction_HashPolicy) (*stickyCohort, error) {
	s := &stickyCohort{}
	switch {
	case len(hp) == 0:
		return s, nil
	case len(hp) > 1:
		return nil, errors.New("hash policy: only one header or cookie policy is supported with weighted clusters' header_name")
	}
	switch p := hp[0].GetPolicySpecifier().(type) {
	case *route.RouteAction_HashPolicy_Header_:
		if p.Header.GetRegexRewrite() != nil {
			return nil, errors.New("hash policy: header regex_rewrite is not supported")
		}
		s.keyHeader = textproto.CanonicalMIMEHeaderKey(p.Header.GetHeaderName())
	case *route.RouteAction_HashPolicy_Cookie_:
		c := p.Cookie
		if c.GetTtl() != nil || c.GetPath() != "" || len(c.GetAttributes()) > 0 {
			return nil, fmt.Errorf("hash policy: cookie %q: ttl, path and attributes (generated cookies) are not supported", c.GetName())
		}
		s.keyCookie = c.GetName()
	default:
		return nil, fmt.Errorf("hash policy %T is not supported with weighted clusters' header_name (header and cookie are)", p)
	}
	return s, nil
}

func compileCluster(c *cluster.Cluster) (*compiledCluster, error) {
	if c.GetType() != cluster.Cluster_EDS || c.GetClusterType() != nil {
		return nil, fmt.Errorf("cluster %q: discovery type %s is not supported (EDS only)", c.GetName(), c.GetType())
	}
	cc := &compiledCluster{name: c.GetName(), edsName: c.GetEdsClusterConfig().GetServiceName(), outlier: defaultOutlierPolicy}
	switch c.GetLbPolicy() {
	case cluster.Cluster_ROUND_ROBIN:
		if c.GetRoundRobinLbConfig().GetSlowStartConfig() != nil {
			return nil, fmt.Errorf("cluster %q: slow start is not supported", c.GetName())
		}
	case cluster.Cluster_LEAST_REQUEST:
		cc.lb, cc.choices = lbLeastRequest, 2
		lc := c.GetLeastRequestLbConfig()
		if n := lc.GetChoiceCount(); n != nil {
			cc.choices = int(n.GetValue())
		}
		if lc.GetActiveRequestBias() != nil || lc.GetSlowStartConfig() != nil {
			return nil, fmt.Errorf("cluster %q: least request active_request_bias and slow start are not supported", c.GetName())
		}
	default:
		return nil, fmt.Errorf("cluster %q: lb policy %s is not supported (ROUND_ROBIN and LEAST_REQUEST only)", c.GetName(), c.GetLbPolicy())
	}
	if c.GetLoadBalancingPolicy() != nil {
		return nil, fmt.Errorf("cluster %q: load_balancing_policy is not supported (use lb_policy)", c.GetName())
	}
	if c.GetTransportSocket() != nil || len(c.GetTransportSocketMatches()) > 0 {
		return nil, fmt.Errorf("cluster %q: upstream transport sockets (TLS) are not supported", c.GetName())
	}
	if len(c.GetHealthChecks()) > 0 {
		return nil, fmt.Errorf("cluster %q: active health checks are not supported (outlier detection is)", c.GetName())
	}
	// Envoy's connect timeout default is 5 s.
	cc.connectTimeout = 5 * time.Second
	if t := c.GetConnectTimeout(); t != nil {
		cc.connectTimeout = t.AsDuration()
	}
	if od := c.GetOutlierDetection(); od != nil {
		cc.outlier = compileOutlier(od)
	}
	cc.retries = retryBudget{maxRetries: 3}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != core.RoutingPriority_DEFAULT {
			continue
		}
		if b := th.GetRetryBudget(); b != nil {
			cc.retries.percent = 20
			if p := b.GetBudgetPercent(); p != nil {
				cc.retries.percent = p.GetValue()
			}
			cc.retries.minConcurrency = 3
			if m := b.GetMinRetryConcurrency(); m != nil {
				cc.retries.minConcurrency = int64(m.GetValue())
			}
		} else if m := th.GetMaxRetries(); m != nil {
			cc.retries.maxRetries = int64(m.GetValue())
		}
	}
	if cc.edsName == "" {
		cc.edsName = cc.name
	}
	return cc, nil
}

// compileOutlier reads the consecutive-failure detectors (the statistical
// ones, success rate and failure percentage, are not enforced).
func compileOutlier(od *cluster.OutlierDetection) outlierPolicy {
	p := outlierPolicy{consecutive5xx: 5, baseEjection: 30 * time.Second, maxEjection: 300 * time.Second, maxPercent: 10}
	if v := od.GetConsecutive_5Xx(); v != nil {
		p.consecutive5xx = int32(v.GetValue())
	}
	if v := od.GetEnforcingConsecutive_5Xx(); v != nil && v.GetValue() == 0 {
		p.consecutive5xx = 0
	}
	// Envoy enforces consecutive gateway failures only when told (default 0%).
	if v := od.GetEnforcingConsecutiveGatewayFailure(); v != nil && v.GetValue() > 0 {
		p.consecutiveGateway = 5
		if n := od.GetConsecutiveGatewayFailure(); n != nil {
			p.consecutiveGateway = int32(n.GetValue())
		}
	}
	if d := od.GetBaseEjectionTime(); d != nil {
		p.baseEjection = d.AsDuration()
	}
	if d := od.GetMaxEjectionTime(); d != nil {
		p.maxEjection = d.AsDuration()
	}
	if v := od.GetMaxEjectionPercent(); v != nil {
		p.maxPercent = int(v.GetValue())
	}
	return p
}

// compileRetryPolicy accepts the retry conditions the gateway implements.
func compileRetryPolicy(rp *route.RetryPolicy) (*retryPolicy, error) {
	p := &retryPolicy{numRetries: 1, backoffBase: 25 * time.Millisecond}
	if n := rp.GetNumRetries(); n != nil {
		p.numRetries = int(n.GetValue())
	}
	if t := rp.GetPerTryTimeout(); t != nil {
		p.perTryTimeout = t.AsDuration()
	}
	// retriable_request_headers: only exact ":method" matches (what Berth's
	// translator sends to keep retries to idempotent methods).
	for _, h := range rp.GetRetriableRequestHeaders() {
		exact := h.GetStringMatch().GetExact()
		if h.GetName() != ":method" || exact == "" || h.GetInvertMatch() || h.GetStringMatch().GetIgnoreCase() {
			return nil, fmt.Errorf("retriable_request_headers: only exact :method matches are supported, got %q", h.GetName())
		}
		p.methods = append(p.methods, exact)
	}
	for on := range strings.SplitSeq(rp.GetRetryOn(), ",") {
		switch on = strings.TrimSpace(on); on {
		case "5xx":
			p.on5xx = true
		case "gateway-error":
			p.onGateway = true
		case "connect-failure":
			p.onConnect = true
		case "reset":
			p.onReset = true
		case "retriable-status-codes":
			for _, c := range rp.GetRetriableStatusCodes() {
				p.statuses = append(p.statuses, int(c))
			}
		case "refused-stream", "":
			// HTTP/2 upstreams only; nothing to do over HTTP/1.1.
		default:
			return nil, fmt.Errorf("retry_on %q is not supported (5xx, gateway-error, connect-failure, reset, retriable-status-codes)", on)
		}
	}
	switch {
	case rp.GetRetryPriority() != nil, len(rp.GetRetryHostPredicate()) > 0, len(rp.GetRetryOptionsPredicates()) > 0:
		return nil, errors.New("retry priority, host and options predicates are not supported")
	case len(rp.GetRetriableHeaders()) > 0, rp.GetRateLimitedRetryBackOff() != nil:
		return nil, errors.New("retriable response headers and rate-limited back-off are not supported")
	case rp.GetPerTryIdleTimeout() != nil:
		return nil, errors.New("per_try_idle_timeout is not supported")
	}
	if b := rp.GetRetryBackOff(); b != nil {
		p.backoffBase = b.GetBaseInterval().AsDuration()
		if m := b.GetMaxInterval(); m != nil {
			p.backoffMax = m.AsDuration()
		}
	}
	if p.backoffMax == 0 {
		p.backoffMax = 10 * p.backoffBase
	}
	return p, nil
}

// compileHeaderMatcher accepts presence, exact, prefix, suffix and
// contains matches (also as string_match, with ignore_case), inverted or
// not; regex and range matches are rejected.
func compileHeaderMatcher(h *route.HeaderMatcher) (headerMatcher, error) {
	name := h.GetName()
	if strings.HasPrefix(name, ":") {
		return headerMatcher{}, fmt.Errorf("header match on pseudo-header %q is not supported", name)
	}
	m := headerMatcher{name: textproto.CanonicalMIMEHeaderKey(name), invert: h.GetInvertMatch(), missingAsEmpty: h.GetTreatMissingHeaderAsEmpty()}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		// No specifier: Envoy matches when the header is present.
		m.kind, m.present = headerPresent, true
	case *route.HeaderMatcher_PresentMatch:
		m.kind, m.present = headerPresent, s.PresentMatch
	// Deprecated in Envoy's API but still served by control planes: the
	// gateway reads them as Envoy does.
	case *route.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 still sent by older control planes
		m.kind, m.value = headerExact, s.ExactMatch
	case *route.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 still sent by older control planes
		m.kind, m.value = headerPrefix, s.PrefixMatch
	case *route.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 still sent by older control planes
		m.kind, m.value = headerSuffix, s.SuffixMatch
	case *route.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 still sent by older control planes
		m.kind, m.value = headerContains, s.ContainsMatch
	case *route.HeaderMatcher_StringMatch:
		sm := s.StringMatch
		m.ignoreCase = sm.GetIgnoreCase()
		switch p := sm.GetMatchPattern().(type) {
		case *matcher.StringMatcher_Exact:
			m.kind, m.value = headerExact, p.Exact
		case *matcher.StringMatcher_Prefix:
			m.kind, m.value = headerPrefix, p.Prefix
		case *matcher.StringMatcher_Suffix:
			m.kind, m.value = headerSuffix, p.Suffix
		case *matcher.StringMatcher_Contains:
			m.kind, m.value = headerContains, p.Contains
		default:
			return headerMatcher{}, fmt.Errorf("header %q: string match %T is not supported", name, p)
		}
		if m.ignoreCase {
			m.value = strings.ToLower(m.value)
		}
	default:
		return headerMatcher{}, fmt.Errorf("header %q: %T matches are not supported", name, s)
	}
	return m, nil
}

// upstreamAddr is an endpoint of a load assignment: "ip:port", and its
// locality ("region/zone/sub_zone"; Berth's control plane puts the node in
// sub_zone), which a retry uses to try another failure domain.
type upstreamAddr struct {
	addr, zone string
}

// compileLoadAssignment returns the healthy (or unknown-health) endpoints
// of the best priority that has any.
func compileLoadAssignment(cla *endpointv3.ClusterLoadAssignment) ([]upstreamAddr, error) {
	byPriority := map[uint32][]upstreamAddr{}
	for _, loc := range cla.GetEndpoints() {
		zone := ""
		if l := loc.GetLocality(); l.GetRegion() != "" || l.GetZone() != "" || l.GetSubZone() != "" {
			zone = l.GetRegion() + "/" + l.GetZone() + "/" + l.GetSubZone()
		}
		for _, lb := range loc.GetLbEndpoints() {
			ep := lb.GetEndpoint()
			if ep == nil {
				return nil, fmt.Errorf("cluster load assignment %q: named endpoints are not supported", cla.GetClusterName())
			}
			sa := ep.GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, fmt.Errorf("cluster load assignment %q: endpoint without a socket address", cla.GetClusterName())
			}
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				return nil, fmt.Errorf("cluster load assignment %q: endpoint address %q is not an IP", cla.GetClusterName(), sa.GetAddress())
			}
			port, ok := sa.GetPortSpecifier().(*core.SocketAddress_PortValue)
			if !ok || port.PortValue == 0 {
				return nil, fmt.Errorf("cluster load assignment %q: endpoint %s needs a port_value", cla.GetClusterName(), ip)
			}
			switch lb.GetHealthStatus() {
			case core.HealthStatus_HEALTHY, core.HealthStatus_UNKNOWN:
				p := loc.GetPriority()
				byPriority[p] = append(byPriority[p], upstreamAddr{addr: netip.AddrPortFrom(ip, uint16(port.PortValue)).String(), zone: zone})
			}
		}
	}
	if len(byPriority) == 0 {
		return nil, nil
	}
	return byPriority[slices.Min(slices.Collect(maps.Keys(byPriority)))], nil
}

// buildTable turns accepted state into a routing table. stats resolves the
// metrics of a (route, cluster) pair; reg hands out the endpoint and
// cluster runtime state shared across tables and learns which are in use
// (the caller retires the rest once the table is published).
func buildTable(st *xdsState, listenerName, lastVersion string, stats func(route, cluster string) *routeStats, reg *registry) *table {
	t := &table{version: lastVersion, versions: maps.Clone(st.versions), exact: map[string]*virtualHost{}}
	l := st.listeners[listenerName]
	if l == nil {
		return t
	}
	t.hasListener = true
	rc := l.inline
	if rc == nil {
		rc = st.routes[l.rdsName]
	}
	if rc == nil {
		return t
	}
	upstreams := map[string]*upstreamCluster{}
	upstream := func(name string) *upstreamCluster {
		if u, ok := upstreams[name]; ok {
			return u
		}
		var u *upstreamCluster
		if c := st.clusters[name]; c != nil {
			addrs := st.endpoints[c.edsName]
			if b, ok := reg.built[name]; ok && b.cluster == c && sameSlice(b.addrs, addrs) {
				// Neither the cluster nor its endpoints changed: the
				// table shares the previous one's (most changes move a
				// single load assignment).
				u = b.upstream
				reg.keep(u)
			} else {
				u = &upstreamCluster{
					name: name, state: reg.cluster(name), lb: c.lb, choices: c.choices,
					connectTimeout: c.connectTimeout, outlier: c.outlier, retries: c.retries,
				}
				for _, a := range addrs {
					u.endpoints = append(u.endpoints, reg.endpointIn(a.addr, a.zone))
				}
			}
			reg.building[name] = builtUpstream{cluster: c, addrs: addrs, upstream: u}
		}
		upstreams[name] = u
		return u
	}
	for _, cv := range rc.vhosts {
		vh := &virtualHost{name: cv.name}
		for _, cr := range cv.routes {
			e := &routeEntry{name: cr.name, prefix: cr.prefix, exact: cr.exact, headers: cr.headers, direct: cr.direct, timeout: cr.timeout, retry: cr.retry}
			if cr.direct != nil {
				e.directStats = stats(cr.name, "")
			}
			var weights []uint32
			for _, w := range cr.clusters {
				e.clusters = append(e.clusters, weightedCluster{name: w.name, weight: w.weight, cluster: upstream(w.name), stats: stats(cr.name, w.name)})
				e.total += w.weight
				weights = append(weights, w.weight)
			}
			e.schedule = weightSchedule(weights)
			if len(e.clusters) > 1 {
				e.sticky = cr.sticky
			}
			vh.routes = append(vh.routes, e) // Envoy's order: the first match wins
		}
		for _, d := range cv.domains {
			switch {
			case d == "*":
				t.catchAll = vh
			case strings.HasPrefix(d, "*"):
				t.suffixes = append(t.suffixes, domainWildcard{part: d[1:], vh: vh})
			case strings.HasSuffix(d, "*"):
				t.prefixes = append(t.prefixes, domainWildcard{part: d[:len(d)-1], vh: vh})
			default:
				t.exact[d] = vh
			}
		}
	}
	longestFirst := func(a, b domainWildcard) int { return cmp.Compare(len(b.part), len(a.part)) }
	slices.SortStableFunc(t.suffixes, longestFirst)
	slices.SortStableFunc(t.prefixes, longestFirst)
	return t
}

// registry keeps one endpoint per address and one clusterState per
// cluster name across routing tables. Only the ADS goroutine changes it;
// the load reporter reads the clusters under mu.
type registry struct {
	maxIdle int

	mu        sync.Mutex
	endpoints map[upstreamAddr]*endpoint
	clusters  map[string]*clusterState
	used      map[upstreamAddr]bool // endpoints in the table being built
	usedCl    map[string]bool

	// built holds the upstream clusters of the last swept table with what
	// they were built from; building those of the table being built. Only
	// the ADS goroutine touches them.
	built, building map[string]builtUpstream
}

type builtUpstream struct {
	cluster  *compiledCluster
	addrs    []upstreamAddr
	upstream *upstreamCluster
}

// sameSlice reports whether a and b are the same slice (compiled states
// share unchanged load assignments).
func sameSlice(a, b []upstreamAddr) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// keep marks a reused upstream cluster and its endpoints as in use.
func (r *registry) keep(u *upstreamCluster) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.usedCl[u.name] = true
	for _, e := range u.endpoints {
		r.used[upstreamAddr{e.addr, e.zone}] = true
	}
}

func newRegistry(maxIdle int) *registry {
	return &registry{maxIdle: maxIdle, endpoints: map[upstreamAddr]*endpoint{}, clusters: map[string]*clusterState{}, used: map[upstreamAddr]bool{}, usedCl: map[string]bool{},
		built: map[string]builtUpstream{}, building: map[string]builtUpstream{}}
}

func (r *registry) endpoint(addr string) *endpoint { return r.endpointIn(addr, "") }

// endpointIn is the endpoint addr in locality zone: one per pair (an
// address in another locality is another endpoint; its zone never changes
// while requests read it).
func (r *registry) endpointIn(addr, zone string) *endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := upstreamAddr{addr, zone}
	r.used[key] = true
	if e, ok := r.endpoints[key]; ok {
		return e
	}
	e := &endpoint{addr: addr, zone: zone, maxIdle: r.maxIdle}
	r.endpoints[key] = e
	return e
}

func (r *registry) cluster(name string) *clusterState {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.usedCl[name] = true
	c, ok := r.clusters[name]
	if !ok {
		c = &clusterState{name: name}
		r.clusters[name] = c
	}
	return c
}

// sweep retires the endpoints and forgets the clusters that the last
// built table did not use, and starts a new round.
func (r *registry) sweep() {
	r.mu.Lock()
	var retired []*endpoint
	for key, e := range r.endpoints {
		if !r.used[key] {
			retired = append(retired, e)
			delete(r.endpoints, key)
		}
	}
	for name := range r.clusters {
		if !r.usedCl[name] {
			delete(r.clusters, name)
		}
	}
	clear(r.used)
	clear(r.usedCl)
	r.built, r.building = r.building, r.built
	clear(r.building)
	r.mu.Unlock()
	for _, e := range retired {
		e.retire()
	}
}

// closeAll retires every endpoint (at shutdown).
func (r *registry) closeAll() {
	r.mu.Lock()
	eps := slices.Collect(maps.Values(r.endpoints))
	r.mu.Unlock()
	for _, e := range eps {
		e.retire()
	}
}
