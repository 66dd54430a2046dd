package gateway

import (
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/berth-dev/berth/discovery"
)

func TestFNV1a64IsHashFNV(t *testing.T) {
	for _, s := range []string{"", "a", "user-42", "sid=\"x\"", strings.Repeat("long ", 100)} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got, want := fnv1a64(s), h.Sum64(); got != want {
			t.Errorf("fnv1a64(%q) = %d, hash/fnv says %d", s, got, want)
		}
	}
}

func TestCookieValue(t *testing.T) {
	for _, tc := range []struct {
		header, name, want string
		found              bool
	}{
		{"sid=abc", "sid", "abc", true},
		{"a=1; sid=abc; b=2", "sid", "abc", true},
		{"a=1;sid=abc", "sid", "abc", true},
		{`sid="quoted"`, "sid", "quoted", true},
		{"xsid=1; sid=2", "sid", "2", true},
		{"SID=1", "sid", "", false},
		{"sid", "sid", "", false},
		{"sid=", "sid", "", true},
		{"sid=a=b", "sid", "a=b", true},
		{"a=1; sid=first; sid=second", "sid", "first", true},
	} {
		got, found := cookieValue(tc.header, tc.name)
		if got != tc.want || found != tc.found {
			t.Errorf("cookieValue(%q, %q) = %q, %v; want %q, %v", tc.header, tc.name, got, found, tc.want, tc.found)
		}
	}
}

// TestStickyCohortFromTranslator: the translator's sticky split compiles
// to a sticky route entry; the fast path's and net/http's header views
// give the same cohort and cluster.
func TestStickyCohortFromTranslator(t *testing.T) {
	ep := func(ip string) []discovery.Endpoint {
		return []discovery.Endpoint{{Instance: ip, Node: "n", IP: ip, Ready: true}}
	}
	tab := tableFor(t, &discovery.Snapshot{Version: 1, Services: []discovery.Service{{
		Namespace: "default", Name: "web", Ports: []discovery.Port{{Name: "http", Port: 80}},
		Route: &discovery.Route{Hosts: []string{"web.test"}, Paths: []string{"/"}, StickyCookie: "sid", CanaryRevision: 2},
		Revisions: []discovery.Revision{
			{Number: 1, Weight: 90, Endpoints: ep("10.0.0.1")},
			{Number: 2, Weight: 10, Endpoints: ep("10.0.0.2")},
		},
	}}})
	re := tab.matchHost("web.test").matchPath("/", httpHeaders{})
	if re.sticky == nil || re.sticky.header != "X-Berth-Cohort" || re.sticky.keyCookie != "sid" || re.sticky.keyHeader != "" {
		t.Fatalf("route entry sticky = %+v", re.sticky)
	}
	if re.clusters[0].name != "default_web_r2" || re.clusters[0].weight != 10 || re.total != 100 {
		t.Fatalf("clusters %+v total %d: want the canary first", re.clusters, re.total)
	}
	canaryUser, stableUser := "", ""
	for i := 0; canaryUser == "" || stableUser == ""; i++ {
		u := "u" + strconv.Itoa(i)
		if fnv1a64(u)%100 < 10 {
			canaryUser = u
		} else {
			stableUser = u
		}
	}
	for _, tc := range []struct {
		name            string
		hdr             http.Header
		cohort          uint64
		derived, sticky bool
		cluster         string
	}{
		{"numeric cohort", http.Header{"X-Berth-Cohort": {"5"}}, 5, false, true, "default_web_r2"},
		{"numeric cohort beats cookie", http.Header{"X-Berth-Cohort": {"50"}, "Cookie": {"sid=" + canaryUser}}, 50, false, true, "default_web_r1"},
		{"canary user", http.Header{"Cookie": {"a=b; sid=" + canaryUser}}, fnv1a64(canaryUser), true, true, "default_web_r2"},
		{"stable user", http.Header{"Cookie": {"sid=" + stableUser}}, fnv1a64(stableUser), true, true, "default_web_r1"},
		{"second cookie header", http.Header{"Cookie": {"a=b", "sid=" + canaryUser}}, fnv1a64(canaryUser), true, true, "default_web_r2"},
		{"junk cohort", http.Header{"X-Berth-Cohort": {"-1"}, "Cookie": {"sid=" + canaryUser}}, fnv1a64(canaryUser), true, true, "default_web_r2"},
		{"two cohorts", http.Header{"X-Berth-Cohort": {"5", "6"}, "Cookie": {"sid=" + stableUser}}, fnv1a64(stableUser), true, true, "default_web_r1"},
		{"too large", http.Header{"X-Berth-Cohort": {"18446744073709551616"}}, 0, false, false, ""},
		{"no key", http.Header{"Cookie": {"other=1"}}, 0, false, false, ""},
		{"empty key", http.Header{"Cookie": {"sid="}}, 0, false, false, ""},
	} {
		req := &request{}
		for k, vs := range tc.hdr {
			for _, v := range vs {
				req.hdrs = append(req.hdrs, header{name: []byte(strings.ToLower(k)), value: []byte(v)})
			}
		}
		for view, h := range map[string]cohortHeaders{"net/http": httpHeaders(tc.hdr), "fast path": req} {
			cohort, derived, ok := re.sticky.cohort(h)
			if cohort != tc.cohort || derived != tc.derived || ok != tc.sticky {
				t.Errorf("%s, %s: cohort %d derived %v ok %v; want %d %v %v", tc.name, view, cohort, derived, ok, tc.cohort, tc.derived, tc.sticky)
			}
			if !tc.sticky {
				continue
			}
			if wc, _, _ := re.pickFor(h); wc.name != tc.cluster {
				t.Errorf("%s, %s: picked %s, want %s", tc.name, view, wc.name, tc.cluster)
			}
		}
	}

	// Requests without a cohort keep the smooth weighted round robin.
	counts := map[string]int{}
	for range 1000 {
		wc, _, derived := re.pickFor(httpHeaders{})
		if derived {
			t.Fatal("a cohort derived from nothing")
		}
		counts[wc.name]++
	}
	if counts["default_web_r2"] != 100 {
		t.Errorf("without a cohort: %v, want exactly 100 of 1000 on the canary", counts)
	}
}

func TestCompileStickyRejects(t *testing.T) {
	sticky := func(mutate func(*route.RouteAction)) *route.RouteConfiguration {
		r := prefixRoute("a", "/")
		ra := r.GetRoute()
		ra.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{
			Clusters: []*route.WeightedCluster_ClusterWeight{
				{Name: "canary", Weight: wrapperspb.UInt32(10)}, {Name: "stable", Weight: wrapperspb.UInt32(90)}},
			RandomValueSpecifier: &route.WeightedCluster_HeaderName{HeaderName: "x-berth-cohort"},
		}}
		ra.HashPolicy = []*route.RouteAction_HashPolicy{{PolicySpecifier: &route.RouteAction_HashPolicy_Cookie_{
			Cookie: &route.RouteAction_HashPolicy_Cookie{Name: "sid"}}}}
		mutate(ra)
		return &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{{Name: "v", Domains: []string{"a"}, Routes: []*route.Route{r}}}}
	}
	if _, err := compile(response(t, resource.RouteType, sticky(func(*route.RouteAction) {})), "berth_http"); err != nil {
		t.Fatalf("plain sticky split: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*route.RouteAction)
		want   string
	}{
		{"cookie ttl", func(ra *route.RouteAction) { ra.HashPolicy[0].GetCookie().Ttl = durationpb.New(0) }, "generated cookies"},
		{"two policies", func(ra *route.RouteAction) { ra.HashPolicy = append(ra.HashPolicy, ra.HashPolicy[0]) }, "only one"},
		{"source ip", func(ra *route.RouteAction) {
			ra.HashPolicy[0].PolicySpecifier = &route.RouteAction_HashPolicy_ConnectionProperties_{
				ConnectionProperties: &route.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}
		}, "is not supported"},
		{"use_hash_policy", func(ra *route.RouteAction) {
			ra.GetWeightedClusters().RandomValueSpecifier = &route.WeightedCluster_UseHashPolicy{UseHashPolicy: wrapperspb.Bool(true)}
		}, "use_hash_policy is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compile(response(t, resource.RouteType, sticky(tc.mutate)), "berth_http")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("compile = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestFastPathStickyDoesNotAllocate: deriving a cohort from a cookie and
// sending it upstream stays on the fast path without allocating.
func TestFastPathStickyDoesNotAllocate(t *testing.T) {
	g := testGateway(t, func(c *Config) { c.LoadReporting = false })
	install(g, func(re *routeEntry, c *upstreamCluster) {
		re.clusters = append(re.clusters, weightedCluster{name: "stable", weight: 90, cluster: c, stats: re.clusters[0].stats})
		re.clusters[0].weight, re.total = 10, 100
		re.schedule = weightSchedule([]uint32{10, 90})
		re.sticky = &stickyCohort{header: "X-Berth-Cohort", keyCookie: "sid"}
	}, rawUpstream(t))
	req := "GET /x HTTP/1.1\r\nHost: a.test\r\nCookie: theme=dark; sid=user-42\r\nX-Berth-Cohort: junk\r\n\r\n"
	if avg := allocsPerRequest(t, g, req); avg > 0.05 {
		t.Errorf("%.2f allocations per sticky request, want none", avg)
	}
}
