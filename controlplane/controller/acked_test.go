package controller

import (
	"context"
	"testing"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

// fixedAcker acks every version up to upTo.
type fixedAcker struct{ upTo uint64 }

func (f fixedAcker) WaitForAck(ctx context.Context, version uint64) error {
	if version <= f.upTo {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func TestAckedWaitsForEveryReadyNodesDNS(t *testing.T) {
	view := func(versions map[string]uint64, live ...string) *store.View {
		v := &store.View{LiveNodes: map[string]bool{}, DNSVersions: versions}
		for _, n := range []string{"a", "b", "c"} {
			v.Nodes = append(v.Nodes, api.Node{Name: n})
		}
		for _, n := range live {
			v.LiveNodes[n] = true
		}
		return v
	}
	c := &Controller{acks: fixedAcker{upTo: 100}}
	ctx := context.Background()
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
		{"nodes in step but gateways behind", view(map[string]uint64{"a": 200, "b": 200}, "a", "b"), 150, false, "every gateway"},
	} {
		got, why := c.acked(ctx, tc.v, tc.rev)
		if got != tc.want || why != tc.whyMatch {
			t.Errorf("%s: acked = %v %q, want %v %q", tc.name, got, why, tc.want, tc.whyMatch)
		}
	}
	// VersionFor maps the etcd revision to the snapshot that carries it;
	// until the publisher has seen the revision nothing is acked.
	c.cfg.VersionFor = func(rev int64) (uint64, bool) { return 40, rev <= 60 }
	if ok, _ := c.acked(ctx, view(map[string]uint64{"a": 40}, "a"), 55); !ok {
		t.Error("node at the mapped snapshot version 40 should count as acked for revision 55")
	}
	if ok, why := c.acked(ctx, view(map[string]uint64{"a": 40}, "a"), 70); ok || why != "the discovery snapshot" {
		t.Errorf("revision not yet published: acked = %v %q", ok, why)
	}
}
