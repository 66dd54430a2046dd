package controlplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/discovery"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Heartbeats are kept in the replica's memory: a hundred of them write
// nothing to etcd (each was a get, a keep-alive and a put); a new DNS
// version is one write; a node no longer heard is NotReady.
func TestHeartbeatsWriteNothingToEtcd(t *testing.T) {
	h := start(t, func(c *Config) { c.HeartbeatInterval, c.NodeTimeout = 100*time.Millisecond, time.Second })
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 1000, MemoryBytes: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a Ready", func() (bool, string) { st := nodeState(h, "a"); return st == "Ready", st })
	rev := func() int64 {
		r, err := h.srv.Etcd().Get(ctx, "/berth/nothing")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	time.Sleep(300 * time.Millisecond) // what the registration set off settles
	before := rev()
	for range 100 {
		if _, err := h.agent.Heartbeat(ctx, &pb.HeartbeatRequest{Name: "a", DnsVersion: 7}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	// One write: the DNS version went from 0 to 7.
	if grew := rev() - before; grew > 2 {
		t.Fatalf("100 heartbeats grew etcd's revision by %d", grew)
	}
	var ok bool
	l, _ := h.berth.ListNodes(ctx, &pb.ListNodesRequest{})
	for _, n := range l.GetNodes() {
		ok = ok || (n.Name == "a" && n.DnsVersion == 7 && time.Since(n.Heartbeat.AsTime()) < time.Second)
	}
	if !ok {
		t.Fatalf("node a after heartbeats with DNS version 7: %v", l)
	}
	eventually(t, "a NotReady once no longer heard", func() (bool, string) {
		st := nodeState(h, "a")
		return st == "NotReady", st
	})
}

// A control plane that was down longer than its nodes' timeout judges no
// node for its own absence: a restarted replica keeps a Ready node's
// endpoints until the node had a fair chance to be heard (before, the
// first snapshot after the restart dropped them, and requests failed
// until the next heartbeat).
func TestRestartGivesNodesAGracePeriod(t *testing.T) {
	dir := t.TempDir()
	type replica struct {
		srv  *Server
		cli  pb.BerthClient
		node *nodeRouter
		stop func()
	}
	run := func() replica {
		cfg := DefaultConfig()
		cfg.DataDir, cfg.APIAddr = dir, "127.0.0.1:0"
		cfg.Etcd = EtcdTuning{TickMs: 10, ElectionMs: 100}
		cfg.HeartbeatInterval, cfg.NodeTimeout, cfg.ElectionTTL = 100*time.Millisecond, time.Second, time.Second
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		conn := adminConn(t, srv)
		return replica{srv: srv, cli: pb.NewBerthClient(conn), node: newNodeRouter(t, srv), stop: func() { conn.Close(); cancel(); <-done }}
	}
	ctx := context.Background()
	r := run()
	h := &harness{srv: r.srv, berth: r.cli, agent: r.node}
	if _, err := r.node.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 1000, MemoryBytes: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	stopBeats := heartbeat(t, h, "a")
	if _, err := r.cli.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	ready := func(s *discovery.Snapshot) int {
		if s == nil || s.Lookup("default", "hello") == nil {
			return 0
		}
		return len(s.Lookup("default", "hello").ReadyEndpoints())
	}
	eventually(t, "hello ready", func() (bool, string) {
		reportReady(t, h, "a")
		return ready(r.srv.Publisher().Latest()) == 1, fmt.Sprint(r.srv.Publisher().Latest())
	})
	stopBeats()
	r.stop()
	time.Sleep(2500 * time.Millisecond) // the node's claim lapsed with the replica's lease

	r = run()
	defer r.stop()
	h = &harness{srv: r.srv, berth: r.cli, agent: r.node}
	eventually(t, "a first snapshot", func() (bool, string) { return r.srv.Publisher().Latest() != nil, "none" })
	if n := ready(r.srv.Publisher().Latest()); n != 1 {
		t.Fatalf("the first snapshot after the restart has %d ready endpoints of hello, want 1 (no node was heard yet)", n)
	}
	// The old claim lapses a lease TTL after etcd is back (1s here); the
	// agent has not come back yet: within the grace nothing leaves.
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := ready(r.srv.Publisher().Latest()); n != 1 {
			l, _ := r.cli.ListInstances(ctx, &pb.ListInstancesRequest{})
			t.Fatalf("within the grace, before the agent is back: %d endpoints of hello; node %s; %v", n, nodeState(h, "a"), l)
		}
	}
	if st := nodeState(h, "a"); st != "Ready" {
		t.Fatalf("within the grace: node %s", st)
	}
	// The agent is back: nothing ever left.
	heartbeat(t, h, "a")
	time.Sleep(4 * time.Second) // past the grace
	if st := nodeState(h, "a"); st != "Ready" || ready(r.srv.Publisher().Latest()) != 1 {
		t.Fatalf("after the grace with heartbeats: node %s, %d endpoints", st, ready(r.srv.Publisher().Latest()))
	}
}

// The heartbeat stream is the node's alone: a first message naming
// another node is refused, and so is a later one (a node cannot keep
// another alive by switching names mid-stream).
func TestHeartbeatStreamSpeaksForOneNode(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: n, Capacity: &pb.Capacity{MilliCpu: 1000, MemoryBytes: 1 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	send := func(names ...string) error {
		s, err := h.agent.(*nodeRouter).as("a").Heartbeats(ctx)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := s.Send(&pb.HeartbeatRequest{Name: n, DnsVersion: 1}); err != nil {
				break
			}
		}
		_, err = s.CloseAndRecv()
		return err
	}
	if err := send("a", "a", "a"); err != nil {
		t.Fatalf("a's own stream: %v", err)
	}
	for _, names := range [][]string{{"b"}, {"a", "b"}} {
		if err := send(names...); status.Code(err) != codes.PermissionDenied {
			t.Errorf("node a's stream naming %v: %v, want PermissionDenied", names, err)
		}
	}
}

// The agents' discovery feed sends what changed: the whole snapshot
// first, then only the services a change touched, and the removed ones;
// a reconnect with the version held goes on from it.
func TestDiscoveryDeltas(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 8000, MemoryBytes: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	svc := func(name string, replicas int32) *pb.Service {
		s := helloSpec(replicas)
		s.Metadata.Name, s.Spec.Route = name, nil
		return s
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{svc("one", 1), svc("two", 1), svc("three", 1)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "three services published", func() (bool, string) {
		s := h.srv.Publisher().Latest()
		return s != nil && len(s.Services) == 3, fmt.Sprint(s)
	})
	// Agents ask in gzip; a stream asking without compression at the same
	// time gets the same messages, decodable (messages are encoded once per
	// compression and shared: a gzip one sent to it would not decode).
	stream, err := h.agent.WatchDiscoveryDeltas(ctx, &pb.WatchDiscoveryRequest{Node: "a"}, pb.Compressed())
	if err != nil {
		t.Fatal(err)
	}
	plain, err := h.agent.WatchDiscoveryDeltas(ctx, &pb.WatchDiscoveryRequest{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.BaseVersion != 0 || len(first.Services) != 3 {
		t.Fatalf("first message: %v %v", first, err)
	}
	if p, err := plain.Recv(); err != nil || p.Version != first.Version || len(p.Services) != 3 {
		t.Fatalf("first message without compression: %v %v", p, err)
	}
	if _, err := h.berth.DeleteService(ctx, &pb.DeleteServiceRequest{Name: "three"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{svc("four", 1)}}); err != nil {
		t.Fatal(err)
	}
	have, got := first.Version, map[string]bool{}
	for !got["removed default/three"] || !got["default/four"] {
		d, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if d.BaseVersion != have {
			t.Fatalf("delta from %d, the agent has %d", d.BaseVersion, have)
		}
		for _, s := range d.Services {
			if s.Name == "one" || s.Name == "two" {
				t.Fatalf("an unchanged service sent again: %s", s.Name)
			}
			got[s.Namespace+"/"+s.Name] = true
		}
		for _, r := range d.Removed {
			got["removed "+r] = true
		}
		have = d.Version
	}
	for v := first.Version; v < have; {
		p, err := plain.Recv()
		if err != nil {
			t.Fatalf("without compression: %v", err)
		}
		v = p.Version
	}
	// Reconnecting with the version held: no whole snapshot.
	cancel()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	if _, err := h.berth.Apply(ctx2, &pb.ApplyRequest{Services: []*pb.Service{svc("five", 1)}}); err != nil {
		t.Fatal(err)
	}
	stream, err = h.agent.WatchDiscoveryDeltas(ctx2, &pb.WatchDiscoveryRequest{Node: "a", HaveVersion: have})
	if err != nil {
		t.Fatal(err)
	}
	d, err := stream.Recv()
	if err != nil || d.BaseVersion != have || len(d.Services) > 2 {
		t.Fatalf("after a reconnect at %d: %v %v", have, d, err)
	}
}

// A node flooding its heartbeat stream with a new DNS version on every
// message makes this replica write to etcd at most ten times a second
// (before this stream, every heartbeat was three etcd operations).
func TestHeartbeatFloodIsBounded(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 1000, MemoryBytes: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a Ready", func() (bool, string) { st := nodeState(h, "a"); return st == "Ready", st })
	rev := func() int64 { r, _ := h.srv.Etcd().Get(ctx, "/nothing"); return r.Header.Revision }
	s, err := h.agent.(*nodeRouter).as("a").Heartbeats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, start := rev(), time.Now()
	for i := 0; time.Since(start) < time.Second; i++ {
		if err := s.Send(&pb.HeartbeatRequest{Name: "a", DnsVersion: uint64(1 + i%2)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // a flood spread over the second
	}
	if _, err := s.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	time.Sleep(2 * minLivenessFlush) // the last flush
	// Events of the cluster (none here) aside, writes are the flushes.
	if grew, most := rev()-before, int64(took/minLivenessFlush)+5; grew > most {
		t.Fatalf("a second of flipping heartbeats (%s) wrote etcd %d times (at most %d)", took, grew, most)
	}
}
