package nodeagent

import (
	"context"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/hostgw"
)

// followNodes keeps the routes to other nodes' pod subnets current.
func (a *Agent) followNodes(ctx context.Context) {
	a.retry(ctx, "nodes", func(ctx context.Context) error {
		stream, err := a.client.WatchNodes(ctx, &pb.WatchNodesRequest{Node: a.cfg.Name})
		if err != nil {
			return err
		}
		for {
			msg, err := stream.Recv()
			if err != nil {
				return err
			}
			added, removed, err := hostgw.Sync(hostgw.Desired(a.cfg.Name, msg.Nodes))
			if err != nil {
				a.logger.Warn("routes to other nodes", "err", err)
				continue
			}
			if len(added)+len(removed) > 0 {
				a.logger.Info("routes to other nodes updated", "added", added, "removed", removed)
			}
		}
	})
}
