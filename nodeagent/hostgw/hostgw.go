// Package hostgw keeps a node's routes to the other nodes' pod subnets
// (host-gw: each subnet via its node's address), marked with Berth's route
// protocol so that only Berth's routes are ever touched. It decides
// nothing: the control plane's node list says which subnet is where.
package hostgw

import (
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/berth-dev/berth/api/pb"
	"github.com/vishvananda/netlink"
)

// Protocol marks the routes Berth installs (host-gw: each other
// node's pod subnet via that node's address), so the agent can find and
// remove them without touching anyone else's. Values above 4 are free for
// routing daemons; 186 is Berth's.
const Protocol = netlink.RouteProtocol(186)

// Desired computes host-gw routes from the node list: every other
// node with a pod subnet and a routable address. A pure function.
func Desired(self string, nodes []*pb.Node) map[netip.Prefix]netip.Addr {
	out := map[netip.Prefix]netip.Addr{}
	for _, n := range nodes {
		if n.Name == self || n.PodCidr == "" {
			continue
		}
		dst, err := netip.ParsePrefix(n.PodCidr)
		if err != nil {
			continue
		}
		gw, err := netip.ParseAddr(n.Address)
		if err != nil || gw.IsLoopback() || gw.IsUnspecified() {
			continue
		}
		out[dst.Masked()] = gw
	}
	return out
}

// Sync makes the kernel's Berth routes match want: replaces what
// differs and deletes Berth routes no longer wanted (including leftovers of
// an earlier run).
func Sync(want map[netip.Prefix]netip.Addr) (added, removed []string, err error) {
	have, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, nil, fmt.Errorf("list routes: %w", err)
	}
	current := map[netip.Prefix]netip.Addr{}
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw)
		if !ok {
			continue
		}
		p := netip.PrefixFrom(dst.Unmap(), ones)
		if w, keep := want[p]; keep && w == gw.Unmap() {
			current[p] = w
			continue
		}
		rr := r
		if err := netlink.RouteDel(&rr); err != nil {
			return added, removed, fmt.Errorf("delete route %s: %w", p, err)
		}
		removed = append(removed, p.String())
	}
	for dst, gw := range want {
		if current[dst] == gw {
			continue
		}
		_, ipnet, _ := net.ParseCIDR(dst.String())
		r := &netlink.Route{Dst: ipnet, Gw: net.IP(gw.AsSlice()), Protocol: Protocol}
		if err := netlink.RouteReplace(r); err != nil {
			return added, removed, fmt.Errorf("route %s via %s: %w", dst, gw, err)
		}
		added = append(added, dst.String()+" via "+gw.String())
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed, nil
}
