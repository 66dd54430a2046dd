package gateway

import (
	"context"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
)

// lrsServer is a minimal Load Reporting Service: it asks for every
// cluster every 50 ms and sums what it gets.
type lrsServer struct {
	lrsv3.UnimplementedLoadReportingServiceServer
	mu      sync.Mutex
	node    string
	issued  map[string]uint64
	success map[string]uint64
	errors  map[string]uint64
	latency map[string]map[string]latencySum // cluster, then metric name
}

// latencySum adds up one load metric's entries.
type latencySum struct {
	n     uint64
	sumMs float64
}

func (s *lrsServer) StreamLoadStats(stream lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.node = first.GetNode().GetId()
	s.mu.Unlock()
	if err := stream.Send(&lrsv3.LoadStatsResponse{SendAllClusters: true, LoadReportingInterval: durationpb.New(50 * time.Millisecond)}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		s.mu.Lock()
		for _, cs := range req.GetClusterStats() {
			for _, l := range cs.GetUpstreamLocalityStats() {
				s.issued[cs.GetClusterName()] += l.GetTotalIssuedRequests()
				s.success[cs.GetClusterName()] += l.GetTotalSuccessfulRequests()
				s.errors[cs.GetClusterName()] += l.GetTotalErrorRequests()
				for _, m := range l.GetLoadMetricStats() {
					if s.latency == nil {
						s.latency = map[string]map[string]latencySum{}
					}
					if s.latency[cs.GetClusterName()] == nil {
						s.latency[cs.GetClusterName()] = map[string]latencySum{}
					}
					sum := s.latency[cs.GetClusterName()][m.GetMetricName()]
					sum.n += m.GetNumRequestsFinishedWithMetric()
					sum.sumMs += m.GetTotalMetricValue()
					s.latency[cs.GetClusterName()][m.GetMetricName()] = sum
				}
			}
		}
		s.mu.Unlock()
	}
}

// startLRS serves a fresh lrsServer on a loopback port.
func startLRS(t *testing.T) (*lrsServer, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &lrsServer{issued: map[string]uint64{}, success: map[string]uint64{}, errors: map[string]uint64{}}
	gs := grpc.NewServer()
	lrsv3.RegisterLoadReportingServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return srv, lis.Addr().String()
}

func TestLoadReports(t *testing.T) {
	srv, lrsAddr := startLRS(t)

	ok := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(500)
		}
	})
	g := testGateway(t, func(c *Config) {
		c.XDSAddr, c.LoadReporting = lrsAddr, true
		c.BackoffMin, c.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	})
	install(g, nil, ok.URL)
	for i := 0; i < 7; i++ {
		get(t, http.DefaultClient, "http://"+g.Addr()+"/")
	}
	for i := 0; i < 3; i++ {
		get(t, http.DefaultClient, "http://"+g.Addr()+"/fail")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv.mu.Lock()
		issued, success, errs, node := srv.issued["c"], srv.success["c"], srv.errors["c"], srv.node
		srv.mu.Unlock()
		if issued == 10 && success == 7 && errs == 3 {
			if node != "test" {
				t.Errorf("node %q", node)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reports: issued %d, successful %d, errors %d; want 10, 7, 3", issued, success, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLatencyHistogram(t *testing.T) {
	var h latencyHistogram
	for _, d := range []time.Duration{
		-time.Millisecond, 0, time.Millisecond, // le_1 (a negative time counts as 0)
		time.Millisecond + 1,                                                // le_2
		30 * time.Millisecond, 40 * time.Millisecond, 50 * time.Millisecond, // le_50
		10 * time.Second,   // le_10000
		10*time.Second + 1, // le_inf
		time.Minute,        // le_inf
	} {
		h.observe(d)
	}
	got := map[string]latencySum{}
	for _, m := range h.drain() {
		got[m.GetMetricName()] = latencySum{m.GetNumRequestsFinishedWithMetric(), m.GetTotalMetricValue()}
	}
	want := map[string]latencySum{
		"berth.latency_ms.le_1":     {3, 1},
		"berth.latency_ms.le_2":     {1, 1}, // microseconds: the nanosecond is lost
		"berth.latency_ms.le_50":    {3, 120},
		"berth.latency_ms.le_10000": {1, 10000},
		"berth.latency_ms.le_inf":   {2, 70000},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("drained %v, want %v", got, want)
	}
	if again := h.drain(); len(again) != 0 {
		t.Errorf("second drain = %v, want nothing (deltas)", again)
	}
	if n := testing.AllocsPerRun(100, func() { h.observe(42 * time.Millisecond) }); n != 0 {
		t.Errorf("observe allocates %.1f times", n)
	}
}

// TestLatencyBoundsMatchControlPlane: the control plane files the buckets
// by the bounds in their names; both sides keep the same set.
func TestLatencyBoundsMatchControlPlane(t *testing.T) {
	var cp []int64
	for _, b := range xds.LatencyBuckets() {
		cp = append(cp, b.Milliseconds())
	}
	if !slices.Equal(latencyBoundsMs[:], cp) {
		t.Errorf("gateway bounds %v, control plane %v (ms)", latencyBoundsMs, cp)
	}
	if latencyMetricPrefix != xds.LatencyMetricPrefix {
		t.Errorf("metric prefix %q, control plane %q", latencyMetricPrefix, xds.LatencyMetricPrefix)
	}
}

// bucketBounds is the range (lo, hi] of the bucket a latency metric names;
// hi is +Inf for le_inf.
func bucketBounds(t *testing.T, name string) (lo, hi float64) {
	t.Helper()
	s, ok := strings.CutPrefix(name, latencyMetricPrefix)
	if !ok {
		t.Fatalf("metric %q is not a latency bucket", name)
	}
	if s == "inf" {
		return float64(latencyBoundsMs[len(latencyBoundsMs)-1]), math.Inf(1)
	}
	for i, b := range latencyBoundsMs {
		if strconv.FormatInt(b, 10) == s {
			if i > 0 {
				lo = float64(latencyBoundsMs[i-1])
			}
			return lo, float64(b)
		}
	}
	t.Fatalf("metric %q: no such bound", name)
	return 0, 0
}

// TestLoadReportsLatency: after requests to an upstream that takes 30 ms
// to answer, on the fast and the general path, load reports carry them in
// latency buckets; a response whose head comes at once and whose body
// comes late counts as fast.
func TestLoadReportsLatency(t *testing.T) {
	srv, lrsAddr := startLRS(t)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/slow":
			time.Sleep(30 * time.Millisecond)
		case "/late-body":
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond)
			io.WriteString(w, "late")
		}
	})
	g := testGateway(t, func(c *Config) {
		c.XDSAddr, c.LoadReporting = lrsAddr, true
		c.BackoffMin, c.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	})
	install(g, nil, up.URL)
	base := "http://" + g.Addr()
	// A body of unknown length goes chunked: the general path.
	postChunked := func(path string) {
		t.Helper()
		resp, err := http.Post(base+path, "text/plain", struct{ io.Reader }{strings.NewReader("x")})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %d", path, resp.StatusCode)
		}
	}
	// reported returns the latency buckets received so far and the number
	// of requests they hold, and the completed requests reported.
	reported := func() (map[string]latencySum, uint64, uint64) {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		got := maps.Clone(srv.latency["c"])
		var n uint64
		for _, b := range got {
			n += b.n
		}
		return got, n, srv.success["c"] + srv.errors["c"]
	}

	const fast, general = 5, 3
	for i := 0; i < fast; i++ {
		get(t, http.DefaultClient, base+"/slow")
	}
	for i := 0; i < general; i++ {
		postChunked("/slow")
	}
	waitUntil(t, func() bool { _, n, done := reported(); return n >= fast+general && done >= fast+general })
	got, n, done := reported()
	if n != fast+general || done != n {
		t.Fatalf("%d latency samples for %d completed requests, want %d", n, done, fast+general)
	}
	for name, b := range got {
		lo, hi := bucketBounds(t, name)
		if hi < 30 {
			t.Errorf("%s holds %d requests that took at least 30 ms", name, b.n)
		}
		if mean := b.sumMs / float64(b.n); mean <= lo || mean > hi || mean < 30 {
			t.Errorf("%s: %d requests with a mean of %.3f ms", name, b.n, mean)
		}
	}

	srv.mu.Lock()
	srv.latency = nil
	srv.mu.Unlock()
	get(t, http.DefaultClient, base+"/late-body")
	postChunked("/late-body")
	waitUntil(t, func() bool { _, n, _ := reported(); return n >= 2 })
	got, n, _ = reported()
	for name, b := range got {
		if _, hi := bucketBounds(t, name); hi > 250 {
			t.Errorf("%s holds %d of the %d requests whose head came at once", name, b.n, n)
		}
	}
}

// TestLoadReportsLatencyReachControlPlane: the buckets a gateway reports
// are the ones the control plane's load store reads.
func TestLoadReportsLatencyReachControlPlane(t *testing.T) {
	cfg := xds.DefaultConfig()
	cfg.Registerer = prometheus.NewRegistry()
	cfg.LoadReportInterval = 50 * time.Millisecond
	cp, err := xds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("xds Run: %v", err)
		}
	})

	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { time.Sleep(30 * time.Millisecond) })
	g := testGateway(t, func(c *Config) {
		c.XDSAddr, c.LoadReporting = cp.Addr(), true
		c.BackoffMin, c.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	})
	// The control plane counts reports only for clusters it serves: it
	// serves shop/web revision 2 (without a route); once the gateway runs
	// that version, a table routing to the test upstream is installed.
	if err := cp.Update(&discovery.Snapshot{Version: 1, Services: []discovery.Service{{
		Namespace: "shop", Name: "web", Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
		Revisions: []discovery.Revision{{Number: 2, Weight: 100, Endpoints: []discovery.Endpoint{{Instance: "web-2-a", Node: "n1", IP: "10.88.0.2", Ready: true}}}},
	}}}); err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	for len(cp.Gateways()) == 0 && actx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if err := cp.WaitForAck(actx, 1); err != nil {
		t.Fatal(err)
	}
	cluster := xds.ClusterName("shop", "web", 2)
	install(g, func(_ *routeEntry, c *upstreamCluster) { c.name, c.state = cluster, g.reg.cluster(cluster) }, up.URL)
	const n = 4
	for i := 0; i < n; i++ {
		get(t, http.DefaultClient, "http://"+g.Addr()+"/")
	}
	waitUntil(t, func() bool { return cp.Load("shop", "web", 2, time.Minute).LatencySamples >= n })
	got := cp.Load("shop", "web", 2, time.Minute)
	if got.LatencySamples != n || got.Successes != n {
		t.Errorf("Load = %+v, want %d samples of %d successes", got, n, n)
	}
	if got.LatencyMean < 30*time.Millisecond || got.LatencyP99 < got.LatencyMean || got.LatencyP99 > 10*time.Second {
		t.Errorf("latency mean %v, p99 %v; want at least 30 ms, p99 not below the mean", got.LatencyMean, got.LatencyP99)
	}
}
