package nodeagent

import (
	"testing"

	"github.com/berth-dev/berth/api/pb"
)

// The fallback DNS is another ready node's, spread as a ring, sticky
// while it stays ready.
func TestDNSPeer(t *testing.T) {
	node := func(name string, ready bool) *pb.Node {
		return &pb.Node{Name: name, Ready: ready, PodCidr: map[string]string{"a": "10.213.0.0/24", "b": "10.213.1.0/24", "c": "10.213.2.0/24", "d": "10.213.3.0/24"}[name]}
	}
	all := []*pb.Node{node("c", true), node("a", true), node("b", true)}
	for _, tc := range []struct {
		self, current string
		nodes         []*pb.Node
		want          string
	}{
		{"a", "", all, "b"},
		{"b", "", all, "c"},
		{"c", "", all, "a"},  // the ring wraps
		{"a", "c", all, "c"}, // sticky
		{"a", "b", []*pb.Node{node("a", true), node("b", false), node("c", true)}, "c"}, // b not ready: moves on
		{"a", "", []*pb.Node{node("a", true)}, ""},                                      // alone
		{"a", "", []*pb.Node{node("a", true), {Name: "x", Ready: true}}, ""},            // no subnet yet
	} {
		if got, _ := dnsPeer(tc.self, tc.current, tc.nodes); got != tc.want {
			t.Errorf("dnsPeer(%s, current %q) = %q, want %q", tc.self, tc.current, got, tc.want)
		}
	}
	if _, addr := dnsPeer("a", "", all); addr != "10.213.1.1" {
		t.Errorf("b's DNS: %s", addr)
	}
}
