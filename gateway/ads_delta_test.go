package gateway

import (
	"log/slog"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
)

// deltaClient is an ADS client with no stream: the test hands it
// responses and reads what it answers and holds.
func deltaClient(t *testing.T) *adsClient {
	t.Helper()
	cfg := DefaultConfig()
	cfg.XDSAddr, cfg.NodeID = "127.0.0.1:1", "test"
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.closeListeners)
	g.log = slog.New(slog.DiscardHandler)
	return &adsClient{g: g, state: newXDSState(), held: map[string]map[string]string{}, stats: map[[2]string]*routeStats{}}
}

func cla(name string, ips ...string) *endpointv3.ClusterLoadAssignment {
	c := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for _, ip := range ips {
		c.Endpoints[0].LbEndpoints = append(c.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &core.Address{
				Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 80}}}}}},
		})
	}
	return c
}

// res wraps m as a delta resource; a nil m is a body-less (TTL) one.
func res(t *testing.T, name, version string, m proto.Message) *discoverypb.Resource {
	t.Helper()
	r := &discoverypb.Resource{Name: name, Version: version}
	if m != nil {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		r.Resource = a
	}
	return r
}

// TestHandleDelta applies a sequence of delta responses: each is taken
// whole or not at all, and held versions follow what was taken.
func TestHandleDelta(t *testing.T) {
	c := deltaClient(t)
	ep := resource.EndpointType
	for i, step := range []struct {
		name      string
		resp      *discoverypb.DeltaDiscoveryResponse
		nack      string            // "" for an ACK, else part of the error
		held      map[string]string // CLA name -> version, after
		endpoints map[string]string // CLA name -> its endpoints joined, after
	}{
		{"add two", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "1",
			Resources: []*discoverypb.Resource{res(t, "a", "1", cla("a", "10.0.0.1")), res(t, "b", "1", cla("b", "10.0.0.2", "10.0.0.3"))}},
			"", map[string]string{"a": "1", "b": "1"}, map[string]string{"a": "10.0.0.1:80", "b": "10.0.0.2:80,10.0.0.3:80"}},
		{"update one, remove the other", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "2",
			Resources: []*discoverypb.Resource{res(t, "a", "2", cla("a", "10.0.0.4"))}, RemovedResources: []string{"b", "never-held"}},
			"", map[string]string{"a": "2"}, map[string]string{"a": "10.0.0.4:80"}},
		{"one bad resource rejects all", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "3",
			Resources:        []*discoverypb.Resource{res(t, "c", "3", cla("c", "10.0.0.5")), res(t, "a", "3", cla("a", "backend.test"))},
			RemovedResources: []string{"a"}},
			`"backend.test" is not an IP`, map[string]string{"a": "2"}, map[string]string{"a": "10.0.0.4:80"}},
		{"listed twice", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "3",
			Resources: []*discoverypb.Resource{res(t, "c", "3", cla("c", "10.0.0.5")), res(t, "c", "3", cla("c", "10.0.0.6"))}},
			`endpoint "c": listed twice`, map[string]string{"a": "2"}, map[string]string{"a": "10.0.0.4:80"}},
		{"updated and removed", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "3",
			Resources: []*discoverypb.Resource{res(t, "c", "3", cla("c", "10.0.0.5"))}, RemovedResources: []string{"c"}},
			`endpoint "c": both updated and removed`, map[string]string{"a": "2"}, map[string]string{"a": "10.0.0.4:80"}},
		{"name disagrees", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "3",
			Resources: []*discoverypb.Resource{res(t, "c", "3", cla("d", "10.0.0.5"))}},
			`endpoint "c": the resource is named "d"`, map[string]string{"a": "2"}, map[string]string{"a": "10.0.0.4:80"}},
		{"wrong type", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "3",
			Resources: []*discoverypb.Resource{res(t, "c", "3", &listener.Listener{Name: "c"})}},
			"has type type.googleapis.com/envoy.config.listener.v3.Listener", map[string]string{"a": "2"}, map[string]string{"a": "10.0.0.4:80"}},
		{"heartbeat keeps, add another", &discoverypb.DeltaDiscoveryResponse{TypeUrl: ep, SystemVersionInfo: "4",
			Resources: []*discoverypb.Resource{res(t, "a", "2", nil), res(t, "c", "4", cla("c", "10.0.0.5"))}},
			"", map[string]string{"a": "2", "c": "4"}, map[string]string{"a": "10.0.0.4:80", "c": "10.0.0.5:80"}},
	} {
		before := c.state
		nonce := string(rune('a' + i))
		step.resp.Nonce = nonce
		req := c.handleDelta(step.resp)
		if req.GetTypeUrl() != ep || req.GetResponseNonce() != nonce || len(req.GetResourceNamesSubscribe()) > 0 {
			t.Errorf("%s: request %v, want the type and nonce %q only", step.name, req, nonce)
		}
		switch {
		case step.nack == "" && req.GetErrorDetail() != nil:
			t.Errorf("%s: NACK %q, want an ACK", step.name, req.GetErrorDetail().GetMessage())
		case step.nack != "" && !strings.Contains(req.GetErrorDetail().GetMessage(), step.nack):
			t.Errorf("%s: error detail %q, want one containing %q", step.name, req.GetErrorDetail().GetMessage(), step.nack)
		case step.nack != "" && c.state != before:
			t.Errorf("%s: a NACKed response changed the state", step.name)
		}
		if got := c.held[ep]; !sameMap(got, step.held) {
			t.Errorf("%s: held %v, want %v", step.name, got, step.held)
		}
		got := map[string]string{}
		for name, eps := range c.state.endpoints {
			var addrs []string
			for _, e := range eps {
				addrs = append(addrs, e.addr)
			}
			got[name] = strings.Join(addrs, ",")
		}
		if !sameMap(got, step.endpoints) {
			t.Errorf("%s: endpoints %v, want %v", step.name, got, step.endpoints)
		}
	}
	if v := c.g.Versions()[ep]; v != "4" {
		t.Errorf("table version of endpoints %q, want 4 (the last accepted)", v)
	}
}

// TestHandleDeltaListeners: listeners for other proxies are held (their
// versions go back on reconnect) but not served; removing the served one
// leaves the gateway without a listener.
func TestHandleDeltaListeners(t *testing.T) {
	c := deltaClient(t)
	lt := resource.ListenerType
	other := &listener.Listener{Name: "other"}
	req := c.handleDelta(&discoverypb.DeltaDiscoveryResponse{TypeUrl: lt, SystemVersionInfo: "1", Nonce: "1",
		Resources: []*discoverypb.Resource{res(t, "other", "1", other)}})
	if req.GetErrorDetail() != nil || len(c.state.listeners) != 0 || c.held[lt]["other"] != "1" {
		t.Fatalf("other listener: NACK %v, listeners %v, held %v", req.GetErrorDetail(), c.state.listeners, c.held[lt])
	}
	// The served one, as the translator makes it.
	tr, err := xds.Translate(&discovery.Snapshot{Version: 1}, xds.DefaultTranslateOptions())
	if err != nil || len(tr.Listeners) != 1 {
		t.Fatalf("translate: %v, %d listeners", err, len(tr.Listeners))
	}
	served := tr.Listeners[0]
	req = c.handleDelta(&discoverypb.DeltaDiscoveryResponse{TypeUrl: lt, SystemVersionInfo: "2", Nonce: "2",
		Resources: []*discoverypb.Resource{res(t, served.GetName(), "2", served)}})
	if req.GetErrorDetail() != nil || c.state.listeners[served.GetName()] == nil || !c.g.table.Load().hasListener {
		t.Fatalf("served listener: NACK %v, listeners %v", req.GetErrorDetail(), c.state.listeners)
	}
	req = c.handleDelta(&discoverypb.DeltaDiscoveryResponse{TypeUrl: lt, SystemVersionInfo: "3", Nonce: "3",
		RemovedResources: []string{served.GetName()}})
	if req.GetErrorDetail() != nil || len(c.state.listeners) != 0 || c.g.table.Load().hasListener || !sameMap(c.held[lt], map[string]string{"other": "1"}) {
		t.Fatalf("served listener removed: NACK %v, listeners %v, held %v", req.GetErrorDetail(), c.state.listeners, c.held[lt])
	}
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
