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
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/discovery"
)

// TranslateOptions shape the resources Translate produces.
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
}

// DefaultTranslateOptions returns the options Berth runs with.
func DefaultTranslateOptions() TranslateOptions {
	return TranslateOptions{
		ListenerName:    "berth_http",
		RouteConfigName: "berth_routes",
		ListenerPort:    8080,
		ConnectTimeout:  2 * time.Second,
	}
}

// Resources is one translated snapshot: typed Envoy resources, each slice
// sorted by name so that output is deterministic.
type Resources struct {
	Listeners []*listener.Listener
	Routes    []*route.RouteConfiguration
	Clusters  []*cluster.Cluster
	Endpoints []*endpoint.ClusterLoadAssignment
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

// Translate turns a discovery snapshot into Envoy resources. It is pure: the
// same snapshot and options always give equal resources in the same order.
//
//   - one Listener on 0.0.0.0:ListenerPort whose HttpConnectionManager gets
//     its routes over RDS from the ADS stream and ends in the router filter;
//   - one RouteConfiguration with a VirtualHost per route host (domains
//     "host" and "host:*") and, in it, a prefix route per service path,
//     longest prefix first, sending to the service's revisions by weight;
//   - one EDS Cluster and one ClusterLoadAssignment per service revision,
//     exposed or not, holding the revision's ready, non-draining endpoints
//     on the service's first HTTP-speaking port.
func Translate(snap *discovery.Snapshot, opts TranslateOptions) (*Resources, error) {
	if snap == nil {
		return nil, errors.New("xds: translate: nil snapshot")
	}
	if opts.ListenerName == "" || opts.RouteConfigName == "" {
		return nil, errors.New("xds: translate: listener and route config names are required")
	}
	if opts.ConnectTimeout <= 0 {
		return nil, errors.New("xds: translate: connect timeout must be positive")
	}
	res := &Resources{}
	lis, err := httpListener(opts)
	if err != nil {
		return nil, err
	}
	res.Listeners = []*listener.Listener{lis}

	// Hosts collect the routes of every service that claims them; a host
	// and prefix claimed twice goes to the first service in snapshot order
	// (namespace, name).
	type hostRoutes struct {
		routes []*route.Route
		owner  map[string]string // prefix -> service key
	}
	hosts := map[string]*hostRoutes{}
	for i := range snap.Services {
		svc := &snap.Services[i]
		key := svc.Namespace + "/" + svc.Name
		port, hasPort := httpPort(svc.Ports)
		if !hasPort && len(svc.Revisions) > 0 {
			res.Warnings = append(res.Warnings, fmt.Sprintf("service %s: no http, http2 or grpc port: its clusters have no endpoints", key))
		}
		for _, rev := range svc.Revisions {
			name := ClusterName(svc.Namespace, svc.Name, rev.Number)
			res.Clusters = append(res.Clusters, edsCluster(name, port, opts))
			cla, warns := loadAssignment(name, key, rev, port, hasPort)
			res.Endpoints = append(res.Endpoints, cla)
			res.Warnings = append(res.Warnings, warns...)
		}
		if svc.Route == nil {
			continue
		}
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
						res.Warnings = append(res.Warnings, fmt.Sprintf("service %s: host %s path %s already routed to %s", key, host, p, owner))
					}
					continue
				}
				hr.owner[p] = key
				hr.routes = append(hr.routes, serviceRoute(svc, p))
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
	res.Routes = []*route.RouteConfiguration{rc}

	slices.SortFunc(res.Clusters, func(a, b *cluster.Cluster) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(res.Endpoints, func(a, b *endpoint.ClusterLoadAssignment) int { return cmp.Compare(a.ClusterName, b.ClusterName) })
	return res, nil
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

// serviceRoute sends prefix to the service's revisions by weight: a single
// revision (or a single one with weight) goes to its cluster directly.
func serviceRoute(svc *discovery.Service, prefix string) *route.Route {
	r := &route.Route{
		Name:  RouteName(svc.Namespace, svc.Name),
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
	}
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
		// Exposed but nothing to send to: answer like an empty cluster.
		r.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 503,
			Body:   &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "no revision of " + svc.Namespace + "/" + svc.Name + " takes traffic\n"}},
		}}
	case 1:
		r.Action = &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: weighted[0].Name},
		}}
	default:
		r.Action = &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: weighted}},
		}}
	}
	return r
}

func edsCluster(name string, port discovery.Port, opts TranslateOptions) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(opts.ConnectTimeout),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	if port.Protocol == api.ProtocolHTTP2 || port.Protocol == api.ProtocolGRPC {
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

// loadAssignment lists the revision's ready, non-draining endpoints, one
// locality per node. Every locality carries a load-balancing weight equal
// to its endpoint count: grpc-go drops localities without a weight, and
// equal per-endpoint shares keep the spread even.
func loadAssignment(name, serviceKey string, rev discovery.Revision, port discovery.Port, hasPort bool) (*endpoint.ClusterLoadAssignment, []string) {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	if !hasPort {
		return cla, nil
	}
	var warns []string
	byNode := map[string][]*endpoint.LbEndpoint{}
	for _, e := range rev.Endpoints {
		if !e.Ready || e.Draining {
			continue
		}
		ip, err := netip.ParseAddr(e.IP)
		if err != nil {
			warns = append(warns, fmt.Sprintf("service %s revision %d: instance %s: bad IP %q", serviceKey, rev.Number, e.Instance, e.IP))
			continue
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
			HealthStatus: core.HealthStatus_HEALTHY,
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
			LoadBalancingWeight: wrapperspb.UInt32(uint32(len(eps))),
		})
	}
	return cla, warns
}

// httpPort is the service's first port speaking HTTP (http, http2, grpc;
// an empty protocol means http).
func httpPort(ports []discovery.Port) (discovery.Port, bool) {
	for _, p := range ports {
		switch p.Protocol {
		case "", api.ProtocolHTTP, api.ProtocolHTTP2, api.ProtocolGRPC:
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
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("xds: invalid resources: %w", err)
	}
	return nil
}
