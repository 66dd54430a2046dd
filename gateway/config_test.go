package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

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
	headerRoute.Match.Headers = []*route.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &route.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &matcher.RegexMatcher{Regex: "a.*"}}}} //lint:ignore SA1019 the deprecated form is what is refused here
	regexRoute := prefixRoute("a", "/")
	regexRoute.Match.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "^/a.*"}}
	for _, tc := range []struct {
		name string
		resp *discoverypb.DiscoveryResponse
		want string
	}{
		{"header match", response(t, resource.RouteType, &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{
			{Name: "v", Domains: []string{"a"}, Routes: []*route.Route{headerRoute}}}}), "SafeRegexMatch matches are not supported"},
		{"regex match", response(t, resource.RouteType, &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{
			{Name: "v", Domains: []string{"a"}, Routes: []*route.Route{regexRoute}}}}), "only prefix and path matches"},
		{"duplicate domain", response(t, resource.RouteType, &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{
			{Name: "v1", Domains: []string{"a.test"}}, {Name: "v2", Domains: []string{"A.test:*"}}}}), `domain "a.test" in virtual hosts "v1" and "v2"`},
		{"static cluster", response(t, resource.ClusterType, &cluster.Cluster{Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}}), "EDS only"},
		{"hostname endpoint", response(t, resource.EndpointType, &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
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
	return buildTable(st, "berth_http", "1", m.stats, newRegistry(4))
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
			if r := vh.matchPath(tc.path, httpHeaders{}); r != nil {
				got = r.name
			}
		}
		if got != tc.want {
			t.Errorf("%s%s -> %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
}

func TestWeightedPick(t *testing.T) {
	r := &routeEntry{clusters: []weightedCluster{{name: "a", weight: 90}, {name: "b", weight: 10}}, total: 100, schedule: weightSchedule([]uint32{90, 10})}
	counts := map[string]int{}
	for i := 0; i < 10000; i++ {
		counts[r.pick().name]++
	}
	if counts["a"] != 9000 {
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

func TestCompileRoutingFeatures(t *testing.T) {
	r := prefixRoute("canary", "/")
	r.Match.Headers = []*route.HeaderMatcher{
		{Name: "x-canary", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_Exact{Exact: "YES"}, IgnoreCase: true}}},
		{Name: "x-debug", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
		{Name: "user-agent", HeaderMatchSpecifier: &route.HeaderMatcher_PrefixMatch{PrefixMatch: "curl/"}}, //lint:ignore SA1019 older control planes send it
	}
	ra := r.GetRoute()
	ra.Timeout = durationpb.New(250 * time.Millisecond)
	ra.RetryPolicy = &route.RetryPolicy{RetryOn: "connect-failure,retriable-status-codes", RetriableStatusCodes: []uint32{503}, NumRetries: wrapperspb.UInt32(2)}
	exact := prefixRoute("exact", "/")
	exact.Match.PathSpecifier = &route.RouteMatch_Path{Path: "/healthz"}
	rc := &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*route.Route{exact, r, prefixRoute("default", "/")}}}}
	compiled, err := compile(response(t, resource.RouteType, rc), "berth_http")
	if err != nil {
		t.Fatal(err)
	}
	cr := compiled.(map[string]*compiledRouteConfig)["r"].vhosts[0].routes[1]
	if cr.timeout != 250*time.Millisecond || cr.retry == nil || cr.retry.numRetries != 2 || !cr.retry.onConnect || !cr.retry.retriable(503, false) || cr.retry.retriable(500, false) {
		t.Fatalf("compiled %+v retry %+v", cr, cr.retry)
	}
	if d := compiled.(map[string]*compiledRouteConfig)["r"].vhosts[0].routes[2].timeout; d != 15*time.Second {
		t.Errorf("default route timeout %v, want Envoy's 15s", d)
	}
	st := newXDSState().with(resource.RouteType, "1", compiled).with(resource.ListenerType, "1", map[string]*compiledListener{"berth_http": {rdsName: "r"}})
	m, _ := newMetrics(nil)
	tab := buildTable(st, "berth_http", "1", m.stats, newRegistry(1))
	for _, tc := range []struct {
		path string
		hdr  http.Header
		want string
	}{
		{"/", http.Header{"X-Canary": {"yes"}, "User-Agent": {"curl/8"}}, "canary"},
		{"/", http.Header{"X-Canary": {"yes"}, "User-Agent": {"curl/8"}, "X-Debug": {"1"}}, "default"},
		{"/", http.Header{"X-Canary": {"no"}, "User-Agent": {"curl/8"}}, "default"},
		{"/", http.Header{"User-Agent": {"curl/8"}}, "default"},
		{"/healthz", http.Header{}, "exact"},
		{"/healthz/x", http.Header{}, "default"},
	} {
		got := tab.catchAll.matchPath(tc.path, httpHeaders(tc.hdr)).name
		if got != tc.want {
			t.Errorf("%s %v -> %s, want %s", tc.path, tc.hdr, got, tc.want)
		}
		// The fast path's header source agrees.
		req := &request{}
		for k, vs := range tc.hdr {
			for _, v := range vs {
				req.hdrs = append(req.hdrs, header{name: []byte(strings.ToLower(k)), value: []byte(v)})
			}
		}
		if got := tab.catchAll.matchPath(tc.path, req).name; got != tc.want {
			t.Errorf("fast path: %s %v -> %s, want %s", tc.path, tc.hdr, got, tc.want)
		}
	}

	bad := prefixRoute("b", "/")
	bad.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "retriable-4xx"}
	if _, err := compileRoute(bad); err == nil || !strings.Contains(err.Error(), `retry_on "retriable-4xx" is not supported`) {
		t.Errorf("retriable-4xx: %v", err)
	}
}

func TestCompileClusterPolicies(t *testing.T) {
	c := &cluster.Cluster{
		Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		LbPolicy:       cluster.Cluster_LEAST_REQUEST,
		ConnectTimeout: durationpb.New(time.Second),
		OutlierDetection: &cluster.OutlierDetection{
			Consecutive_5Xx: wrapperspb.UInt32(7), BaseEjectionTime: durationpb.New(time.Second), MaxEjectionPercent: wrapperspb.UInt32(50),
		},
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			RetryBudget: &cluster.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: 25}, MinRetryConcurrency: wrapperspb.UInt32(2)},
		}}},
	}
	cc, err := compileCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	if cc.lb != lbLeastRequest || cc.choices != 2 || cc.connectTimeout != time.Second || cc.outlier.consecutive5xx != 7 ||
		cc.outlier.maxPercent != 50 || cc.retries.percent != 25 || cc.retries.minConcurrency != 2 {
		t.Fatalf("compiled %+v", cc)
	}
	c.LbPolicy = cluster.Cluster_RING_HASH
	if _, err := compileCluster(c); err == nil || !strings.Contains(err.Error(), "ROUND_ROBIN and LEAST_REQUEST only") {
		t.Errorf("ring hash: %v", err)
	}
}

func TestLoadAssignmentSkipsDraining(t *testing.T) {
	ep := func(ip string, hs core.HealthStatus) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HealthStatus: hs, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 80}}}}}}}
	}
	got, err := compileLoadAssignment(&endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{ep("10.0.0.1", core.HealthStatus_HEALTHY), ep("10.0.0.2", core.HealthStatus_DRAINING), ep("10.0.0.3", core.HealthStatus_UNKNOWN)}}}})
	var addrs []string
	for _, a := range got {
		addrs = append(addrs, a.addr)
	}
	if err != nil || strings.Join(addrs, ",") != "10.0.0.1:80,10.0.0.3:80" {
		t.Fatalf("%v %v", got, err)
	}
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	reg := newRegistry(1)
	c := &upstreamCluster{name: "c", state: reg.cluster("c"), lb: lbLeastRequest, choices: 2}
	for _, a := range []string{"a:1", "b:1", "c:1"} {
		c.endpoints = append(c.endpoints, reg.endpoint(a))
	}
	c.endpoints[0].active.Store(100)
	c.endpoints[1].active.Store(100)
	counts := map[string]int{}
	for i := 0; i < 3000; i++ {
		counts[c.pickEndpoint(nil).addr]++
	}
	// The idle endpoint wins whenever it is among the two sampled (5/9).
	if counts["c:1"] < 1500 {
		t.Errorf("least request spread %v", counts)
	}
}

func TestWeightedSplitWithinOnePoint(t *testing.T) {
	for _, ws := range [][]uint32{{90, 10}, {1, 2, 97}, {33, 33, 34}, {5, 95}} {
		r := &routeEntry{total: 0}
		for i, w := range ws {
			r.clusters = append(r.clusters, weightedCluster{name: fmt.Sprint(i), weight: w})
			r.total += w
		}
		r.schedule = weightSchedule(ws)
		counts := make([]int, len(ws))
		for i := 0; i < 10000; i++ {
			p := r.pick()
			counts[p.name[0]-'0']++
		}
		for i, w := range ws {
			want := 10000 * float64(w) / float64(r.total)
			if d := float64(counts[i]) - want; d > 100 || d < -100 {
				t.Errorf("weights %v: cluster %d got %d, want %.0f±100", ws, i, counts[i], want)
			}
		}
	}
}

// A revision with weight but no endpoint (its instances all went away, or
// its endpoints have not arrived) gives its share to a revision that can
// serve, instead of refusing requests; with none left, the pick stays.
func TestPickPrefersAServingRevision(t *testing.T) {
	ep := &endpoint{addr: "10.0.0.2:8080"}
	empty := &upstreamCluster{name: "r1"}
	serving := &upstreamCluster{name: "r2", endpoints: []*endpoint{ep}}
	r := &routeEntry{clusters: []weightedCluster{{name: "r1", weight: 90, cluster: empty}, {name: "r2", weight: 10, cluster: serving}},
		total: 100, schedule: weightSchedule([]uint32{90, 10})}
	for i := 0; i < 100; i++ {
		if wc, _, _ := r.pickFor(httpHeaders(http.Header{})); wc.name != "r2" {
			t.Fatalf("pick %d went to %s, which has no endpoint", i, wc.name)
		}
	}
	serving.endpoints = nil
	if wc, _, _ := r.pickFor(httpHeaders(http.Header{})); len(wc.cluster.endpoints) > 0 {
		t.Fatalf("no revision serves, yet %s was picked with endpoints", wc.name)
	}
	// Weight 0 is not a fallback.
	serving.endpoints = []*endpoint{ep}
	r = &routeEntry{clusters: []weightedCluster{{name: "r1", weight: 100, cluster: empty}, {name: "r2", weight: 0, cluster: serving}},
		total: 100, schedule: weightSchedule([]uint32{100, 0})}
	for i := 0; i < 10; i++ {
		if wc, _, _ := r.pickFor(httpHeaders(http.Header{})); wc.name != "r1" {
			t.Fatalf("a revision with weight 0 took traffic: %s", wc.name)
		}
	}
}

// A retry goes to another locality (node) when one has a usable endpoint:
// with two endpoints on a node whose link was cut, the retry from one
// must not wait on the other. With every endpoint in one locality it
// still avoids the endpoint tried.
func TestRetryPrefersAnotherLocality(t *testing.T) {
	for _, lb := range []lbPolicy{lbRoundRobin, lbLeastRequest} {
		reg := newRegistry(1)
		c := &upstreamCluster{name: "c", state: reg.cluster("c"), lb: lb, choices: 2}
		for _, a := range []upstreamAddr{{"a1:1", "/berth/n1"}, {"a2:1", "/berth/n1"}, {"a3:1", "/berth/n1"}, {"b1:1", "/berth/n2"}} {
			c.endpoints = append(c.endpoints, reg.endpointIn(a.addr, a.zone))
		}
		for range 200 {
			if got := c.pickEndpoint(c.endpoints[:1]); got.addr != "b1:1" {
				t.Fatalf("lb %v: a retry after a1 went to %s, in the same locality", lb, got.addr)
			}
		}
		// Both localities tried: any endpoint not tried.
		for range 200 {
			if got := c.pickEndpoint([]*endpoint{c.endpoints[0], c.endpoints[3]}); got.addr == "a1:1" || got.addr == "b1:1" {
				t.Fatalf("lb %v: a retry went back to %s", lb, got.addr)
			}
		}
		same := &upstreamCluster{name: "s", state: reg.cluster("s"), lb: lb, choices: 2}
		for _, a := range []string{"s1:1", "s2:1"} {
			same.endpoints = append(same.endpoints, reg.endpointIn(a, "/berth/n1"))
		}
		for range 200 {
			if got := same.pickEndpoint(same.endpoints[:1]); got.addr != "s2:1" {
				t.Fatalf("lb %v: one locality: a retry after s1 went to %s", lb, got.addr)
			}
		}
	}
}
