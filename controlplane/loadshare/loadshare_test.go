package loadshare

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startXDS(t *testing.T) *xds.Server {
	t.Helper()
	cfg := xds.DefaultConfig()
	cfg.Addr, cfg.Logger = "127.0.0.1:0", quiet()
	s, err := xds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Reports count only for clusters the replica serves.
	svc := func(name string, rev int64, ip string) discovery.Service {
		return discovery.Service{Namespace: "default", Name: name, Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
			Revisions: []discovery.Revision{{Number: rev, Weight: 100, Endpoints: []discovery.Endpoint{{Instance: name + "-a", Node: "n1", IP: ip, Ready: true}}}}}
	}
	if err := s.Update(&discovery.Snapshot{Version: 1, Services: []discovery.Service{svc("hello", 2, "10.88.0.2"), svc("other", 1, "10.88.0.3")}}); err != nil {
		t.Fatal(err)
	}
	return s
}

// gateway opens a real LRS stream to s as a gateway would and returns a
// function sending one report for a cluster.
func gateway(t *testing.T, s *xds.Server, id string) func(cluster string, issued, ok, failed uint64) {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := lrspb.NewLoadReportingServiceClient(conn).StreamLoadStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&lrspb.LoadStatsRequest{Node: &core.Node{Id: id}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	return func(cluster string, issued, ok, failed uint64) {
		t.Helper()
		err := stream.Send(&lrspb.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{{
			ClusterName: cluster,
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{{
				TotalIssuedRequests: issued, TotalSuccessfulRequests: ok, TotalErrorRequests: failed,
				LoadMetricStats: []*endpoint.EndpointLoadMetricStats{{MetricName: xds.LatencyMetricPrefix + "50", NumRequestsFinishedWithMetric: ok + failed, TotalMetricValue: 40 * float64(ok+failed)}},
			}},
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two replicas, each with a gateway reporting load for the same canary
// revision: each replica's window holds both gateways' load, once, and a
// replica that dies takes nothing back (what it shared stays counted).
func TestReplicasSeeTheWholeClustersLoad(t *testing.T) {
	e, err := controlplane.StartEmbeddedEtcd(t.TempDir(), controlplane.EtcdTuning{TickMs: 10, ElectionMs: 100}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, err := controlplane.DialEtcd(ctx, []string{e.Endpoint()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	a, b := startXDS(t), startXDS(t)
	share := func(name string, x *xds.Server) context.CancelFunc {
		sctx, stop := context.WithCancel(ctx)
		s := &Sharer{Client: cli, Replica: name, XDS: x, Interval: 50 * time.Millisecond, TTL: time.Second, Logger: quiet()}
		done := make(chan struct{})
		go func() { s.Run(sctx); close(done) }()
		select {
		case <-s.Watching():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never followed the other replicas", name)
		}
		return func() { stop(); <-done }
	}
	stopA := share("replica-a", a)
	stopB := share("replica-b", b)
	defer stopB()

	const canary = "default_hello_r2"
	reportA, reportB := gateway(t, a, "gw-a"), gateway(t, b, "gw-b")
	reportA(canary, 100, 90, 10)
	reportB(canary, 50, 50, 0)
	reportA("default_other_r1", 7, 7, 0)

	want := func(x *xds.Server, name string) {
		t.Helper()
		waitFor(t, name+" sees 150 requests, 10 errors", func() (bool, string) {
			st := x.Load("default", "hello", 2, time.Minute)
			return st.Requests == 150 && st.Errors == 10 && st.Successes == 140 && st.LatencySamples == 150, fmt.Sprintf("%+v", st)
		})
	}
	want(a, "replica-a")
	want(b, "replica-b")
	// More load on one side is shared as the difference, not again in full.
	reportB(canary, 10, 5, 5)
	waitFor(t, "replica-a sees replica-b's second report", func() (bool, string) {
		st := a.Load("default", "hello", 2, time.Minute)
		return st.Requests == 160 && st.Errors == 15, fmt.Sprintf("%+v", st)
	})
	time.Sleep(300 * time.Millisecond) // several share intervals without traffic
	for name, x := range map[string]*xds.Server{"replica-a": a, "replica-b": b} {
		if st := x.Load("default", "hello", 2, time.Minute); st.Requests != 160 || st.Errors != 15 {
			t.Errorf("%s after quiet intervals: %+v, want 160 requests and 15 errors (nothing counted twice)", name, st)
		}
	}
	if st := b.Load("default", "other", 1, time.Minute); st.Requests != 7 {
		t.Errorf("replica-b, another cluster: %s", fmt.Sprintf("%+v", st))
	}
	// A replica that stops removes its entry.
	stopA()
	if resp, err := cli.Get(ctx, Prefix+"replica-a"); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("replica-a's entry after it stopped: %v %v", resp, err)
	}
}
