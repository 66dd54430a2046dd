package controller

import (
	"testing"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

func TestAckedWaitsForEveryReadyNodesDNS(t *testing.T) {
	view := func(versions map[string]uint64, live ...string) *store.View {
		v := &store.View{LiveNodes: map[string]bool{}, DNSVersions: versions,
			Gateways: []api.GatewayStatus{{NodeID: "gw-1", Replica: "r1", Version: 100, State: api.GatewaySynced}}}
		for _, n := range []string{"a", "b", "c"} {
			v.Nodes = append(v.Nodes, api.Node{Name: n})
		}
		for _, n := range live {
			v.LiveNodes[n] = true
		}
		return v
	}
	c := &Controller{}
	for _, tc := range []struct {
		name     string
		v        *store.View
		rev      int64
		want     bool
		whyMatch string
	}{
		{"all nodes at the version", view(map[string]uint64{"a": 50, "b": 50, "c": 60}, "a", "b", "c"), 50, true, ""},
		{"one node behind", view(map[string]uint64{"a": 50, "b": 49, "c": 60}, "a", "b", "c"), 50, false, "DNS on node b"},
		{"two nodes behind", view(map[string]uint64{"a": 10, "b": 49, "c": 60}, "a", "b", "c"), 50, false, "DNS on node a, b"},
		{"a node behind but not ready is not waited for", view(map[string]uint64{"a": 50, "b": 10, "c": 60}, "a", "c"), 50, true, ""},
		{"a node with no snapshot yet is not waited for", view(map[string]uint64{"a": 50, "b": 0}, "a", "b"), 50, true, ""},
		{"nodes in step but a gateway behind", view(map[string]uint64{"a": 200, "b": 200}, "a", "b"), 150, false, "gateway gw-1"},
	} {
		got, why := c.acked(tc.v, tc.rev)
		if got != tc.want || why != tc.whyMatch {
			t.Errorf("%s: acked = %v %q, want %v %q", tc.name, got, why, tc.want, tc.whyMatch)
		}
	}
	// VersionFor maps the etcd revision to the snapshot that carries it;
	// until the publisher has seen the revision nothing is acked.
	c.cfg.VersionFor = func(rev int64) (uint64, bool) { return 40, rev <= 60 }
	if ok, _ := c.acked(view(map[string]uint64{"a": 40}, "a"), 55); !ok {
		t.Error("node at the mapped snapshot version 40 should count as acked for revision 55")
	}
	if ok, why := c.acked(view(map[string]uint64{"a": 40}, "a"), 70); ok || why != "the discovery snapshot" {
		t.Errorf("revision not yet published: acked = %v %q", ok, why)
	}
}

// Gateways of every control plane replica count, as the replicas record
// them in etcd; a NACK is reported with its reason.
func TestAckedWaitsForEveryReplicasGateways(t *testing.T) {
	c := &Controller{}
	v := &store.View{Gateways: []api.GatewayStatus{
		{NodeID: "gw-a", Replica: "r1", Version: 60, State: api.GatewaySynced},
		{NodeID: "gw-b", Replica: "r2", Version: 48, State: api.GatewaySyncing},
		{NodeID: "envoy-c", Replica: "r2", Version: 49, State: api.GatewaySyncing},
	}}
	if ok, why := c.acked(v, 50); ok || why != "gateway gw-b, envoy-c" {
		t.Errorf("two gateways of replica r2 behind: acked = %v %q", ok, why)
	}
	if ok, why := c.acked(v, 48); !ok {
		t.Errorf("every gateway runs 48 or later: acked = %v %q", ok, why)
	}
	v.Gateways[1] = api.GatewayStatus{NodeID: "gw-b", Replica: "r2", Version: 48, State: api.GatewayNacked, LastNack: "cluster version 50: bad"}
	if ok, why := c.acked(v, 50); ok || why != "gateway gw-b (it rejected an update: cluster version 50: bad)" {
		t.Errorf("a NACKed gateway: acked = %v %q", ok, why)
	}
	v.Gateways[1].Version, v.Gateways[2].Version = 50, 50
	if ok, why := c.acked(v, 50); !ok {
		t.Errorf("all at 50: acked = %v %q", ok, why)
	}
	// A gateway behind past its deadline (STALE) holds nothing.
	v.Gateways[2] = api.GatewayStatus{NodeID: "envoy-c", Replica: "r2", Version: 3, State: api.GatewayStale}
	if ok, why := c.acked(v, 50); !ok {
		t.Errorf("a STALE gateway blocks: acked = %v %q", ok, why)
	}
}
