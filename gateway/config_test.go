package gateway

import (
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
)

func response(t *testing.T, typeURL string, msgs ...proto.Message) *discoverypb.DiscoveryResponse {
	t.Helper()
	resp := &discoverypb.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: "1"}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	return resp
}

func prefixRoute(name, prefix string) *route.Route {
	return &route.Route{
		Name:   name,
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name}}},
	}
}

func TestCompileRejects(t *testing.T) {
	headerRoute := prefixRoute("a", "/")
	headerRoute.Match.Headers = []*route.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}}
	regexRoute := prefixRoute("a", "/")
	regexRoute.Match.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "^/a.*"}}
	for _, tc := range []struct {
		name string
		resp *discoverypb.DiscoveryResponse
		want string
	}{
		{"header match", response(t, resource.RouteType, &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{
			{Name: "v", Domains: []string{"a"}, Routes: []*route.Route{headerRoute}}}}), "header matches are not supported"},
		{"regex match", response(t, resource.RouteType, &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{
			{Name: "v", Domains: []string{"a"}, Routes: []*route.Route{regexRoute}}}}), "only prefix and path matches"},
		{"duplicate domain", response(t, resource.RouteType, &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{
			{Name: "v1", Domains: []string{"a.test"}}, {Name: "v2", Domains: []string{"A.test:*"}}}}), `domain "a.test" in virtual hosts "v1" and "v2"`},
		{"static cluster", response(t, resource.ClusterType, &cluster.Cluster{Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}}), "EDS only"},
		{"hostname endpoint", response(t, resource.EndpointType, &endpoint.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: "example.com", PortSpecifier: &core.SocketAddress_PortValue{PortValue: 80}}}}}}}}}}}), "is not an IP"},
		{"invalid per ValidateAll", response(t, resource.ClusterType, &cluster.Cluster{}), "resource 0"},
		{"wrong type inside", response(t, resource.ClusterType, &route.RouteConfiguration{Name: "r"}), "has type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compile(tc.resp, "berth_http")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("compile = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// tableFor compiles Translate's output for snap into a routing table, as
// the ADS client would.
func tableFor(t *testing.T, snap *discovery.Snapshot) *table {
	t.Helper()
	res, err := xds.Translate(snap, xds.DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	st := newXDSState()
	apply := func(typeURL string, msgs []proto.Message) {
		compiled, err := compile(response(t, typeURL, msgs...), "berth_http")
		if err != nil {
			t.Fatalf("compile %s: %v", typeURL, err)
		}
		st = st.with(typeURL, "1", compiled)
	}
	apply(resource.ClusterType, messages(res.Clusters))
	apply(resource.EndpointType, messages(res.Endpoints))
	apply(resource.ListenerType, messages(res.Listeners))
	apply(resource.RouteType, messages(res.Routes))
	m, _ := newMetrics(nil)
	return buildTable(st, "berth_http", "1", m.stats)
}

func messages[M proto.Message](ms []M) []proto.Message {
	out := make([]proto.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func TestTableMatching(t *testing.T) {
	svc := func(name string, hosts, paths []string) discovery.Service {
		return discovery.Service{Namespace: "default", Name: name, Ports: []discovery.Port{{Name: "http", Port: 80}},
			Route: &discovery.Route{Hosts: hosts, Paths: paths},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: []discovery.Endpoint{
				{Instance: name, Node: "n", IP: "10.0.0.1", Ready: true}}}}}
	}
	tab := tableFor(t, &discovery.Snapshot{Version: 1, Services: []discovery.Service{
		svc("api", []string{"shop.test"}, []string{"/api"}),
		svc("any", []string{"*"}, []string{"/"}),
		svc("web", []string{"shop.test", "*.shop.test"}, []string{"/"}),
	}})
	for _, tc := range []struct{ host, path, want string }{
		{"shop.test", "/", "default_web"},
		{"Shop.Test:8080", "/api/v1", "default_api"},
		{"shop.test", "/ap", "default_web"},
		{"eu.shop.test", "/api", "default_web"},
		{"other.test", "/x", "default_any"},
	} {
		vh := tab.matchHost(requestHost(tc.host))
		var got string
		if vh != nil {
			if r := vh.matchPath(tc.path); r != nil {
				got = r.name
			}
		}
		if got != tc.want {
			t.Errorf("%s%s -> %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
}

func TestWeightedPick(t *testing.T) {
	r := &routeEntry{clusters: []weightedCluster{{name: "a", weight: 90}, {name: "b", weight: 10}}, total: 100}
	counts := map[string]int{}
	for i := 0; i < 10000; i++ {
		counts[r.pick().name]++
	}
	if counts["a"] < 8800 || counts["a"] > 9200 {
		t.Errorf("90/10 pick gave %v", counts)
	}
}

func TestRequestHost(t *testing.T) {
	for in, want := range map[string]string{
		"a.test": "a.test", "A.Test:80": "a.test", "[::1]:80": "[::1]", "[::1]": "[::1]", "": "",
	} {
		if got := requestHost(in); got != want {
			t.Errorf("requestHost(%q) = %q, want %q", in, got, want)
		}
	}
}
