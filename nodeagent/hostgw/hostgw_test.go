package hostgw

import (
	"net/netip"
	"testing"

	"github.com/berth-dev/berth/api/pb"
)

func TestDesiredRoutes(t *testing.T) {
	nodes := []*pb.Node{
		{Name: "a", Address: "10.213.64.11", PodCidr: "10.213.0.0/24"},
		{Name: "b", Address: "10.213.64.12", PodCidr: "10.213.1.0/24"},
		{Name: "c", Address: "127.0.0.1", PodCidr: "10.213.2.0/24"}, // loopback: not routable
		{Name: "d", Address: "10.213.64.14", PodCidr: ""},           // no subnet yet
		{Name: "e", Address: "bogus", PodCidr: "10.213.4.0/24"},
	}
	got := Desired("a", nodes)
	want := map[netip.Prefix]netip.Addr{netip.MustParsePrefix("10.213.1.0/24"): netip.MustParseAddr("10.213.64.12")}
	if len(got) != len(want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("routes = %v, want %v", got, want)
		}
	}
}
