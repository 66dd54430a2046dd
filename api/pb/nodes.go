package pb

import (
	"context"
	"maps"
	"slices"
)

// NodeSet is what a WatchNodes follower holds: the cluster's nodes by
// name. The real agent and the scale bench's simulated agents follow the
// feed with it.
type NodeSet struct {
	nodes   map[string]*Node
	version uint64
}

// Apply brings the set to what msg says: the whole list, or a delta on the
// list the previous message left.
func (s *NodeSet) Apply(msg *NodeList) {
	if !msg.Delta || s.nodes == nil {
		s.nodes = make(map[string]*Node, len(msg.Nodes))
	}
	for _, n := range msg.Nodes {
		s.nodes[n.Name] = n
	}
	for _, name := range msg.Removed {
		delete(s.nodes, name)
	}
	s.version = msg.Version
}

// List returns the nodes sorted by name.
func (s *NodeSet) List() []*Node {
	out := make([]*Node, 0, len(s.nodes))
	for _, name := range slices.Sorted(maps.Keys(s.nodes)) {
		out = append(out, s.nodes[name])
	}
	return out
}

// FollowNodes streams the node list into set, asking for deltas, and calls
// changed after each message; it returns when the stream ends. A new call
// (after a reconnect) starts from the whole list again.
func FollowNodes(ctx context.Context, c NodeAgentClient, node string, set *NodeSet, changed func()) error {
	stream, err := c.WatchNodes(ctx, &WatchNodesRequest{Node: node, Deltas: true})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		set.Apply(msg)
		changed()
	}
}
