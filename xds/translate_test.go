package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/discovery"
)

// TestTranslateIncremental: translating from the previous translation gives
// what a full translation gives, and an endpoint change touches exactly
// one load assignment; a weight change touches only the routes.
func TestTranslateIncremental(t *testing.T) {
	opts := DefaultTranslateOptions()
	first, err := translateNext(nil, twoServices(), opts)
	if err != nil {
		t.Fatal(err)
	}

	moved := twoServices()
	moved.Version = 43
	moved.Services[0].Revisions[0].Endpoints[0].IP = "10.88.1.8"
	next, err := translateNext(first, moved, opts)
	if err != nil {
		t.Fatal(err)
	}
	full, _ := Translate(moved, opts)
	if !bytes.Equal(goldenJSON(t, next.resources()), goldenJSON(t, full)) {
		t.Fatal("incremental translation differs from a full one")
	}
	ch := diff(first, next)
	for set, c := range ch {
		want := 0
		if set == setEndpoints {
			want = 1
		}
		if len(c.updated) != want || len(c.removed) != 0 {
			t.Errorf("set %d: %d updated, %d removed; want %d updated", set, len(c.updated), len(c.removed), want)
		}
	}
	if _, ok := ch[setEndpoints].updated["default_hello_r3"]; !ok {
		t.Errorf("changed load assignments = %v, want default_hello_r3", ch[setEndpoints].updated)
	}
	if err := checkConsistent(next, &ch); err != nil {
		t.Fatal(err)
	}

	// Shift shop's weights: its routes (gateway and gRPC API) change, its
	// clusters and load assignments do not.
	shifted := twoServices()
	shifted.Version = 44
	shifted.Services[2].Revisions[0].Weight, shifted.Services[2].Revisions[1].Weight = 50, 50
	third, err := translateNext(first, shifted, opts)
	if err != nil {
		t.Fatal(err)
	}
	ch = diff(first, third)
	if len(ch[setGatewayRoutes].updated) != 1 || len(ch[setAPIRoutes].updated) != 1 ||
		len(ch[setClusters].updated)+len(ch[setEndpoints].updated)+len(ch[setGatewayListeners].updated)+len(ch[setAPIListeners].updated) != 0 {
		t.Errorf("weight shift changed %+v", ch)
	}

	// A removed service takes its resources along, and nothing refers to
	// them any more.
	removed := twoServices()
	removed.Version = 45
	removed.Services = removed.Services[:2]
	fourth, err := translateNext(third, removed, opts)
	if err != nil {
		t.Fatal(err)
	}
	ch = diff(third, fourth)
	if len(ch[setClusters].removed) != 2 || len(ch[setEndpoints].removed) != 2 || len(ch[setAPIListeners].removed) != 1 || len(ch[setAPIRoutes].removed) != 1 {
		t.Errorf("removal: %+v", ch)
	}
	if err := checkConsistent(fourth, &ch); err != nil {
		t.Errorf("after removal: %v", err)
	}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// twoServices: hello is routed (3 ready + 1 unready + 1 draining), internal
// is not; shop runs two revisions split 90/10 and speaks gRPC.
func twoServices() *discovery.Snapshot {
	return &discovery.Snapshot{
		Version: 42,
		Services: []discovery.Service{
			{
				Namespace: "default", Name: "hello",
				Ports: []discovery.Port{{Name: "metrics", Port: 9100, Protocol: "tcp"}, {Name: "web", Port: 8080, Protocol: "http"}},
				Route: &discovery.Route{Hosts: []string{"Hello.Example.Test"}, Paths: []string{"/"}},
				Revisions: []discovery.Revision{{Number: 3, Weight: 100, Endpoints: []discovery.Endpoint{
					{Instance: "hello-3-c", Node: "node-b", IP: "10.88.1.7", Ready: true},
					{Instance: "hello-3-a", Node: "node-a", IP: "10.88.0.5", Ready: true},
					{Instance: "hello-3-b", Node: "node-b", IP: "10.88.1.6", Ready: true},
					{Instance: "hello-3-d", Node: "node-a", IP: "10.88.0.9", Ready: false},
					{Instance: "hello-3-e", Node: "node-a", IP: "10.88.0.10", Ready: true, Draining: true},
				}}},
			},
			{
				Namespace: "default", Name: "internal",
				Ports: []discovery.Port{{Name: "http", Port: 80}},
				Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: []discovery.Endpoint{
					{Instance: "internal-1-a", Node: "node-a", IP: "10.88.0.20", Ready: true},
				}}},
			},
			{
				Namespace: "shop", Name: "web",
				Ports: []discovery.Port{{Name: "grpc", Port: 9000, Protocol: "grpc"}},
				Route: &discovery.Route{Hosts: []string{"shop.example.test"}, Paths: []string{"/", "/api"}},
				Revisions: []discovery.Revision{
					{Number: 1, Weight: 90, Endpoints: []discovery.Endpoint{{Instance: "web-1-a", Node: "node-a", IP: "10.88.0.30", Ready: true}}},
					{Number: 2, Weight: 10, Endpoints: []discovery.Endpoint{{Instance: "web-2-a", Node: "node-b", IP: "10.88.1.30", Ready: true}}},
				},
			},
		},
	}
}

// emptyServices: routed services with no endpoints, no revision, and a
// host/path claimed twice.
func emptyServices() *discovery.Snapshot {
	return &discovery.Snapshot{
		Version: 7,
		Services: []discovery.Service{
			{
				Namespace: "default", Name: "empty",
				Ports:     []discovery.Port{{Name: "http", Port: 8080}},
				Route:     &discovery.Route{Hosts: []string{"empty.example.test"}},
				Revisions: []discovery.Revision{{Number: 1, Weight: 100}},
			},
			{
				Namespace: "default", Name: "norevision",
				Ports: []discovery.Port{{Name: "http", Port: 8080}},
				Route: &discovery.Route{Hosts: []string{"none.example.test"}, Paths: []string{"/"}},
			},
			{
				Namespace: "default", Name: "thief",
				Ports: []discovery.Port{{Name: "http", Port: 8080}},
				Route: &discovery.Route{Hosts: []string{"empty.example.test"}, Paths: []string{"/"}},
				Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: []discovery.Endpoint{
					{Instance: "thief-1-a", Node: "node-a", IP: "not-an-ip", Ready: true},
				}}},
			},
		},
	}
}

// stickyServices: two canaries at 20%, web with a sticky cookie (and a
// canary header), api with a sticky header; api speaks gRPC, whose API
// listener route stays a plain split (proxyless clients set no cohort).
func stickyServices() *discovery.Snapshot {
	revs := func(ip string) []discovery.Revision {
		return []discovery.Revision{
			{Number: 3, Weight: 80, Endpoints: []discovery.Endpoint{{Instance: "s", Node: "node-a", IP: "10.88.0." + ip, Ready: true}}},
			{Number: 4, Weight: 20, Endpoints: []discovery.Endpoint{{Instance: "c", Node: "node-b", IP: "10.88.1." + ip, Ready: true}}},
		}
	}
	return &discovery.Snapshot{
		Version: 9,
		Services: []discovery.Service{
			{
				Namespace: "default", Name: "api",
				Ports:     []discovery.Port{{Name: "grpc", Port: 9000, Protocol: "grpc"}},
				Route:     &discovery.Route{Hosts: []string{"api.example.test"}, Paths: []string{"/"}, StickyHeader: "x-user", CanaryRevision: 4},
				Revisions: revs("2"),
			},
			{
				Namespace: "default", Name: "web",
				Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
				Route: &discovery.Route{Hosts: []string{"web.example.test"}, Paths: []string{"/"}, StickyCookie: "Session",
					CanaryHeader: "x-canary", CanaryValue: "always", CanaryRevision: 4},
				Revisions: revs("1"),
			},
		},
	}
}

func TestTranslateGolden(t *testing.T) {
	withRetries := DefaultTranslateOptions()
	withRetries.Retries = 2
	for _, tc := range []struct {
		name string
		snap *discovery.Snapshot
		opts TranslateOptions
	}{
		{"two_services", twoServices(), DefaultTranslateOptions()},
		{"empty_services", emptyServices(), DefaultTranslateOptions()},
		{"no_services", &discovery.Snapshot{Version: 1}, DefaultTranslateOptions()},
		{"retries", twoServices(), withRetries},
		{"sticky", stickyServices(), DefaultTranslateOptions()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Translate(tc.snap, tc.opts)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if err := res.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			snap, err := cacheSnapshot(tc.snap.Version, res)
			if err != nil {
				t.Fatalf("cacheSnapshot (ValidateAll + Consistent): %v", err)
			}
			if err := snap.Consistent(); err != nil {
				t.Fatalf("Consistent: %v", err)
			}
			got := goldenJSON(t, res)
			again, _ := Translate(tc.snap, tc.opts)
			if !bytes.Equal(got, goldenJSON(t, again)) {
				t.Fatal("Translate is not deterministic")
			}
			path := filepath.Join("testdata", tc.name+".golden.json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./xds -run Golden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("translation of %s differs from %s (go test ./xds -run Golden -update to accept):\n%s", tc.name, path, got)
			}
		})
	}
}

func TestTranslateShape(t *testing.T) {
	res, err := Translate(twoServices(), DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Clusters); n != 4 {
		t.Errorf("clusters = %d, want 4 (one per revision, routed or not)", n)
	}
	for _, cla := range res.Endpoints {
		if cla.ClusterName != "default_hello_r3" {
			continue
		}
		var healthy, draining int
		for _, l := range cla.Endpoints {
			if l.GetLoadBalancingWeight().GetValue() == 0 || l.GetLocality() == nil {
				t.Errorf("locality %v without weight or locality", l.GetLocality())
			}
			for _, e := range l.LbEndpoints {
				switch e.GetHealthStatus() {
				case core.HealthStatus_HEALTHY:
					healthy++
				case core.HealthStatus_DRAINING:
					draining++
					if e.GetEndpoint().GetHostname() != "hello-3-e" {
						t.Errorf("draining endpoint %s, want hello-3-e", e.GetEndpoint().GetHostname())
					}
				}
			}
		}
		if healthy != 3 || draining != 1 {
			t.Errorf("hello endpoints: %d healthy, %d draining; want the 3 ready ones and the draining one", healthy, draining)
		}
	}
	vhosts := res.Routes[0].VirtualHosts
	if len(vhosts) != 2 || vhosts[0].Name != "hello.example.test" {
		t.Fatalf("virtual hosts = %v", vhosts)
	}
	shop := vhosts[1]
	if got := shop.Routes[0].GetMatch().GetPrefix(); got != "/api" {
		t.Errorf("first shop route prefix = %q, want the longest, /api", got)
	}
	wc := shop.Routes[0].GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetWeight().GetValue() != 90 || wc[1].GetWeight().GetValue() != 10 {
		t.Errorf("shop weights = %v, want 90/10", wc)
	}
}

func TestTranslateWarnings(t *testing.T) {
	res, err := Translate(emptyServices(), DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 2 {
		t.Errorf("warnings = %q, want the stolen path and the bad IP", res.Warnings)
	}
}

func TestValidateRejects(t *testing.T) {
	res, err := Translate(twoServices(), DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	res.Clusters[0].Name = ""
	if err := res.Validate(); err == nil {
		t.Error("Validate accepted a cluster without a name")
	}
	if _, err := cacheSnapshot(1, res); err == nil {
		t.Error("cacheSnapshot accepted an invalid cluster")
	}
	res, _ = Translate(twoServices(), DefaultTranslateOptions())
	res.Endpoints = res.Endpoints[1:]
	if _, err := cacheSnapshot(1, res); err == nil {
		t.Error("cacheSnapshot accepted a cluster without its load assignment")
	}
}

func TestClusterNameRoundTrip(t *testing.T) {
	name := ClusterName("team-a", "my-svc", 12)
	if name != "team-a_my-svc_r12" {
		t.Fatalf("ClusterName = %q", name)
	}
	ns, svc, rev, err := ParseClusterName(name)
	if err != nil || ns != "team-a" || svc != "my-svc" || rev != 12 {
		t.Fatalf("ParseClusterName = %q %q %d %v", ns, svc, rev, err)
	}
	for _, bad := range []string{"a_b", "a_b_12", "a_b_rx", "_b_r1"} {
		if _, _, _, err := ParseClusterName(bad); err == nil {
			t.Errorf("ParseClusterName(%q) accepted", bad)
		}
	}
}

// goldenJSON renders resources as indented JSON with stable key order
// (protojson's own whitespace is deliberately unstable).
func goldenJSON(t *testing.T, res *Resources) []byte {
	t.Helper()
	render := func(msgs []proto.Message) []json.RawMessage {
		out := []json.RawMessage{}
		for _, m := range msgs {
			b, err := protojson.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	doc := map[string]any{
		"listeners": render(asMessages(res.Listeners)),
		"routes":    render(asMessages(res.Routes)),
		"clusters":  render(asMessages(res.Clusters)),
		"endpoints": render(asMessages(res.Endpoints)),
		"warnings":  append([]string{}, res.Warnings...),

		"api_listeners": render(asMessages(res.APIListeners)),
		"api_routes":    render(asMessages(res.APIRoutes)),
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	b, err = json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func asMessages[M proto.Message](ms []M) []proto.Message {
	out := make([]proto.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func TestCanaryHeaderRouteComesFirst(t *testing.T) {
	snap := &discovery.Snapshot{Version: 7, Services: []discovery.Service{{
		Namespace: "default", Name: "web", Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
		Route: &discovery.Route{Hosts: []string{"web.test"}, Paths: []string{"/"}, CanaryHeader: "x-berth-canary", CanaryValue: "always", CanaryRevision: 2},
		Revisions: []discovery.Revision{
			{Number: 1, Weight: 90, Endpoints: []discovery.Endpoint{{Instance: "a", Node: "n", IP: "10.0.0.1", Ready: true}}},
			{Number: 2, Weight: 10, Endpoints: []discovery.Endpoint{{Instance: "b", Node: "n", IP: "10.0.0.2", Ready: true}}},
		},
	}}}
	res, err := Translate(snap, DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Validate(); err != nil {
		t.Fatal(err)
	}
	routes := res.Routes[0].VirtualHosts[0].Routes
	if len(routes) != 2 {
		t.Fatalf("%d routes", len(routes))
	}
	first := routes[0]
	if h := first.GetMatch().GetHeaders(); len(h) != 1 || h[0].GetName() != "x-berth-canary" || h[0].GetStringMatch().GetExact() != "always" {
		t.Fatalf("first route does not match the canary header: %v", first)
	}
	if c := first.GetRoute().GetCluster(); c != ClusterName("default", "web", 2) {
		t.Fatalf("canary route goes to %q", c)
	}
	if routes[1].GetRoute().GetWeightedClusters() == nil {
		t.Fatalf("second route is not the weighted one: %v", routes[1])
	}
}

// TestStickyCohortSplit: a sticky split names its key in a hash policy,
// reads Envoy's random value from the cohort header and lists the canary
// first, so Envoy's pick (value % total, walking the clusters) sends
// exactly the cohorts below the canary's weight to the canary.
func TestStickyCohortSplit(t *testing.T) {
	for _, tc := range []struct {
		name           string
		header, cookie string
	}{
		{"header", "x-user", ""},
		{"cookie", "", "Session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, w := range []uint32{1, 10, 50, 99} {
				snap := &discovery.Snapshot{Version: 3, Services: []discovery.Service{{
					Namespace: "default", Name: "web", Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
					Route: &discovery.Route{Hosts: []string{"web.test"}, Paths: []string{"/"}, StickyHeader: tc.header, StickyCookie: tc.cookie, CanaryRevision: 2},
					Revisions: []discovery.Revision{
						{Number: 1, Weight: 100 - w, Endpoints: []discovery.Endpoint{{Instance: "a", Node: "n", IP: "10.0.0.1", Ready: true}}},
						{Number: 2, Weight: w, Endpoints: []discovery.Endpoint{{Instance: "b", Node: "n", IP: "10.0.0.2", Ready: true}}},
					},
				}}}
				res, err := Translate(snap, DefaultTranslateOptions())
				if err != nil {
					t.Fatal(err)
				}
				if err := res.Validate(); err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := cacheSnapshot(snap.Version, res); err != nil {
					t.Fatalf("cacheSnapshot: %v", err)
				}
				action := res.Routes[0].VirtualHosts[0].Routes[0].GetRoute()
				hp := action.GetHashPolicy()
				if len(hp) != 1 || hp[0].GetHeader().GetHeaderName() != tc.header || hp[0].GetCookie().GetName() != tc.cookie {
					t.Fatalf("hash policy %v, want header %q cookie %q", hp, tc.header, tc.cookie)
				}
				if hp[0].GetCookie().GetTtl() != nil {
					t.Error("cookie hash policy has a ttl: Envoy would make up cookies")
				}
				wc := action.GetWeightedClusters()
				if wc.GetHeaderName() != api.CohortHeader {
					t.Fatalf("weighted clusters header_name %q, want %q", wc.GetHeaderName(), api.CohortHeader)
				}
				if c := wc.GetClusters(); len(c) != 2 || c[0].GetName() != ClusterName("default", "web", 2) || c[0].GetWeight().GetValue()+c[1].GetWeight().GetValue() != 100 {
					t.Fatalf("clusters %v: want the canary first, weights summing to 100", c)
				}
				// Envoy's pick, on the clusters as configured.
				for v := uint64(0); v < 300; v++ {
					n, got := v%100, ""
					for _, c := range wc.GetClusters() {
						if n < uint64(c.GetWeight().GetValue()) {
							got = c.GetName()
							break
						}
						n -= uint64(c.GetWeight().GetValue())
					}
					want := ClusterName("default", "web", 1)
					if v%100 < uint64(w) {
						want = ClusterName("default", "web", 2)
					}
					if got != want {
						t.Fatalf("weight %d: cohort %d goes to %s, want %s", w, v, got, want)
					}
				}
			}
		})
	}

	// One revision takes everything: a plain cluster, no hash policy.
	whole := stickyServices()
	whole.Services[1].Revisions[0].Weight, whole.Services[1].Revisions[1].Weight = 0, 100
	res, err := Translate(whole, DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	for _, vh := range res.Routes[0].VirtualHosts {
		for _, r := range vh.Routes {
			if r.GetName() == "default_web" && (r.GetRoute().GetCluster() != ClusterName("default", "web", 4) || r.GetRoute().GetHashPolicy() != nil) {
				t.Errorf("unsplit sticky route: %v", r)
			}
		}
	}

	// Turning stickiness on changes the routes incrementally, nothing else.
	plain := stickyServices()
	plain.Services[1].Route.StickyCookie = ""
	first, err := translateNext(nil, plain, DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	next, err := translateNext(first, stickyServices(), DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	ch := diff(first, next)
	if len(ch[setGatewayRoutes].updated) != 1 || len(ch[setClusters].updated)+len(ch[setEndpoints].updated)+len(ch[setAPIRoutes].updated) != 0 {
		t.Errorf("turning sticky on changed %+v", ch)
	}
	full, _ := Translate(stickyServices(), DefaultTranslateOptions())
	if !bytes.Equal(goldenJSON(t, next.resources()), goldenJSON(t, full)) {
		t.Error("incremental translation differs from a full one")
	}
}

// A host and path two stored services claim goes to the older one, not
// to the one whose name sorts first (before, "aaa/new" took
// hello.example.test from "default/hello").
func TestOlderServiceKeepsAContestedRoute(t *testing.T) {
	old := time.Unix(1_700_000_000, 0)
	snap := &discovery.Snapshot{Version: 1, Services: []discovery.Service{
		{Namespace: "aaa", Name: "new", Ports: []discovery.Port{{Name: "http", Port: 8080}},
			Route:     &discovery.Route{Hosts: []string{"hello.example.test"}, Paths: []string{"/"}, Since: old.Add(time.Hour)},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100}}},
		{Namespace: "default", Name: "hello", Ports: []discovery.Port{{Name: "http", Port: 8080}},
			Route:     &discovery.Route{Hosts: []string{"hello.example.test"}, Paths: []string{"/"}, Since: old},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100}}},
	}}
	res, err := Translate(snap, DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	vh := res.Routes[0].VirtualHosts
	if len(vh) != 1 || len(vh[0].Routes) != 1 {
		t.Fatalf("virtual hosts %v", vh)
	}
	if c := vh[0].Routes[0].GetRoute().GetCluster(); c != "default_hello_r1" {
		t.Fatalf("hello.example.test routed to %q, want the older default/hello", c)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "aaa/new") {
		t.Fatalf("warnings %q", res.Warnings)
	}
}
