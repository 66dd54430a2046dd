package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
)

// A change of one node reaches a WatchNodes follower that asked for
// deltas as that node alone (at 1,000 nodes the whole list to every agent
// on every change was a million entries a change: most of the control
// plane's CPU in a join storm); a change elsewhere in the cluster sends
// nothing; a follower that did not ask for deltas still gets whole lists.
func TestWatchNodesSendsDeltas(t *testing.T) {
	h := start(t, func(c *Config) { c.HeartbeatInterval, c.NodeTimeout = 10*time.Second, 30*time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	register := func(name, addr string) {
		t.Helper()
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: name, Address: addr, Capacity: &pb.Capacity{MilliCpu: 2000, MemoryBytes: 1 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	register("node-1", "10.99.0.1")

	deltas, err := h.agent.WatchNodes(ctx, &pb.WatchNodesRequest{Node: "node-1", Deltas: true})
	if err != nil {
		t.Fatal(err)
	}
	whole, err := h.agent.WatchNodes(ctx, &pb.WatchNodesRequest{Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	recv := func(s interface{ Recv() (*pb.NodeList, error) }) *pb.NodeList {
		t.Helper()
		msg, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	names := func(msg *pb.NodeList) (out []string) {
		for _, n := range msg.Nodes {
			out = append(out, n.Name)
		}
		return out
	}
	var set pb.NodeSet
	first := true
	// until applies messages until the set holds what want says; every
	// message but the stream's first must be a delta naming only want's
	// node.
	until := func(node string, want func(*pb.Node) bool) {
		t.Helper()
		for {
			msg := recv(deltas)
			if !first && !msg.Delta || len(msg.Removed) > 0 {
				t.Fatalf("waiting for %s: delta %v nodes %v removed %v; want a delta", node, msg.Delta, names(msg), msg.Removed)
			}
			for _, n := range msg.Nodes {
				if msg.Delta && n.Name != node {
					t.Fatalf("waiting for %s: a delta of %v", node, msg.Nodes)
				}
			}
			set.Apply(msg)
			first = false
			for _, n := range set.List() {
				if n.Name == node && want(n) {
					return
				}
			}
		}
	}
	until("node-1", func(n *pb.Node) bool { return n.Ready })
	if w := recv(whole); w.Delta {
		t.Fatal("a follower without deltas got a delta")
	}

	// A service applied changes the cluster but no node: nothing is sent,
	// so the next messages are node-2's joining.
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	register("node-2", "10.99.0.2")
	until("node-2", func(n *pb.Node) bool { return n.PodCidr != "" && n.Ready })
	for {
		w := recv(whole)
		if w.Delta {
			t.Fatal("a follower without deltas got a delta")
		}
		if len(w.Nodes) == 2 {
			break
		}
	}

	// A node that comes back on another address is a delta of that node.
	register("node-1", "10.99.0.11")
	until("node-1", func(n *pb.Node) bool { return n.Address == "10.99.0.11" && n.Ready })
	if l := set.List(); len(l) != 2 || l[0].Address != "10.99.0.11" || l[1].Address != "10.99.0.2" {
		t.Fatalf("the follower holds %v", l)
	}
	// Joining is not a flap: no node was NotReady between its Register
	// and its liveness claim (it was, with a Warning, on every join).
	events, err := h.berth.ListEvents(ctx, &pb.ListEventsRequest{Object: "node/"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Events {
		if e.Reason == "NodeNotReady" {
			t.Errorf("event %s %s: %s", e.Object, e.Reason, e.Message)
		}
	}
}
