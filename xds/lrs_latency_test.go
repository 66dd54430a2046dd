package xds

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/berth-dev/berth/discovery"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
)

// bucket is one load_metric_stats entry: n requests of name's bucket whose
// latencies add up to sumMs.
type bucket struct {
	name  string
	n     uint64
	sumMs float64
}

func metricStats(bs ...bucket) []*endpoint.EndpointLoadMetricStats {
	out := make([]*endpoint.EndpointLoadMetricStats, 0, len(bs))
	for _, b := range bs {
		out = append(out, &endpoint.EndpointLoadMetricStats{MetricName: b.name, NumRequestsFinishedWithMetric: b.n, TotalMetricValue: b.sumMs})
	}
	return out
}

// near accepts the float rounding of the interpolation.
func near(got, want time.Duration) bool {
	return got-want < time.Microsecond && want-got < time.Microsecond
}

// TestLoadReportsLatency sends gateway-style latency buckets over a real
// LRS stream and reads the revision's latency back over windows.
func TestLoadReportsLatency(t *testing.T) {
	s, _ := startServer(t)
	serveRevisions(t, s, "shop", "web", 2, 3, 4, 5)
	base := time.Unix(2_000_000, 0)
	now := base
	mu := make(chan struct{}, 1)
	mu <- struct{}{}
	s.loads.now = func() time.Time { <-mu; defer func() { mu <- struct{}{} }(); return now }
	setNow := func(t time.Time) { <-mu; now = t; mu <- struct{}{} }

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream := openLRS(ctx, t, dialConn(t, s.Addr()), "gw-1")
	// report sends one cluster's stats from two localities (nodes), the
	// buckets of each.
	report := func(cluster string, issued, ok uint64, n1, n2 []bucket) {
		t.Helper()
		err := stream.Send(&lrspb.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{{
			ClusterName: cluster,
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{
				{Locality: &core.Locality{SubZone: "n1"}, TotalIssuedRequests: issued / 2, TotalSuccessfulRequests: ok / 2, LoadMetricStats: metricStats(n1...)},
				{Locality: &core.Locality{SubZone: "n2"}, TotalIssuedRequests: issued - issued/2, TotalSuccessfulRequests: ok - ok/2, LoadMetricStats: metricStats(n2...)},
			},
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	check := func(what string, got LoadStats, samples uint64, mean, p99 time.Duration) {
		t.Helper()
		if got.LatencySamples != samples || !near(got.LatencyMean, mean) || !near(got.LatencyP99, p99) {
			t.Errorf("%s: samples %d, mean %v, p99 %v; want %d, %v, %v", what, got.LatencySamples, got.LatencyMean, got.LatencyP99, samples, mean, p99)
		}
	}

	// 90 requests at 40 ms and 10 at 200 ms, split over two nodes, with
	// metrics that are not Berth's latency (ignored).
	report("shop_web_r2", 100, 100,
		[]bucket{{"berth.latency_ms.le_50", 45, 45 * 40}, {"cpu_utilization", 1000, 1e9}, {"berth.latency_ms.le_soon", 1000, 1e9}},
		[]bucket{{"berth.latency_ms.le_50", 45, 45 * 40}, {"berth.latency_ms.le_250", 10, 10 * 200}, {"berth.latency_ms.le_100", 1000, math.NaN()}})
	waitFor("the first report", func() bool { return s.Load("shop", "web", 2, time.Minute).LatencySamples > 0 })
	// Rank 99 is the 9th of the 10 in (100 ms, 250 ms]: 100 + 0.9 x 150.
	check("first report", s.Load("shop", "web", 2, time.Minute), 100, 56*time.Millisecond, 235*time.Millisecond)

	setNow(base.Add(30 * time.Second))
	report("shop_web_r2", 100, 100, []bucket{{"berth.latency_ms.le_10", 60, 60 * 5}}, []bucket{{"berth.latency_ms.le_10", 40, 40 * 5}})
	waitFor("the second report", func() bool { return s.Load("shop", "web", 2, time.Minute).LatencySamples == 200 })
	// Over the minute: rank 198 is the 8th of the 10 slow ones.
	got := s.Load("shop", "web", 2, time.Minute)
	check("both reports", got, 200, 30500*time.Microsecond, 220*time.Millisecond)
	if got.Requests != 200 || got.Successes != 200 {
		t.Errorf("counters with latency buckets = %+v", got)
	}
	// Over 10 s only the second: rank 99 of 100 in (5 ms, 10 ms].
	check("last 10 s", s.Load("shop", "web", 2, 10*time.Second), 100, 5*time.Millisecond, 9950*time.Microsecond)
	// A minute on, the first report has left the window.
	setNow(base.Add(61 * time.Second))
	check("a minute on", s.Load("shop", "web", 2, time.Hour), 100, 5*time.Millisecond, 9950*time.Microsecond)
	setNow(base.Add(91 * time.Second))
	check("both gone", s.Load("shop", "web", 2, time.Hour), 0, 0, 0)

	// The p99 in the unbounded bucket is that bucket's mean; a bound the
	// store does not know counts in the first bucket that holds it.
	report("shop_web_r3", 100, 100, []bucket{{"berth.latency_ms.le_1", 95, 95 * 0.5}}, []bucket{{"berth.latency_ms.le_inf", 5, 5 * 20000}})
	report("shop_web_r4", 10, 10, []bucket{{"berth.latency_ms.le_750", 10, 10 * 700}}, nil)
	report("shop_web_r5", 100, 100, []bucket{{"berth.latency_ms.le_inf", 100, 100 * 3}}, nil)
	waitFor("the last reports", func() bool { return s.Load("shop", "web", 5, time.Minute).LatencySamples > 0 })
	check("unbounded", s.Load("shop", "web", 3, time.Minute), 100, 1000475*time.Microsecond, 20*time.Second)
	check("unknown bound", s.Load("shop", "web", 4, time.Minute), 10, 700*time.Millisecond, 995*time.Millisecond)
	check("unbounded below its bound", s.Load("shop", "web", 5, time.Minute), 100, 3*time.Millisecond, 10*time.Second)
	check("no latency reported", s.Load("shop", "web", 6, time.Minute), 0, 0, 0)
}

func TestLatencyBucketNames(t *testing.T) {
	last := len(LatencyBuckets())
	for name, want := range map[string]int{
		"berth.latency_ms.le_1":     0,
		"berth.latency_ms.le_0":     0,
		"berth.latency_ms.le_2":     1,
		"berth.latency_ms.le_1.5":   1,
		"berth.latency_ms.le_50":    5,
		"berth.latency_ms.le_10000": last - 1,
		"berth.latency_ms.le_20000": last,
		"berth.latency_ms.le_inf":   last,
		"berth.latency_ms.le_+Inf":  last,
		"berth.latency_ms.le_-1":    -1,
		"berth.latency_ms.le_NaN":   -1,
		"berth.latency_ms.le_":      -1,
		"berth.latency_ms.sum":      -1,
		"latency_ms.le_50":          -1,
	} {
		i, ok := latencyBucket(name)
		if !ok {
			i = -1
		}
		if i != want {
			t.Errorf("latencyBucket(%q) = %d, want %d", name, i, want)
		}
	}
}

// serveRevisions publishes one service with the given revisions, so that
// load reports for their clusters count.
func serveRevisions(t *testing.T, s *Server, ns, name string, revs ...int64) {
	t.Helper()
	svc := discovery.Service{Namespace: ns, Name: name, Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}}}
	for i, r := range revs {
		w := uint32(100 / len(revs))
		if i == 0 {
			w += uint32(100 % len(revs))
		}
		svc.Revisions = append(svc.Revisions, discovery.Revision{Number: r, Weight: w, Endpoints: []discovery.Endpoint{
			{Instance: fmt.Sprintf("%s-%d-a", name, r), Node: "n1", IP: fmt.Sprintf("10.88.0.%d", 10+r), Ready: true},
		}})
	}
	if err := s.Update(&discovery.Snapshot{Version: 1, Services: []discovery.Service{svc}}); err != nil {
		t.Fatal(err)
	}
}
