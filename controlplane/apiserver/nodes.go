package apiserver

import (
	"context"
	"fmt"
	"maps"
	"slices"

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

// nodeFeedKeep is how many node-list changes a WatchNodes follower can
// catch up over with a delta; one further behind gets the whole list.
const nodeFeedKeep = 64

func sameRoute(a, b *pb.Node) bool {
	return a.Name == b.Name && a.Address == b.Address && a.PodCidr == b.PodCidr && a.Ready == b.Ready && a.State == b.State
}

// RunNodeFeed keeps the node list WatchNodes serves: rebuilt once per
// cache change (not once per follower), versioned by the etcd revision of
// the view it came from, with the names each change touched, so that a
// change of one node costs every follower one small delta rather than the
// whole list (1,000 followers of 1,000 nodes: a million entries a change).
func (s *Server) RunNodeFeed(ctx context.Context) error {
	changes, unsubscribe := s.cache.Subscribe()
	defer unsubscribe()
	select {
	case <-ctx.Done():
		return nil
	case <-s.cache.Ready():
	}
	var last uint64
	for first := true; ; first = false {
		// (Without building a view: most changes are not nodes'.)
		if gen := s.cache.NodesGen(); first || gen != last {
			v := s.cache.View()
			last = v.NodesGen
			s.updateNodeFeed(v)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		}
	}
}

func (s *Server) updateNodeFeed(v *store.View) {
	nodes := make(map[string]*pb.Node, len(v.Nodes))
	for i := range v.Nodes {
		n := &v.Nodes[i]
		nodes[n.Name] = &pb.Node{Name: n.Name, Address: n.Address, PodCidr: n.PodCIDR, Ready: n.Ready, State: n.State}
	}
	s.nodeFeed.Update(uint64(max(v.Revision, 1)), nodes)
}

// WatchNodes streams the node list when addresses, subnets or readiness
// change: whole each time, or whole once and then deltas when asked.
func (s *Server) WatchNodes(req *pb.WatchNodesRequest, stream pb.NodeAgent_WatchNodesServer) error {
	var have uint64
	for {
		version, wake := s.nodeFeed.Version()
		if version != 0 && version != have {
			base := have
			if !req.Deltas {
				base = 0
			}
			v, changed, removed, whole := s.nodeFeed.Since(base)
			msg := &pb.NodeList{Delta: !whole, Removed: removed, Version: v}
			for _, name := range slices.Sorted(maps.Keys(changed)) {
				msg.Nodes = append(msg.Nodes, changed[name])
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
			have = v
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-wake:
		}
	}
}
