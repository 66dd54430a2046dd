package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/gateway"
	"github.com/berth-dev/berth/xds"
)

// startGateway runs a gateway with the default ADS protocol (delta)
// following the control plane at xdsAddr.
func startGateway(t *testing.T, xdsAddr string, reg *prometheus.Registry) (*gateway.Gateway, *client) {
	t.Helper()
	gw, err := gateway.New(gateway.Config{
		ListenAddr: "127.0.0.1:0", XDSAddr: xdsAddr, NodeID: "gw-delta",
		ListenerName: "berth_http", Registerer: reg,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("gateway Run: %v", err)
		}
	})
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return gw, &client{t: t, addr: gw.Addr(), http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// onlyFrom fails unless every answer in got came from one of want, and
// each of want answered at least once.
func onlyFrom(t *testing.T, what string, got map[string]int, want ...string) {
	t.Helper()
	for _, up := range want {
		if got[up] == 0 {
			t.Errorf("%s: %s got nothing (%v)", what, up, got)
		}
	}
	for up, k := range got {
		if !contains(want, up) {
			t.Errorf("%s: %s answered %d, want only %v (%v)", what, up, k, want, got)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func ackCount(t *testing.T, reg *prometheus.Registry, typ, result string) float64 {
	return counterValue(t, reg, "berth_gateway_xds_updates_total", map[string]string{"type": typ, "result": result})
}

// TestDeltaEndpointChangeAndNack: on a delta stream an endpoint change
// arrives as one load assignment and moves the traffic; a load assignment
// the gateway cannot serve is NACKed, the server reports the gateway
// NACKED, and traffic stays on the previous endpoints until a good update.
func TestDeltaEndpointChangeAndNack(t *testing.T) {
	ups := startUpstreams(t)
	cp := startXDS(t, "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	gw, c := startGateway(t, cp.srv.Addr(), reg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const closedPort = 1 // "broken" is not used here

	publish(t, cp, snapshot(1, ups.port, closedPort, "127.0.0.1"))
	g := cp.srv.Gateways()[0]
	if !g.Delta || g.State != xds.StateSynced || g.Version != 1 {
		t.Fatalf("after version 1: %+v, want a delta stream SYNCED on 1", g)
	}
	onlyFrom(t, "version 1", c.spread("hello.example.test", 30), "up-1")

	// Version 2 moves hello from .1 to .2 and .3: one load assignment.
	before := map[string]float64{}
	for _, typ := range []string{"cluster", "endpoint", "listener", "route"} {
		before[typ] = ackCount(t, reg, typ, "ack")
	}
	publish(t, cp, snapshot(2, ups.port, closedPort, "127.0.0.2", "127.0.0.3"))
	if g := cp.srv.Gateways()[0]; g.State != xds.StateSynced || g.Version != 2 {
		t.Fatalf("after version 2: %+v, want SYNCED on 2", g)
	}
	onlyFrom(t, "version 2", c.spread("hello.example.test", 60), "up-2", "up-3")
	for typ, n := range before {
		want := n
		if typ == "endpoint" {
			want = n + 1
		}
		if got := ackCount(t, reg, typ, "ack"); got != want {
			t.Errorf("%s responses applied for version 2: %v, want %v", typ, got-n, want-n)
		}
	}
	if vs := gw.Versions(); vs[resource.EndpointType] != "2" || vs[resource.RouteType] != "1" {
		t.Errorf("versions after 2: %v, want endpoints on 2 and routes still on 1", vs)
	}

	// Version 3 moves hello to .1 and an endpoint by host name: valid for
	// Envoy, not for this gateway. The whole response is rejected (half
	// of it applied would send everything to up-1).
	res, err := xds.Translate(snapshot(3, ups.port, closedPort, "127.0.0.1", "127.0.0.3"), xds.DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	hello := xds.ClusterName("default", "hello", 1)
	found := false
	for _, cla := range res.Endpoints {
		if cla.GetClusterName() != hello {
			continue
		}
		for _, loc := range cla.GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				if sa := lb.GetEndpoint().GetAddress().GetSocketAddress(); sa.GetAddress() == "127.0.0.3" {
					sa.Address = "hello.backend.test"
					found = true
				}
			}
		}
	}
	if !found {
		t.Fatalf("no endpoint 127.0.0.3 in load assignment %s", hello)
	}
	if err := cp.srv.Publish(3, res); err != nil {
		t.Fatalf("Publish(3): %v", err)
	}
	if err := cp.srv.WaitForAck(ctx, 3); !errors.Is(err, xds.ErrNacked) {
		t.Fatalf("WaitForAck(3) = %v, want ErrNacked", err)
	}
	g = cp.srv.Gateways()[0]
	if g.State != xds.StateNacked || g.LastNack == nil || g.LastNack.TypeURL != resource.EndpointType ||
		g.LastNack.Version != "3" || !strings.Contains(g.LastNack.Error, `"hello.backend.test" is not an IP`) {
		t.Fatalf("after version 3: state %s, last NACK %+v", g.State, g.LastNack)
	}
	if v := gw.Versions()[resource.EndpointType]; v != "2" {
		t.Errorf("gateway endpoint version %q after the NACK, want 2 (the last good)", v)
	}
	if n := ackCount(t, reg, "endpoint", "nack"); n != 1 {
		t.Errorf("endpoint NACKs counted: %v, want 1", n)
	}
	onlyFrom(t, "after the NACK", c.spread("hello.example.test", 60), "up-2", "up-3")

	// A good version 4 clears it. WaitForAck(4), asked at once, waits for
	// the response that is due instead of reporting the NACK of 3.
	if err := cp.srv.Update(snapshot(4, ups.port, closedPort, "127.0.0.1", "127.0.0.3")); err != nil {
		t.Fatal(err)
	}
	if err := cp.srv.WaitForAck(ctx, 4); err != nil {
		t.Fatalf("WaitForAck(4): %v", err)
	}
	if g := cp.srv.Gateways()[0]; g.State != xds.StateSynced || g.Version != 4 {
		t.Fatalf("after WaitForAck(4): %+v", g)
	}
	onlyFrom(t, "version 4", c.spread("hello.example.test", 60), "up-1", "up-3")
}

// TestDeltaReconnect: after a reconnect the gateway names what it holds,
// so a control plane that has changed one load assignment sends only that
// one; and a restarted control plane that has published nothing yet does
// not take the configuration away.
func TestDeltaReconnect(t *testing.T) {
	ups := startUpstreams(t)
	cp := startXDS(t, "127.0.0.1:0")
	addr := cp.srv.Addr()
	reg := prometheus.NewRegistry()
	gw, c := startGateway(t, addr, reg)
	const closedPort = 1

	publish(t, cp, snapshot(1, ups.port, closedPort, "127.0.0.1"))
	onlyFrom(t, "version 1", c.spread("hello.example.test", 30), "up-1")

	// The control plane goes away and comes back empty: the gateway keeps
	// serving, reconnecting, until it publishes.
	cp.stop()
	waitFor(t, "gateway to notice", func() bool { return gaugeValue(t, reg, "berth_gateway_xds_connected") == 0 })
	cp2 := startXDS(t, addr)
	// The new control plane holds the stream open without answering until
	// it publishes (an answer now would remove everything the gateway
	// holds); the gateway keeps serving what it has.
	waitFor(t, "gateway connected to the new control plane", func() bool {
		return gaugeValue(t, reg, "berth_gateway_xds_connected") == 1 && len(cp2.srv.Gateways()) == 1
	})
	if n := sumCounter(t, cp2.reg, "berth_xds_responses_total"); n != 0 {
		t.Errorf("the new control plane answered %v times before publishing anything", n)
	}
	onlyFrom(t, "before the new control plane publishes", c.spread("hello.example.test", 30), "up-1")
	if v := gw.Versions()[resource.RouteType]; v != "1" {
		t.Errorf("route version %q before the new control plane publishes, want 1", v)
	}

	// It publishes what the gateway holds, except hello's endpoints. All
	// of the new control plane's resources are new to it (version 5), so
	// everything is sent; what matters is that the result is right.
	publish(t, cp2, snapshot(5, ups.port, closedPort, "127.0.0.2"))
	onlyFrom(t, "version 5", c.spread("hello.example.test", 30), "up-2")
	if g := cp2.srv.Gateways()[0]; !g.Delta || g.State != xds.StateSynced || g.Version != 5 {
		t.Fatalf("after version 5: %+v", g)
	}

	// Another control plane publishes the same version 5: after the
	// reconnect the gateway names what it holds (initial_resource_versions),
	// the versions match, and no resource is sent again.
	cp2.stop()
	waitFor(t, "gateway to notice", func() bool { return gaugeValue(t, reg, "berth_gateway_xds_connected") == 0 })
	cp3 := startXDS(t, addr)
	publish(t, cp3, snapshot(5, ups.port, closedPort, "127.0.0.2"))
	if g := cp3.srv.Gateways()[0]; !g.Delta || g.State != xds.StateSynced || g.Version != 5 {
		t.Fatalf("after reconnecting on version 5: %+v", g)
	}
	if n := sumCounter(t, cp3.reg, "berth_xds_resources_sent_total"); n != 0 {
		t.Errorf("resources sent after a reconnect on the version held: %v, want 0", n)
	}
	if n := sumCounter(t, cp3.reg, "berth_xds_responses_total"); n < 4 {
		t.Errorf("responses sent after a reconnect: %v, want one per type at least", n)
	}
	onlyFrom(t, "after reconnecting on version 5", c.spread("hello.example.test", 30), "up-2")
}

// sumCounter adds up every series of a counter.
func sumCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
