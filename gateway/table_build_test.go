package gateway

import (
	"fmt"
	"google.golang.org/protobuf/proto"
	"maps"
	"testing"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// BenchmarkBuildTableAfterEndpointChange: the routing table rebuilt after
// one load assignment changed, at 1,000 services x 10 endpoints (what a
// gateway does per delta update).
func BenchmarkBuildTableAfterEndpointChange(b *testing.B) {
	snap := &discovery.Snapshot{Version: 1}
	for i := range 1000 {
		name := fmt.Sprintf("svc-%04d", i)
		var eps []discovery.Endpoint
		for j := range 10 {
			eps = append(eps, discovery.Endpoint{Instance: fmt.Sprintf("%s-%d", name, j), Node: "n", IP: fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, j+1), Ready: true})
		}
		snap.Services = append(snap.Services, discovery.Service{Namespace: "bench", Name: name,
			Ports:     []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
			Route:     &discovery.Route{Hosts: []string{name + ".example.test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: eps}}})
	}
	res, err := xds.Translate(snap, xds.DefaultTranslateOptions())
	if err != nil {
		b.Fatal(err)
	}
	st := newXDSState()
	apply := func(typeURL string, compiled any, err error) {
		if err != nil {
			b.Fatal(err)
		}
		st = st.with(typeURL, "1", compiled)
	}
	t := &testing.T{}
	c, err := compile(response(t, resource.ClusterType, messages(res.Clusters)...), "berth_http")
	apply(resource.ClusterType, c, err)
	c, err = compile(response(t, resource.EndpointType, messages(res.Endpoints)...), "berth_http")
	apply(resource.EndpointType, c, err)
	c, err = compile(response(t, resource.ListenerType, messages(res.Listeners)...), "berth_http")
	apply(resource.ListenerType, c, err)
	c, err = compile(response(t, resource.RouteType, messages(res.Routes)...), "berth_http")
	apply(resource.RouteType, c, err)
	m, _ := newMetrics(nil)
	// The ADS client keeps each route's series (adsClient.routeStats).
	series := map[[2]string]*routeStats{}
	stats := func(route, cluster string) *routeStats {
		k := [2]string{route, cluster}
		if s, ok := series[k]; ok {
			return s
		}
		series[k] = m.stats(route, cluster)
		return series[k]
	}
	reg := newRegistry(4)
	tab := buildTable(st, "berth_http", "1", stats, reg)
	reg.sweep()
	if len(tab.exact) != 1000 {
		b.Fatalf("%d hosts", len(tab.exact))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		eps := maps.Clone(st.endpoints)
		eps["bench_svc-0001_r1"] = []upstreamAddr{{addr: fmt.Sprintf("10.200.0.%d:8080", i%250+1)}}
		st = st.with(resource.EndpointType, fmt.Sprint(i+2), eps)
		buildTable(st, "berth_http", fmt.Sprint(i+2), stats, reg)
		reg.sweep()
	}
}

// A rebuilt table shares the upstream clusters whose cluster and load
// assignment did not change, rebuilds the one that did, and the endpoint
// that left is retired.
func TestBuildTableReusesUnchangedUpstreams(t *testing.T) {
	snap := &discovery.Snapshot{Version: 1}
	for i, name := range []string{"a", "b", "c"} {
		snap.Services = append(snap.Services, discovery.Service{Namespace: "default", Name: name,
			Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
			Route: &discovery.Route{Hosts: []string{name + ".test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: []discovery.Endpoint{
				{Instance: name, Node: "n", IP: fmt.Sprintf("10.0.0.%d", i+1), Ready: true}}}}})
	}
	res, err := xds.Translate(snap, xds.DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	st := newXDSState()
	for _, r := range []struct {
		typeURL string
		msgs    []proto.Message
	}{{resource.ClusterType, messages(res.Clusters)}, {resource.EndpointType, messages(res.Endpoints)},
		{resource.ListenerType, messages(res.Listeners)}, {resource.RouteType, messages(res.Routes)}} {
		c, err := compile(response(t, r.typeURL, r.msgs...), "berth_http")
		if err != nil {
			t.Fatal(err)
		}
		st = st.with(r.typeURL, "1", c)
	}
	m, _ := newMetrics(nil)
	reg := newRegistry(4)
	upstreamOf := func(tab *table, host string) *upstreamCluster {
		return tab.exact[host].routes[0].clusters[0].cluster
	}
	t1 := buildTable(st, "berth_http", "1", m.stats, reg)
	reg.sweep()
	old := reg.endpoints[upstreamAddr{"10.0.0.2:8080", "/berth/n"}]
	eps := maps.Clone(st.endpoints)
	eps["default_b_r1"] = []upstreamAddr{{addr: "10.0.0.9:8080"}}
	st = st.with(resource.EndpointType, "2", eps)
	t2 := buildTable(st, "berth_http", "2", m.stats, reg)
	reg.sweep()
	if upstreamOf(t2, "a.test") != upstreamOf(t1, "a.test") || upstreamOf(t2, "c.test") != upstreamOf(t1, "c.test") {
		t.Error("unchanged clusters a and c were rebuilt")
	}
	b2 := upstreamOf(t2, "b.test")
	if b2 == upstreamOf(t1, "b.test") || len(b2.endpoints) != 1 || b2.endpoints[0].addr != "10.0.0.9:8080" {
		t.Fatalf("changed cluster b: %+v", b2)
	}
	if _, ok := reg.endpoints[upstreamAddr{"10.0.0.2:8080", "/berth/n"}]; ok || old == nil {
		t.Error("the endpoint that left b is still registered")
	}
	for _, addr := range []upstreamAddr{{"10.0.0.1:8080", "/berth/n"}, {"10.0.0.3:8080", "/berth/n"}, {"10.0.0.9:8080", ""}} {
		if _, ok := reg.endpoints[addr]; !ok {
			t.Errorf("endpoint %s in use but not registered", addr)
		}
	}
	// A third build with nothing changed keeps everything, endpoints
	// included (kept as in use by the reused clusters).
	t3 := buildTable(st, "berth_http", "3", m.stats, reg)
	reg.sweep()
	if upstreamOf(t3, "b.test") != b2 || len(reg.endpoints) != 3 {
		t.Errorf("after an unchanged rebuild: b shared %v, %d endpoints", upstreamOf(t3, "b.test") == b2, len(reg.endpoints))
	}
}
