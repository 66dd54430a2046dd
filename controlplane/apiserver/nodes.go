package apiserver

import (
	"context"
	"fmt"
	"sort"
	"strings"

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
		if n.Cordoned == req.Cordon && (req.Cordon || !n.Drain) {
			return false
		}
		n.Cordoned = req.Cordon
		if !req.Cordon {
			n.Drain = false // uncordon ends a drain too
		}
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

// DrainNode records the intent to drain a node: it is cordoned and marked
// for draining; the controllers drain its instances (each leaves
// discovery, a replacement is placed elsewhere, and the container stops
// through the one stop path).
func (s *Server) DrainNode(ctx context.Context, req *pb.DrainNodeRequest) (*pb.DrainNodeResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "drain: node name is required")
	}
	if _, err := s.store.UpdateNode(ctx, req.Name, func(n *api.Node) bool {
		if n.Cordoned && n.Drain {
			return false
		}
		n.Cordoned, n.Drain = true, true
		return true
	}); err != nil {
		return nil, storeErr(err)
	}
	live := 0
	for _, vi := range s.cache.View().NodeInstances(req.Name) {
		if vi.Instance.Live() {
			live++
		}
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: "NodeDrain", Message: fmt.Sprintf("drain of node %s requested by %s (%d instances); no new instances go there", req.Name, principalOf(ctx), live)})
	return &pb.DrainNodeResponse{InstancesDraining: int32(live)}, nil
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
