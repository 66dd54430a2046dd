package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
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
	endpoints map[string][]string // CLA cluster name -> healthy "ip:port"
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
		n.endpoints = compiled.(map[string][]string)
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
	direct   *directResponse
	clusters []clusterWeight
}

type clusterWeight struct {
	name   string
	weight uint32
}

type compiledCluster struct {
	name    string
	edsName string
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
		clas, err := decodeResources(resp, func() *endpoint.ClusterLoadAssignment { return &endpoint.ClusterLoadAssignment{} })
		if err != nil {
			return nil, err
		}
		out := make(map[string][]string, len(clas))
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
	switch {
	case len(m.GetHeaders()) > 0:
		return cr, errors.New("header matches are not supported")
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
		case ra.GetRetryPolicy() != nil, len(ra.GetRequestMirrorPolicies()) > 0:
			return cr, errors.New("retry and mirror policies are not supported")
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

func compileCluster(c *cluster.Cluster) (*compiledCluster, error) {
	if c.GetType() != cluster.Cluster_EDS || c.GetClusterType() != nil {
		return nil, fmt.Errorf("cluster %q: discovery type %s is not supported (EDS only)", c.GetName(), c.GetType())
	}
	switch c.GetLbPolicy() {
	case cluster.Cluster_ROUND_ROBIN:
	default:
		return nil, fmt.Errorf("cluster %q: lb policy %s is not supported (ROUND_ROBIN only)", c.GetName(), c.GetLbPolicy())
	}
	if c.GetTransportSocket() != nil {
		return nil, fmt.Errorf("cluster %q: upstream transport sockets (TLS) are not supported", c.GetName())
	}
	cc := &compiledCluster{name: c.GetName(), edsName: c.GetEdsClusterConfig().GetServiceName()}
	if cc.edsName == "" {
		cc.edsName = cc.name
	}
	return cc, nil
}

// compileLoadAssignment returns the healthy (or unknown-health) endpoints
// of the best priority that has any, as "ip:port".
func compileLoadAssignment(cla *endpoint.ClusterLoadAssignment) ([]string, error) {
	byPriority := map[uint32][]string{}
	for _, loc := range cla.GetEndpoints() {
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
				byPriority[p] = append(byPriority[p], netip.AddrPortFrom(ip, uint16(port.PortValue)).String())
			}
		}
	}
	if len(byPriority) == 0 {
		return nil, nil
	}
	return byPriority[slices.Min(slices.Collect(maps.Keys(byPriority)))], nil
}

// buildTable turns accepted state into a routing table. stats resolves the
// metrics of a (route, cluster) pair.
func buildTable(st *xdsState, listenerName, lastVersion string, stats func(route, cluster string) *routeStats) *table {
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
			u = &upstreamCluster{name: name, endpoints: st.endpoints[c.edsName]}
		}
		upstreams[name] = u
		return u
	}
	for _, cv := range rc.vhosts {
		vh := &virtualHost{name: cv.name}
		for _, cr := range cv.routes {
			e := &routeEntry{name: cr.name, prefix: cr.prefix, exact: cr.exact, direct: cr.direct}
			if cr.direct != nil {
				e.directStats = stats(cr.name, "")
			}
			for _, w := range cr.clusters {
				e.clusters = append(e.clusters, weightedCluster{name: w.name, weight: w.weight, cluster: upstream(w.name), stats: stats(cr.name, w.name)})
				e.total += w.weight
			}
			vh.routes = append(vh.routes, e)
		}
		// Longest prefix wins; exact paths before prefixes of equal length.
		slices.SortStableFunc(vh.routes, func(a, b *routeEntry) int {
			if c := cmp.Compare(len(b.prefix), len(a.prefix)); c != 0 {
				return c
			}
			return boolOrder(b.exact, a.exact)
		})
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

func boolOrder(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
