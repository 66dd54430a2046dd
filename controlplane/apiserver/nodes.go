package apiserver

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// CordonNode marks a node (un)schedulable.
func (s *Server) CordonNode(ctx context.Context, req *pb.CordonNodeRequest) (*pb.CordonNodeResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "cordon: node name is required")
	}
	if _, err := s.store.UpdateNode(ctx, req.Name, func(n *api.Node) bool {
		if n.Cordoned == req.Cordon {
			return false
		}
		n.Cordoned = req.Cordon
		return true
	}); err != nil {
		return nil, storeErr(err)
	}
	reason, msg := "NodeCordoned", "no new instances will be placed on node "+req.Name
	if !req.Cordon {
		reason, msg = "NodeUncordoned", "node "+req.Name+" accepts new instances again"
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: reason, Message: msg})
	return &pb.CordonNodeResponse{}, nil
}

// DrainNode cordons a node and drains its instances: each leaves
// discovery, a replacement is placed elsewhere, and the container stops
// through the one stop path.
func (s *Server) DrainNode(ctx context.Context, req *pb.DrainNodeRequest) (*pb.DrainNodeResponse, error) {
	if _, err := s.CordonNode(ctx, &pb.CordonNodeRequest{Name: req.Name, Cordon: true}); err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 10; attempt++ {
		v := s.cache.View()
		var changes []store.InstanceChange
		now := time.Now().UTC()
		for _, vi := range v.Instances {
			in := vi.Instance
			if in.Node != req.Name || in.Draining || in.Desired != api.DesiredRunning {
				continue
			}
			in.Draining, in.DrainSince = true, now
			changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision})
		}
		err := s.store.CommitInstances(ctx, changes)
		if err == nil {
			_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: "NodeDrained", Message: fmt.Sprintf("%d instances draining off node %s", len(changes), req.Name)})
			return &pb.DrainNodeResponse{InstancesDraining: int32(len(changes))}, nil
		}
		if err != store.ErrConflict {
			return nil, storeErr(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, status.Errorf(codes.Aborted, "drain %s: instances kept changing; try again", req.Name)
}

// WatchNodes streams the node list when addresses, subnets or readiness
// change.
func (s *Server) WatchNodes(req *pb.WatchNodesRequest, stream pb.NodeAgent_WatchNodesServer) error {
	changes, unsubscribe := s.cache.Subscribe()
	defer unsubscribe()
	var last string
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-s.cache.Ready():
		}
		v := s.cache.View()
		msg := &pb.NodeList{}
		var keys []string
		for i := range v.Nodes {
			n := v.Nodes[i]
			msg.Nodes = append(msg.Nodes, &pb.Node{Name: n.Name, Address: n.Address, PodCidr: n.PodCIDR, Ready: n.Ready, State: n.State})
			keys = append(keys, fmt.Sprintf("%s/%s/%s/%t", n.Name, n.Address, n.PodCIDR, n.Ready))
		}
		sort.Strings(keys)
		if key := strings.Join(keys, ","); key != last || last == "" {
			last = key + " "
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changes:
		}
	}
}
