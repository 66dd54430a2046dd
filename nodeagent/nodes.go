package nodeagent

import (
	"context"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/hostgw"
)

// followNodes keeps the routes to other nodes' pod subnets current.
func (a *Agent) followNodes(ctx context.Context) {
	var set pb.NodeSet
	a.retry(ctx, "nodes", func(ctx context.Context) error {
		return pb.FollowNodes(ctx, a.client, a.cfg.Name, &set, func() {
			added, removed, err := hostgw.Sync(hostgw.Desired(a.cfg.Name, set.List()))
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
