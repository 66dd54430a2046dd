package xds

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/berth-dev/berth/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startServer(t *testing.T) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.Registerer = reg
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, s)
	return s, reg
}

// runServer runs s until the test ends.
func runServer(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// adsClient is a bare ADS stream that lets a test ACK or NACK by hand.
type adsClient struct {
	t      *testing.T
	stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
}

func dialADS(t *testing.T, addr, nodeID string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: stream, node: &core.Node{Id: nodeID}}
	for _, typ := range TypeURLs {
		c.send(&discoverypb.DiscoveryRequest{TypeUrl: typ})
	}
	return c
}

func (c *adsClient) send(req *discoverypb.DiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

// recvAll reads one response per type.
func (c *adsClient) recvAll() map[string]*discoverypb.DiscoveryResponse {
	c.t.Helper()
	got := map[string]*discoverypb.DiscoveryResponse{}
	for len(got) < len(TypeURLs) {
		resp, err := c.stream.Recv()
		if err != nil {
			c.t.Fatal(err)
		}
		if prev, dup := got[resp.TypeUrl]; dup {
			c.t.Fatalf("%s sent twice (versions %s, %s): a resend", resp.TypeUrl, prev.VersionInfo, resp.VersionInfo)
		}
		got[resp.TypeUrl] = resp
	}
	return got
}

func (c *adsClient) ack(resp *discoverypb.DiscoveryResponse) {
	c.send(&discoverypb.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
}

func (c *adsClient) nack(resp *discoverypb.DiscoveryResponse, lastGood, msg string) {
	c.send(&discoverypb.DiscoveryRequest{
		TypeUrl: resp.TypeUrl, VersionInfo: lastGood, ResponseNonce: resp.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: msg},
	})
}

func snapshotAt(version uint64) *discovery.Snapshot {
	s := twoServices()
	s.Version = version
	return s
}

// recvOne reads the next response and checks its type and version.
func (c *adsClient) recvOne(typ, version string) *discoverypb.DiscoveryResponse {
	c.t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	if resp.TypeUrl != typ || resp.VersionInfo != version {
		c.t.Fatalf("got %s version %s, want only %s version %s (a resend, or an unchanged type sent again?)", resp.TypeUrl, resp.VersionInfo, typ, version)
	}
	return resp
}

func TestServerAckNackWithoutResendLoop(t *testing.T) {
	s, reg := startServer(t)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	c := dialADS(t, s.Addr(), "gw-1")
	first := c.recvAll()
	// In TypeURLs order, routes last: the server reads a stream in order,
	// so the NACK is recorded after the other types' ACKs.
	for _, typ := range TypeURLs {
		resp := first[typ]
		if resp.VersionInfo != "1" {
			t.Fatalf("%s version %q, want 1", typ, resp.VersionInfo)
		}
		if typ == resource.RouteType {
			c.nack(resp, "", "route berth_routes: unsupported thing")
			continue
		}
		c.ack(resp)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.WaitForAck(ctx, 1)
	if !errors.Is(err, ErrNacked) || !strings.Contains(err.Error(), "unsupported thing") {
		t.Fatalf("WaitForAck after a NACK = %v, want ErrNacked with the gateway's message", err)
	}
	gws := s.Gateways()
	if len(gws) != 1 || gws[0].NodeID != "gw-1" || gws[0].State != StateNacked || gws[0].Delta {
		t.Fatalf("Gateways() = %+v", gws)
	}
	n := gws[0].LastNack
	if n == nil || n.TypeURL != resource.RouteType || n.Version != "1" || n.Error != "route berth_routes: unsupported thing" {
		t.Fatalf("LastNack = %+v", n)
	}
	if got := gws[0].Acked[resource.ClusterType]; got != "1" {
		t.Errorf("cluster ACK = %q, want 1", got)
	}
	if v := metricValue(t, s.metrics.nacks.WithLabelValues("route")); v != 1 {
		t.Errorf("berth_xds_nacks_total{type=route} = %v", v)
	}

	// Version 2 moves one endpoint: the next thing on the stream is the
	// endpoints at version 2, alone (no resend of the NACKed routes, no
	// unchanged type).
	snap2 := snapshotAt(2)
	snap2.Services[1].Revisions[0].Endpoints[0].IP = "10.88.0.21"
	if err := s.Update(snap2); err != nil {
		t.Fatal(err)
	}
	eds := c.recvOne(resource.EndpointType, "2")
	if len(eds.Resources) != 4 {
		t.Errorf("state-of-the-world EDS carries %d load assignments, want all 4", len(eds.Resources))
	}
	c.ack(eds)
	// The routes of version 2 are the ones rejected in version 1.
	if err := s.WaitForAck(ctx, 2); !errors.Is(err, ErrNacked) {
		t.Fatalf("WaitForAck(2) = %v, want ErrNacked (version 2 routes are the rejected ones)", err)
	}

	// Version 3 changes the routes: only they are sent.
	snap3 := snapshotAt(3)
	snap3.Services[1].Revisions[0].Endpoints[0].IP = "10.88.0.21"
	snap3.Services[0].Route.Paths = []string{"/", "/v2"}
	if err := s.Update(snap3); err != nil {
		t.Fatal(err)
	}
	c.ack(c.recvOne(resource.RouteType, "3"))
	for _, v := range []uint64{3, 2, 1} {
		if err := s.WaitForAck(ctx, v); err != nil {
			t.Fatalf("WaitForAck(%d): %v", v, err)
		}
	}
	gws = s.Gateways()
	if gws[0].State != StateSynced || gws[0].Version != 3 || gws[0].Acked[resource.ListenerType] != "3" || gws[0].Lag != 0 {
		t.Errorf("after ACKs: %+v", gws[0])
	}
	if v := metricValue(t, s.metrics.responses.WithLabelValues("route", "sotw")); v != 2 {
		t.Errorf("route responses = %v, want 2 (no resend of the NACKed one)", v)
	}
	if !gathered(t, reg, "berth_xds_acks_total") {
		t.Error("berth_xds_acks_total not exported")
	}

	// A version nobody has yet: WaitForAck waits for ctx.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := s.WaitForAck(short, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForAck(4) = %v, want deadline exceeded", err)
	}
}

func TestWaitForAckWithoutGateways(t *testing.T) {
	s, _ := startServer(t)
	if err := s.Update(snapshotAt(5)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.WaitForAck(ctx, 5); err != nil {
		t.Fatalf("WaitForAck with no gateway = %v, want nil", err)
	}
}

func TestPublishChecks(t *testing.T) {
	s, _ := startServer(t)
	if err := s.Update(snapshotAt(5)); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(snapshotAt(5)); err != nil {
		t.Errorf("republishing the same version = %v, want a no-op", err)
	}
	if err := s.Update(snapshotAt(4)); err == nil {
		t.Error("publishing an older version succeeded")
	}
	res, err := Translate(snapshotAt(6), s.cfg.Translate)
	if err != nil {
		t.Fatal(err)
	}
	res.Endpoints = nil // clusters without load assignments: inconsistent
	if err := s.Publish(6, res); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Errorf("Publish of an inconsistent set = %v", err)
	}
	if s.Version() != 5 {
		t.Errorf("Version() = %d after refused publishes, want 5", s.Version())
	}
	if v := metricValue(t, s.metrics.publishErrors); v != 2 {
		t.Errorf("publish errors = %v, want 2", v)
	}
}

func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	switch {
	case out.Counter != nil:
		return out.Counter.GetValue()
	case out.Gauge != nil:
		return out.Gauge.GetValue()
	}
	t.Fatalf("metric %v is neither counter nor gauge", m.Desc())
	return 0
}

func gathered(t *testing.T, reg *prometheus.Registry, name string) bool {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) > 0 {
			return true
		}
	}
	return false
}
