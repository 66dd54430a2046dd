package xds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/discovery"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// deltaClient is a bare incremental ADS stream.
type deltaClient struct {
	t      *testing.T
	stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func dialConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dialDelta subscribes to types: all of each when names is nil.
func dialDelta(t *testing.T, addr, nodeID string, names map[string][]string, types ...string) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(dialConn(t, addr)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: stream}
	for _, typ := range types {
		c.send(&discoverypb.DeltaDiscoveryRequest{Node: &core.Node{Id: nodeID}, TypeUrl: typ, ResourceNamesSubscribe: names[typ]})
	}
	return c
}

func (c *deltaClient) send(req *discoverypb.DeltaDiscoveryRequest) {
	c.t.Helper()
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *deltaClient) recv() *discoverypb.DeltaDiscoveryResponse {
	c.t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	return resp
}

func (c *deltaClient) ack(resp *discoverypb.DeltaDiscoveryResponse) {
	c.send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce})
}

func (c *deltaClient) nack(resp *discoverypb.DeltaDiscoveryResponse, msg string) {
	c.send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce, ErrorDetail: &status.Status{Code: 3, Message: msg}})
}

func names(resp *discoverypb.DeltaDiscoveryResponse) []string {
	var out []string
	for _, r := range resp.Resources {
		out = append(out, r.Name)
	}
	return out
}

func TestDeltaSendsOnlyWhatChanged(t *testing.T) {
	s, _ := startServer(t)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// gw-all: wildcard on every type. gw-one: the endpoints of one
	// revision only (as Envoy subscribes to EDS), which version 2 leaves alone.
	all := dialDelta(t, s.Addr(), "gw-all", nil, TypeURLs...)
	for range TypeURLs {
		all.ack(all.recv())
	}
	one := dialDelta(t, s.Addr(), "gw-one", map[string][]string{resource.EndpointType: {"shop_web_r1"}}, resource.EndpointType)
	if got := names(one.recv()); len(got) != 1 || got[0] != "shop_web_r1" {
		t.Fatalf("named subscription got %v", got)
	}
	// gw-one has not ACKed yet: version 1 is not everywhere.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	if err := s.WaitForAck(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForAck before gw-one's ACK = %v", err)
	}
	cancelShort()
	// (The ACK is sent below, after version 2 is published: the client
	// still runs version 1 content for shop_web_r1, which version 2 keeps.)

	snap2 := snapshotAt(2)
	snap2.Services[0].Revisions[0].Endpoints[0].IP = "10.88.1.8"
	if err := s.Update(snap2); err != nil {
		t.Fatal(err)
	}
	resp := all.recv()
	if resp.TypeUrl != resource.EndpointType || len(resp.Resources) != 1 || resp.Resources[0].Name != "default_hello_r3" || len(resp.RemovedResources) != 0 {
		t.Fatalf("after one endpoint change got %s %v removed %v, want the one load assignment", resp.TypeUrl, names(resp), resp.RemovedResources)
	}
	cla := &endpoint.ClusterLoadAssignment{}
	if err := resp.Resources[0].Resource.UnmarshalTo(cla); err != nil || cla.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == "" {
		t.Fatalf("load assignment: %v %v", cla, err)
	}
	all.ack(resp)
	one.ack(&discoverypb.DeltaDiscoveryResponse{TypeUrl: resource.EndpointType, Nonce: "1"})
	if err := s.WaitForAck(ctx, 2); err != nil {
		t.Fatalf("WaitForAck(2): %v", err)
	}
	for _, g := range s.Gateways() {
		if !g.Delta || g.Version != 2 || g.State != StateSynced || g.Address == "" {
			t.Errorf("gateway %+v, want delta, synced at 2", g)
		}
	}

	// Version 3 reverts the endpoint: one load assignment again.
	if err := s.Update(snapshotAt(3)); err != nil {
		t.Fatal(err)
	}
	short, cancelShort = context.WithTimeout(ctx, 50*time.Millisecond)
	if err := s.WaitForAck(short, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForAck(3) before the revert is ACKed = %v", err)
	}
	cancelShort()
	resp = all.recv()
	if resp.TypeUrl != resource.EndpointType || len(resp.Resources) != 1 {
		t.Fatalf("revert: %s %v", resp.TypeUrl, names(resp))
	}

	// A NACK is recorded, not re-sent, and fails WaitForAck.
	all.nack(resp, "cluster load assignment default_hello_r3: no thanks")
	if err := s.WaitForAck(ctx, 3); !errors.Is(err, ErrNacked) {
		t.Fatalf("WaitForAck after a delta NACK = %v", err)
	}
	snap4 := snapshotAt(4)
	snap4.Services[1].Revisions[0].Endpoints[0].IP = "10.88.0.22"
	if err := s.Update(snap4); err != nil {
		t.Fatal(err)
	}
	resp = all.recv()
	if got := names(resp); resp.TypeUrl != resource.EndpointType || len(got) != 1 || got[0] != "default_internal_r1" {
		t.Fatalf("after the NACK got %s %v, want only the next change (no resend)", resp.TypeUrl, got)
	}
	all.ack(resp)
	if err := s.WaitForAck(ctx, 4); err != nil {
		t.Fatalf("WaitForAck(4): %v", err)
	}
}

func TestLoadReports(t *testing.T) {
	s, reg := startServer(t)
	serveRevisions(t, s, "shop", "web", 2)
	base := time.Unix(1_000_000, 0)
	now := base
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	s.loads.now = func() time.Time { <-mu; defer func() { mu <- struct{}{} }(); return now }
	setNow := func(t time.Time) { <-mu; now = t; mu <- struct{}{} }

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := lrspb.NewLoadReportingServiceClient(dialConn(t, s.Addr())).StreamLoadStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&lrspb.LoadStatsRequest{Node: &core.Node{Id: "gw-1"}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !first.SendAllClusters || first.LoadReportingInterval.AsDuration() != time.Second {
		t.Fatalf("LRS response = %v", first)
	}
	report := func(cluster string, issued, ok, bad uint64) {
		t.Helper()
		err := stream.Send(&lrspb.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{{
			ClusterName: cluster,
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{
				{Locality: &core.Locality{SubZone: "n1"}, TotalIssuedRequests: issued / 2, TotalSuccessfulRequests: ok / 2, TotalErrorRequests: bad / 2},
				{Locality: &core.Locality{SubZone: "n2"}, TotalIssuedRequests: issued - issued/2, TotalSuccessfulRequests: ok - ok/2, TotalErrorRequests: bad - bad/2},
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

	report("shop_web_r2", 100, 90, 10)
	report("not-a-berth-cluster", 5, 5, 0)
	waitFor("the first report", func() bool { return s.Load("shop", "web", 2, time.Minute).Requests == 100 })
	setNow(base.Add(30 * time.Second))
	report("shop_web_r2", 50, 50, 0)
	waitFor("the second report", func() bool { return s.Load("shop", "web", 2, time.Minute).Requests == 150 })

	got := s.Load("shop", "web", 2, time.Minute)
	if got.Successes != 140 || got.Errors != 10 || got.ErrorRate != 10.0/150 {
		t.Errorf("Load over a minute = %+v", got)
	}
	if got := s.Load("shop", "web", 2, 10*time.Second); got.Requests != 50 || got.Errors != 0 {
		t.Errorf("Load over 10 s = %+v, want only the second report", got)
	}
	if got := s.Load("shop", "web", 1, time.Minute); got.Requests != 0 {
		t.Errorf("revision 1 = %+v, want nothing", got)
	}
	setNow(base.Add(61 * time.Second))
	if got := s.Load("shop", "web", 2, time.Hour); got.Requests != 50 || got.Window != time.Minute {
		t.Errorf("a minute on = %+v, want the first report out of the window", got)
	}
	if v := metricValue(t, s.metrics.lrsUnknown); v != 1 {
		t.Errorf("unknown clusters = %v", v)
	}
	if !gathered(t, reg, "berth_xds_lrs_requests_total") {
		t.Error("berth_xds_lrs_requests_total not exported")
	}
}

// A change that adds a service (a cluster, its load assignment and a route
// to it) reaches a delta client in Envoy's order: cluster, endpoints, then
// route, so a gateway never routes to a cluster it has no endpoints for.
// Repeated: the order used to follow a map's.
func TestDeltaSendsInEnvoyOrder(t *testing.T) {
	s, _ := startServer(t)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	c := dialDelta(t, s.Addr(), "gw-order", nil, TypeURLs...)
	for range TypeURLs {
		c.ack(c.recv())
	}
	for v := uint64(2); v < 22; v++ {
		snap := snapshotAt(v)
		svc := snap.Services[0]
		svc.Name = fmt.Sprintf("new%d", v)
		svc.Route = &discovery.Route{Hosts: []string{svc.Name + ".test"}, Paths: []string{"/"}}
		snap.Services = append(snap.Services, svc)
		slices.SortFunc(snap.Services, func(a, b discovery.Service) int {
			return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
		})
		if err := s.Update(snap); err != nil {
			t.Fatal(err)
		}
		var order []string
		for len(order) < 3 {
			resp := c.recv()
			order = append(order, typeLabel(resp.TypeUrl))
			c.ack(resp)
		}
		if !slices.Equal(order, []string{"cluster", "endpoint", "route"}) {
			t.Fatalf("version %d: responses in the order %v, want cluster, endpoint, route", v, order)
		}
	}
}
