package xds

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// gatewaySeries are the berth_xds_gateway_* series of gateway, by name
// and (for the state set) state.
func gatewaySeries(t *testing.T, reg *prometheus.Registry, gateway string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["gateway"] != gateway {
				continue
			}
			key := f.GetName()
			if st, ok := labels["state"]; ok {
				key += "/" + st
			}
			out[key] = gaugeOf(m)
		}
	}
	return out
}

func gaugeOf(m *dto.Metric) float64 { return m.GetGauge().GetValue() }

// waitGatewaySeries polls until ok says the series are as wanted.
func waitGatewaySeries(t *testing.T, reg *prometheus.Registry, gateway, what string, ok func(map[string]float64) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := gatewaySeries(t, reg, gateway)
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: series of %s are %v", what, gateway, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Each connected gateway has its state as a state set, its version and
// its lag; a NACK shows as NACKED; a gateway that disconnects leaves no
// series behind.
func TestGatewaySeriesFollowTheStreams(t *testing.T) {
	s, reg := startServer(t)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: stream, node: &core.Node{Id: "gw-metrics"}}
	for _, typ := range TypeURLs {
		c.send(&discoverypb.DiscoveryRequest{TypeUrl: typ})
	}
	for _, resp := range c.recvAll() {
		c.ack(resp)
	}
	waitGatewaySeries(t, reg, "gw-metrics", "synced", func(m map[string]float64) bool {
		return m["berth_xds_gateway_state/SYNCED"] == 1 && m["berth_xds_gateway_state/NACKED"] == 0 &&
			m["berth_xds_gateway_state/STALE"] == 0 && m["berth_xds_gateway_version"] == 1 && m["berth_xds_gateway_lag_seconds"] == 0
	})

	// Version 2 moves an endpoint: the endpoints come again, and are
	// refused.
	snap2 := snapshotAt(2)
	snap2.Services[1].Revisions[0].Endpoints[0].IP = "10.88.0.21"
	if err := s.Update(snap2); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	c.nack(resp, "1", "refused for the test")
	waitGatewaySeries(t, reg, "gw-metrics", "nacked", func(m map[string]float64) bool {
		return m["berth_xds_gateway_state/NACKED"] == 1 && m["berth_xds_gateway_state/SYNCED"] == 0 && m["berth_xds_gateway_version"] == 1
	})

	cancel()
	waitGatewaySeries(t, reg, "gw-metrics", "disconnected", func(m map[string]float64) bool { return len(m) == 0 })
}
