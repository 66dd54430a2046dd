package controlplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// heartbeat keeps a fake node alive until the returned func is called.
func heartbeat(t *testing.T, h *harness, node string) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			h.agent.Heartbeat(ctx, &pb.HeartbeatRequest{Name: node})
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func nodeState(h *harness, name string) string {
	l, _ := h.berth.ListNodes(context.Background(), &pb.ListNodesRequest{})
	for _, n := range l.GetNodes() {
		if n.Name == name {
			return n.State
		}
	}
	return ""
}

// reportReady answers for a fake agent: every instance assigned to node is
// running and ready.
func reportReady(t *testing.T, h *harness, node string) {
	l, err := h.berth.ListInstances(context.Background(), &pb.ListInstancesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Addresses from the node's own pod subnet: the API refuses others.
	var subnet netip.Prefix
	nodes, _ := h.berth.ListNodes(context.Background(), &pb.ListNodesRequest{})
	for _, n := range nodes.GetNodes() {
		if n.Name == node {
			subnet, _ = netip.ParsePrefix(n.PodCidr)
		}
	}
	var sts []*pb.InstanceStatus
	for i, iv := range l.Instances {
		if iv.Instance.Node == node && (iv.Status == nil || !iv.Status.Ready) {
			ip := subnet.Addr().As4()
			ip[3] = byte(i%250 + 2)
			sts = append(sts, &pb.InstanceStatus{Id: iv.Instance.Id, Node: node, Phase: "Running", Ip: netip.AddrFrom4(ip).String(), Ready: true})
		}
	}
	if len(sts) > 0 {
		if _, err := h.agent.ReportStatus(context.Background(), &pb.ReportStatusRequest{Node: node, Statuses: sts}); err != nil {
			t.Fatal(err)
		}
	}
}

func placement(h *harness, service string) map[string]int {
	l, _ := h.berth.ListInstances(context.Background(), &pb.ListInstancesRequest{Service: service})
	m := map[string]int{}
	for _, iv := range l.GetInstances() {
		if iv.Instance.Desired == "running" && !iv.Instance.Draining {
			m[iv.Instance.Node]++
		}
	}
	return m
}

func TestLostNodeEndpointsLeaveThenInstancesAreReplaced(t *testing.T) {
	h := start(t, func(c *Config) {
		c.HeartbeatInterval, c.NodeTimeout, c.LostGrace = 100*time.Millisecond, time.Second, 2*time.Second
	})
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: n, Capacity: &pb.Capacity{MilliCpu: 4000, MemoryBytes: 4 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat(t, h, "a")
	stopB := heartbeat(t, h, "b")
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one replica per node", func() (bool, string) {
		p := placement(h, "hello")
		return p["a"] == 1 && p["b"] == 1, fmt.Sprint(p)
	})
	reportReady(t, h, "a")
	reportReady(t, h, "b")
	eventually(t, "2 ready endpoints", func() (bool, string) {
		s := h.srv.Publisher().Latest().Lookup("default", "hello")
		return s != nil && len(s.ReadyEndpoints()) == 2, fmt.Sprint(s)
	})

	stopB()
	lapsed := time.Now()
	eventually(t, "b's endpoint out of discovery and b NotReady", func() (bool, string) {
		s := h.srv.Publisher().Latest().Lookup("default", "hello")
		return len(s.ReadyEndpoints()) == 1 && s.ReadyEndpoints()[0].Node == "a" && nodeState(h, "b") == "NotReady", fmt.Sprint(s, nodeState(h, "b"))
	})
	out := time.Since(lapsed)
	eventually(t, "b Lost and its replica replaced on a", func() (bool, string) {
		p := placement(h, "hello")
		return nodeState(h, "b") == "Lost" && p["a"] == 2 && p["b"] == 0, fmt.Sprint(nodeState(h, "b"), p)
	})
	t.Logf("heartbeats stopped -> endpoint out: %s; -> replaced: %s", out.Round(10*time.Millisecond), time.Since(lapsed).Round(10*time.Millisecond))
	if out > 2*time.Second {
		t.Errorf("endpoint left discovery %s after the last heartbeat; node timeout is 1s", out)
	}

	// b comes back: it is Ready again and gets no assignment for its old instance.
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "b", Capacity: &pb.Capacity{MilliCpu: 4000, MemoryBytes: 4 << 30}}); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h, "b")
	eventually(t, "b Ready", func() (bool, string) { return nodeState(h, "b") == "Ready", nodeState(h, "b") })
	stream, err := h.agent.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: "b"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Instances) != 0 {
		t.Fatalf("returning node b still assigned %v", msg.Instances)
	}
}

func TestCordonSelectorAndDrain(t *testing.T) {
	h := start(t, func(c *Config) { c.DrainDelay = 50 * time.Millisecond })
	ctx := context.Background()
	for _, n := range []struct {
		name string
		zone string
	}{{"a", "x"}, {"b", "y"}, {"c", "y"}} {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: n.name, Labels: map[string]string{"zone": n.zone},
			Capacity: &pb.Capacity{MilliCpu: 4000, MemoryBytes: 4 << 30}}); err != nil {
			t.Fatal(err)
		}
		heartbeat(t, h, n.name)
	}
	if _, err := h.berth.CordonNode(ctx, &pb.CordonNodeRequest{Name: "c", Cordon: true}); err != nil {
		t.Fatal(err)
	}
	spec := helloSpec(4)
	spec.Spec.NodeSelector = map[string]string{"zone": "y"}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{spec}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all 4 on b (zone y, c cordoned)", func() (bool, string) {
		p := placement(h, "hello")
		return p["b"] == 4, fmt.Sprint(p)
	})
	if _, err := h.berth.CordonNode(ctx, &pb.CordonNodeRequest{Name: "c", Cordon: false}); err != nil {
		t.Fatal(err)
	}
	resp, err := h.berth.DrainNode(ctx, &pb.DrainNodeRequest{Name: "b"})
	if err != nil || resp.InstancesDraining != 4 {
		t.Fatalf("drain: %v %v", resp, err)
	}
	eventually(t, "replacements on c", func() (bool, string) {
		p := placement(h, "hello")
		return p["c"] == 4 && p["b"] == 0, fmt.Sprint(p)
	})
	nodes, _ := h.berth.ListNodes(ctx, &pb.ListNodesRequest{})
	for _, n := range nodes.Nodes {
		if n.Name == "b" && !n.Cordoned {
			t.Fatal("drained node is not cordoned")
		}
	}
}

func TestLeaderFailover(t *testing.T) {
	etcd, err := StartEmbeddedEtcd(t.TempDir(), EtcdTuning{TickMs: 10, ElectionMs: 100}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	type replica struct {
		srv    *Server
		cancel context.CancelFunc
		done   chan error
	}
	// Every replica holds the same secrets key: it seals Secrets and the
	// cluster CA's key in etcd.
	secretsKey := filepath.Join(t.TempDir(), "secrets.key")
	startReplica := func(name string) *replica {
		cfg := DefaultConfig()
		cfg.DataDir, cfg.APIAddr, cfg.EtcdEndpoints, cfg.Name = t.TempDir(), "127.0.0.1:0", []string{etcd.Endpoint()}, name
		cfg.SecretsKeyFile = secretsKey
		cfg.ElectionTTL = time.Second
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{srv: srv, cancel: cancel, done: make(chan error, 1)}
		go func() { r.done <- srv.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	r1, r2 := startReplica("one"), startReplica("two")

	// etcd holds the CA's key sealed: a copy of etcd mints no
	// certificates, and a replica without the secrets key cannot start.
	ecli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	defer ecli.Close()
	rec, err := ecli.Get(context.Background(), store.CAKey)
	if err != nil || len(rec.Kvs) != 1 {
		t.Fatalf("CA record: %v", err)
	}
	if strings.Contains(string(rec.Kvs[0].Value), "PRIVATE KEY") || !strings.Contains(string(rec.Kvs[0].Value), "SealedKey") {
		t.Fatalf("the CA's private key is in etcd in the clear: %.200s", rec.Kvs[0].Value)
	}
	stranger := DefaultConfig()
	stranger.DataDir, stranger.APIAddr, stranger.EtcdEndpoints, stranger.Name = t.TempDir(), "127.0.0.1:0", []string{etcd.Endpoint()}, "stranger"
	stranger.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if srv, err := New(context.Background(), stranger); err == nil || !strings.Contains(err.Error(), "--secrets-key-file") {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("a replica without the cluster's secrets key: %v, want refused naming --secrets-key-file", err)
	}
	eventually(t, "exactly one leader", func() (bool, string) {
		return r1.srv.IsLeader() != r2.srv.IsLeader(), fmt.Sprint(r1.srv.IsLeader(), r2.srv.IsLeader())
	})
	leader, follower := r1, r2
	if r2.srv.IsLeader() {
		leader, follower = r2, r1
	}
	// Kill the leader: the follower takes over and its controllers work.
	leader.cancel()
	<-leader.done
	leader.done <- nil
	eventually(t, "follower leads", func() (bool, string) { return follower.srv.IsLeader(), "" })
	conn := adminConn(t, follower.srv)
	cli := pb.NewBerthClient(conn)
	if _, err := cli.Apply(context.Background(), &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "instances created by the new leader", func() (bool, string) {
		l, _ := cli.ListInstances(context.Background(), &pb.ListInstancesRequest{})
		return len(l.GetInstances()) == 2, l.String()
	})
}

func TestConcurrentJoinsGetDistinctSubnets(t *testing.T) {
	h := start(t)
	const n = 12
	subnets := make(chan string, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			r, err := h.agent.Register(context.Background(), &pb.RegisterRequest{Name: fmt.Sprintf("node-%d", i)})
			if err != nil {
				errs <- err
				return
			}
			subnets <- r.PodCidr
		}()
	}
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			t.Fatal(err)
		case s := <-subnets:
			if seen[s] {
				t.Fatalf("subnet %s handed out twice", s)
			}
			seen[s] = true
		}
	}
}

func TestVolumeConsumerWaitsForLostNodeUntilReleased(t *testing.T) {
	h := start(t, func(c *Config) {
		c.HeartbeatInterval, c.NodeTimeout, c.LostGrace = 100*time.Millisecond, time.Second, time.Second
	})
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: n, Capacity: &pb.Capacity{MilliCpu: 4000, MemoryBytes: 4 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat(t, h, "a")
	stopB := heartbeat(t, h, "b")
	spec := helloSpec(1)
	spec.Spec.Volumes = []*pb.VolumeMount{{Name: "data", MountPath: "/data"}}
	vol := &pb.Volume{Metadata: &pb.ObjectMeta{Name: "data"}, PinnedNode: "b"}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{spec}, Volumes: []*pb.Volume{vol}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "placed on b, where the volume is", func() (bool, string) {
		p := placement(h, "hello")
		return p["b"] == 1, fmt.Sprint(p)
	})
	stopB()
	eventually(t, "b lost; the replacement waits with the reason", func() (bool, string) {
		d, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
		if err != nil {
			return false, err.Error()
		}
		for _, ev := range d.Events {
			if ev.Reason == "Unschedulable" && strings.Contains(ev.Message, "volume default/data is on node b") {
				return placement(h, "hello")["a"] == 0, ""
			}
		}
		return false, fmt.Sprint(d.Events)
	})
	// Deleting the service keeps the volume; rm while an instance mounts it is refused.
	if _, err := h.berth.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: "data"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("rm in use: %v", err)
	}
	rel, err := h.berth.ReleaseVolume(ctx, &pb.ReleaseVolumeRequest{Name: "data"})
	if err != nil || rel.PreviousNode != "b" {
		t.Fatalf("release: %v %v", rel, err)
	}
	eventually(t, "placed on a after release", func() (bool, string) {
		p := placement(h, "hello")
		return p["a"] == 1, fmt.Sprint(p)
	})
	vols, _ := h.berth.ListVolumes(ctx, &pb.ListVolumesRequest{})
	if len(vols.Volumes) != 1 || vols.Volumes[0].Volume.Node != "a" {
		t.Fatalf("volume now = %v", vols)
	}
}
