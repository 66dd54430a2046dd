package nodeagent

import (
	"context"
	"maps"
	"net/netip"
	"slices"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/hostgw"
	"github.com/berth-dev/berth/nodeagent/runtime"
)

// followNodes keeps the routes to other nodes' pod subnets current, and
// the containers' fallback DNS (another node's).
func (a *Agent) followNodes(ctx context.Context) {
	var set pb.NodeSet
	peer := ""
	a.retry(ctx, "nodes", func(ctx context.Context) error {
		return pb.FollowNodes(ctx, a.client, a.cfg.Name, &set, func() {
			nodes := set.List()
			if p, addr := dnsPeer(a.cfg.Name, peer, nodes); p != peer {
				if fs, ok := a.rt.(dnsFallbackSetter); ok {
					n, err := fs.SetDNSFallback(addr)
					if err != nil {
						a.logger.Warn("containers' fallback DNS", "err", err)
					} else {
						peer = p
						a.logger.Info("containers' fallback DNS", "node", p, "addr", addr, "rewritten", n)
					}
				}
			}
			added, removed, err := hostgw.Sync(hostgw.Desired(a.cfg.Name, nodes))
			if err != nil {
				a.logger.Warn("routes to other nodes", "err", err)
				return
			}
			if len(added)+len(removed) > 0 {
				a.logger.Info("routes to other nodes updated", "added", added, "removed", removed)
			}
		})
	})
}

// dnsFallbackSetter is the runtime's SetDNSFallback (the loop tests'
// fake runtime has none).
type dnsFallbackSetter interface {
	SetDNSFallback(addr string) (int, error)
}

// The real runtime has it: a rename must not silently end the fallback.
var _ dnsFallbackSetter = (*runtime.Runtime)(nil)

// dnsPeer is the node whose DNS this node's containers fall back to when
// their own node's does not answer (its agent restarting), and that DNS's
// address: the current one while it is ready, else the next ready node
// after self in name order (a ring, so the fallbacks spread), "" when
// there is none. A node's DNS answers every service of the cluster.
func dnsPeer(self, current string, nodes []*pb.Node) (name, addr string) {
	peers := map[string]string{}
	for _, n := range nodes {
		if a := nodeDNS(n); n.Name != self && n.Ready && a != "" {
			peers[n.Name] = a
		}
	}
	if a, ok := peers[current]; ok {
		return current, a
	}
	names := slices.Sorted(maps.Keys(peers))
	if len(names) == 0 {
		return "", ""
	}
	i, _ := slices.BinarySearch(names, self) // the first name after self
	name = names[i%len(names)]
	return name, peers[name]
}

// nodeDNS is the address of a node's DNS (its bridge: the first address
// of its pod subnet), "" if it has no subnet yet.
func nodeDNS(n *pb.Node) string {
	p, err := netip.ParsePrefix(n.PodCidr)
	if err != nil || !p.Addr().Is4() {
		return ""
	}
	return p.Masked().Addr().Next().String()
}
