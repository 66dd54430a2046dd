package controlplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

type harness struct {
	srv    *Server
	berth  pb.BerthClient
	agent  pb.NodeAgentClient
	snaps  chan *discovery.Snapshot
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, opts ...func(*Config)) *harness {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.APIAddr = "127.0.0.1:0"
	cfg.Etcd = EtcdTuning{TickMs: 10, ElectionMs: 100}
	cfg.DrainDelay = 100 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, o := range opts {
		o(&cfg)
	}
	h := &harness{snaps: make(chan *discovery.Snapshot, 100), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	srv, err := New(ctx, cfg, func(s *discovery.Snapshot) { h.snaps <- s })
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	go func() { h.done <- srv.Run(ctx) }()
	conn := adminConn(t, srv)
	h.berth = pb.NewBerthClient(conn)
	h.agent = newNodeRouter(t, srv)
	h.conn = conn
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil {
			t.Errorf("server run: %v", err)
		}
	})
	return h
}

func eventually(t *testing.T, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, state := f()
		if ok {
			return
		}
		last = state
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last state: %s", what, last)
}

func helloSpec(replicas int32) *pb.Service {
	return &pb.Service{
		Metadata: &pb.ObjectMeta{Name: "hello", Namespace: "default"},
		Spec: &pb.ServiceSpec{Image: "berth.local/hello:v1", Replicas: proto.Int32(replicas),
			Ports:     []*pb.Port{{Name: "http", Port: 8080, Protocol: "http"}},
			Resources: &pb.Resources{Cpu: "100m", Memory: "32Mi"},
			Route:     &pb.Route{Hosts: []string{"hello.example.test"}}},
	}
}

func TestApplyScheduleReportDeleteThroughTheAPI(t *testing.T) {
	h := start(t)
	ctx := context.Background()

	reg, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "node-1", Address: "127.0.0.1", Capacity: &pb.Capacity{MilliCpu: 2000, MemoryBytes: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	if reg.PodCidr != "10.213.0.0/24" {
		t.Fatalf("pod cidr = %s", reg.PodCidr)
	}
	// A second node gets the next subnet; re-registering keeps the first.
	reg2, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "node-2", Address: "127.0.0.2"})
	if err != nil || reg2.PodCidr != "10.213.1.0/24" {
		t.Fatalf("node-2: %v %v", reg2, err)
	}
	again, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "node-1", Address: "127.0.0.1", Capacity: &pb.Capacity{MilliCpu: 2000, MemoryBytes: 1 << 30}})
	if err != nil || again.PodCidr != reg.PodCidr {
		t.Fatalf("re-register: %v %v", again, err)
	}
	// node-2 has no capacity: everything lands on node-1.

	res, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(3)}})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Results[0]; r.Action != "created" || r.Revision != 1 {
		t.Fatalf("apply result %+v", r)
	}

	stream, err := h.agent.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	var assigned []*pb.Instance
	for len(assigned) < 3 {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		assigned = msg.Instances
	}
	var statuses []*pb.InstanceStatus
	for i, in := range assigned {
		if in.Template.Image != "berth.local/hello:v1" || in.Node != "node-1" {
			t.Fatalf("assignment %+v", in)
		}
		statuses = append(statuses, &pb.InstanceStatus{Id: in.Id, Node: "node-1", Phase: "Running", Ip: fmt.Sprintf("10.213.0.%d", i+2), Ready: true})
	}
	if _, err := h.agent.ReportStatus(ctx, &pb.ReportStatusRequest{Node: "node-1", Statuses: statuses}); err != nil {
		t.Fatal(err)
	}
	// A node may not report for instances of another node.
	_, err = h.agent.ReportStatus(ctx, &pb.ReportStatusRequest{Node: "node-2", Statuses: statuses[:1]})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("cross-node report: %v", err)
	}

	var last *discovery.Snapshot
	eventually(t, "3 ready endpoints in the snapshot", func() (bool, string) {
		for {
			select {
			case s := <-h.snaps:
				last = s
				continue
			default:
			}
			break
		}
		if last == nil {
			return false, "no snapshot"
		}
		svc := last.Lookup("default", "hello")
		if svc == nil {
			return false, "no service"
		}
		return len(svc.ReadyEndpoints()) == 3, fmt.Sprintf("%+v", svc)
	})

	list, err := h.berth.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil || len(list.Services) != 1 || list.Services[0].Ready != 3 || list.Services[0].Desired != 3 {
		t.Fatalf("list services: %v %v", list, err)
	}
	detail, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if err != nil || len(detail.DnsAnswers) != 3 || len(detail.Events) == 0 {
		t.Fatalf("describe: %v %v", detail, err)
	}

	// Applying the same spec again changes nothing; scaling makes no revision.
	res, err = h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(3)}})
	if err != nil || res.Results[0].Action != "unchanged" {
		t.Fatalf("re-apply: %v %v", res, err)
	}
	res, err = h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}})
	if err != nil || res.Results[0].Action != "scaled" || res.Results[0].Revision != 1 {
		t.Fatalf("scale: %v %v", res, err)
	}
	eventually(t, "one instance drained and told to stop", func() (bool, string) {
		l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		stopped := 0
		for _, iv := range l.GetInstances() {
			if iv.Instance.Desired == "stopped" {
				stopped++
			}
		}
		return stopped == 1, fmt.Sprint(l)
	})

	if _, err := h.berth.DeleteService(ctx, &pb.DeleteServiceRequest{Name: "hello"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "service gone from the snapshot", func() (bool, string) {
		select {
		case s := <-h.snaps:
			last = s
		default:
		}
		return last.Lookup("default", "hello") == nil, "still there"
	})
	// The agent reports the stops; the control plane then forgets them.
	l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
	eventually(t, "all instances told to stop", func() (bool, string) {
		l, _ = h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		for _, iv := range l.GetInstances() {
			if iv.Instance.Desired != "stopped" {
				return false, iv.String()
			}
		}
		return true, ""
	})
	var stops []*pb.InstanceStatus
	for _, iv := range l.Instances {
		stops = append(stops, &pb.InstanceStatus{Id: iv.Instance.Id, Node: "node-1", Phase: "Stopped"})
	}
	if _, err := h.agent.ReportStatus(ctx, &pb.ReportStatusRequest{Node: "node-1", Statuses: stops}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "instances deleted", func() (bool, string) {
		l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		return len(l.GetInstances()) == 0, l.String()
	})
	_, err = h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("get deleted service: %v", err)
	}
}

func TestApplyRejectsInvalidAndStoresNothing(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	bad := helloSpec(1)
	bad.Spec.Ports[0].Port = 70000
	bad2 := helloSpec(1)
	bad2.Metadata.Name = "Bad_Name"
	good := helloSpec(1)
	good.Metadata.Name = "good"
	_, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{good, bad, bad2}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("apply invalid: %v", err)
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{"services[1]", "spec.ports[0].port", "services[2]", "metadata.name", "nothing stored"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	list, err := h.berth.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil || len(list.Services) != 0 {
		t.Fatalf("something was stored: %v %v", list, err)
	}
	bad3 := helloSpec(1)
	bad3.Spec.Health = &pb.Health{Http: &pb.HTTPProbe{Path: "/", Port: 8080}, Interval: "soon"}
	_, err = h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{bad3}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spec.health.interval") {
		t.Fatalf("bad duration: %v", err)
	}
}

func TestUnschedulableSaysWhy(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "small", Capacity: &pb.Capacity{MilliCpu: 50, MemoryBytes: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an Unschedulable event", func() (bool, string) {
		d, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
		if err != nil {
			return false, err.Error()
		}
		for _, ev := range d.Events {
			if ev.Reason == "Unschedulable" && strings.Contains(ev.Message, "0/1 nodes available: 1 insufficient cpu") {
				return true, ""
			}
		}
		return false, fmt.Sprint(d.Events)
	})
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	run := func() (pb.BerthClient, func()) {
		cfg := DefaultConfig()
		cfg.DataDir, cfg.APIAddr = dir, "127.0.0.1:0"
		cfg.Etcd = EtcdTuning{TickMs: 10, ElectionMs: 100}
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		conn := adminConn(t, srv)
		return pb.NewBerthClient(conn), func() { conn.Close(); cancel(); <-done }
	}
	cli, stop := run()
	if _, err := cli.Apply(context.Background(), &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	stop()
	cli, stop = run()
	defer stop()
	eventually(t, "service back after restart", func() (bool, string) {
		l, err := cli.ListServices(context.Background(), &pb.ListServicesRequest{})
		if err != nil {
			return false, err.Error()
		}
		return len(l.Services) == 1 && l.Services[0].Desired == 2, l.String()
	})
}

func TestHistoryUndoAndRetention(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	apply := func(image string, env map[string]string, replicas int32) *pb.ApplyResult {
		t.Helper()
		s := helloSpec(replicas)
		s.Spec.Image, s.Spec.Env = image, env
		r, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{s}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Results[0]
	}
	apply("hello:v1", nil, 1)
	apply("hello:v2", nil, 1)
	if r := apply("hello:v2", nil, 5); r.Action != "scaled" || r.Revision != 2 {
		t.Fatalf("scaling made a revision: %+v", r)
	}
	apply("hello:v2", map[string]string{"A": "1"}, 5)
	hist, err := h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "hello"})
	if err != nil || len(hist.Revisions) != 3 {
		t.Fatalf("history: %v %v", hist, err)
	}
	if c := hist.Revisions[1].Change; c != "image hello:v1 -> hello:v2" {
		t.Fatalf("change of revision 2 = %q", c)
	}
	if c := hist.Revisions[2].Change; c != "env" || !hist.Revisions[2].Current {
		t.Fatalf("revision 3 = %+v", hist.Revisions[2])
	}
	// Undo goes to the previous revision, as a new one; replicas stay.
	res, err := h.berth.Undo(ctx, &pb.UndoRequest{Name: "hello"})
	if err != nil || res.Revision != 4 {
		t.Fatalf("undo: %v %v", res, err)
	}
	svc, _ := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if svc.Service.Spec.Image != "hello:v2" || len(svc.Service.Spec.Env) != 0 || svc.Service.Spec.GetReplicas() != 5 {
		t.Fatalf("after undo: %+v", svc.Service.Spec)
	}
	if res, err = h.berth.Undo(ctx, &pb.UndoRequest{Name: "hello", ToRevision: 1}); err != nil || res.Revision != 5 {
		t.Fatalf("undo to 1: %v %v", res, err)
	}
	hist, _ = h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "hello"})
	if last := hist.Revisions[len(hist.Revisions)-1]; last.Image != "hello:v1" || last.Change != "rollback to revision 1: image hello:v2 -> hello:v1" {
		t.Fatalf("last revision = %+v", last)
	}
	if _, err := h.berth.Undo(ctx, &pb.UndoRequest{Name: "hello", ToRevision: 99}); status.Code(err) != codes.NotFound {
		t.Fatalf("undo to a missing revision: %v", err)
	}
	// Retention: at most 10 kept.
	for i := 0; i < 12; i++ {
		apply(fmt.Sprintf("hello:r%d", i), nil, 5)
	}
	// The controller prunes (the newest 10, plus any still running).
	eventually(t, "at most 11 revisions kept", func() (bool, string) {
		hist, _ = h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "hello"})
		return len(hist.Revisions) <= 10+1, fmt.Sprint(len(hist.Revisions))
	})
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// dial returns an admin client and a node router for the API of srv.
func dial(t *testing.T, srv *Server) (pb.BerthClient, pb.NodeAgentClient, *grpc.ClientConn) {
	t.Helper()
	conn := adminConn(t, srv)
	return pb.NewBerthClient(conn), newNodeRouter(t, srv), conn
}

// Drains wait for every gateway of the cluster: this replica's (reported
// to etcd by the replica itself) and another replica's (as that replica
// would record them).
func TestDrainWaitsForEveryReplicasGateways(t *testing.T) {
	var localVersion atomic.Uint64
	localVersion.Store(math.MaxUint64)
	h := start(t, func(c *Config) {
		c.Name = "replica-a"
		c.Gateways = func() []api.GatewayStatus {
			return []api.GatewayStatus{{NodeID: "gw-local", Version: localVersion.Load(), State: api.GatewaySynced}}
		}
	})
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "node-1", Address: "127.0.0.1", Capacity: &pb.Capacity{MilliCpu: 2000, MemoryBytes: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(3)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "3 instances placed", func() (bool, string) {
		return placement(h, "hello")["node-1"] == 3, fmt.Sprint(placement(h, "hello"))
	})
	reportReady(t, h, "node-1")
	// Another replica's gateway, behind.
	remote := func(version uint64) {
		t.Helper()
		if err := h.srv.Store().PutGateways(ctx, "replica-b", 0, []api.GatewayStatus{{NodeID: "gw-remote", Version: version, State: api.GatewaySyncing}}); err != nil {
			t.Fatal(err)
		}
	}
	remote(1)
	eventually(t, "both replicas' gateways listed", func() (bool, string) {
		l, _ := h.berth.ListGateways(ctx, &pb.ListGatewaysRequest{})
		got := map[string]string{}
		for _, g := range l.GetGateways() {
			got[g.NodeId] = g.Replica
		}
		return got["gw-local"] == "replica-a" && got["gw-remote"] == "replica-b", fmt.Sprint(l)
	})
	desiredStopped := func() int {
		l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		n := 0
		for _, iv := range l.GetInstances() {
			if iv.Instance.Desired == "stopped" {
				n++
			}
		}
		return n
	}
	scale := func(n int32) {
		t.Helper()
		if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(n)}}); err != nil {
			t.Fatal(err)
		}
	}
	// The remote gateway is behind: the drained instance keeps running
	// well past the drain delay (100 ms).
	scale(2)
	time.Sleep(time.Second)
	if n := desiredStopped(); n != 0 {
		t.Fatalf("%d instances stopped while a gateway of another replica had not applied the drain", n)
	}
	remote(math.MaxUint64)
	eventually(t, "stopped once the remote gateway caught up", func() (bool, string) { return desiredStopped() == 1, "" })

	// Now this replica's own gateway is behind.
	localVersion.Store(1)
	eventually(t, "the local gateway's lag reaches etcd", func() (bool, string) {
		v := h.srv.cache.View()
		for _, g := range v.Gateways {
			if g.NodeID == "gw-local" {
				return g.Version == 1, fmt.Sprint(g)
			}
		}
		return false, "not listed"
	})
	scale(1)
	time.Sleep(time.Second)
	if n := desiredStopped(); n != 1 {
		t.Fatalf("%d instances stopped while this replica's gateway had not applied the drain", n)
	}
	localVersion.Store(math.MaxUint64)
	eventually(t, "stopped once the local gateway caught up", func() (bool, string) { return desiredStopped() == 2, "" })
}

// Events older than an hour are neither listed nor kept, even when their
// leases were renewed by an etcd restart.
func TestOldEventsAreNotListedAndArePruned(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	st := h.srv.Store()
	old := store.Event{At: time.Now().Add(-2 * time.Hour), Namespace: "default", Object: "service/x", Reason: "Old", Message: "two hours ago"}
	recent := store.Event{Namespace: "default", Object: "service/x", Reason: "New", Message: "just now"}
	for _, ev := range []store.Event{old, recent} {
		if err := st.RecordEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := st.ListEvents(ctx, "default", "service/x", 0)
	if err != nil || len(evs) != 1 || evs[0].Reason != "New" {
		t.Fatalf("listed: %+v %v", evs, err)
	}
	// (The leader prunes too, once a minute: count what is stored, not
	// what this call deleted.)
	if _, err := st.PruneEvents(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := h.srv.Etcd().Get(ctx, store.EventsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for _, kv := range resp.Kvs {
		stored = append(stored, string(kv.Value))
	}
	all := strings.Join(stored, "\n")
	if strings.Contains(all, "two hours ago") || !strings.Contains(all, "just now") {
		t.Fatalf("stored after pruning:\n%s", all)
	}
}

// With etcd's default limit of 128 operations per transaction (what an
// external etcd has), 300 replicas of one service are created, placed and,
// scaled to 0, stopped: the controllers split their work across passes.
// One transaction of everything used to fail on every pass.
func TestControllersStayWithinEtcdsTransactionLimit(t *testing.T) {
	h := start(t, func(c *Config) { c.Etcd.MaxTxnOps = 128 })
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "node-1", Address: "127.0.0.1", Capacity: &pb.Capacity{MilliCpu: 1_000_000, MemoryBytes: 1 << 40}}); err != nil {
		t.Fatal(err)
	}
	// One apply is one transaction: too many objects for it is a clear
	// error that stores nothing.
	var many []*pb.Service
	for i := range 70 {
		svc := helloSpec(1)
		svc.Metadata.Name = fmt.Sprintf("many-%02d", i)
		svc.Spec.Route = nil // one host each would be refused anyway
		many = append(many, svc)
	}
	_, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: many})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "applying 70 objects takes") || !strings.Contains(err.Error(), "apply them in smaller groups") {
		t.Fatalf("apply of 70 services under a 128-operation limit: %v", err)
	}
	if list, _ := h.berth.ListServices(ctx, &pb.ListServicesRequest{}); len(list.GetServices()) != 0 {
		t.Fatalf("a failed apply stored %d services", len(list.GetServices()))
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(300)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "300 instances placed", func() (bool, string) {
		p := placement(h, "hello")
		return len(p) == 1 && p["node-1"] == 300, fmt.Sprint(p)
	})
	// Each replica was created once: the controllers never decide on a
	// view that does not show their own last commit.
	evs, err := h.srv.Store().ListEvents(ctx, "default", "service/hello", 0)
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, ev := range evs {
		if ev.Reason == "InstanceCreated" {
			created++
		}
	}
	if created != 300 {
		t.Fatalf("%d instances created for 300 replicas", created)
	}
	// A report of all 300 statuses at once (PutStatuses splits it too).
	l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
	var statuses []*pb.InstanceStatus
	for i, iv := range l.Instances {
		statuses = append(statuses, &pb.InstanceStatus{Id: iv.Instance.Id, Node: "node-1", Phase: "Running", Ready: true, Ip: fmt.Sprintf("10.213.0.%d", i%250+2)})
	}
	if _, err := h.agent.ReportStatus(ctx, &pb.ReportStatusRequest{Node: "node-1", Statuses: statuses}); err != nil {
		t.Fatalf("report of 300 statuses: %v", err)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(0)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all 300 told to stop", func() (bool, string) {
		l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		stopped := 0
		for _, iv := range l.GetInstances() {
			if iv.Instance.Desired == "stopped" {
				stopped++
			}
		}
		return stopped == 300, fmt.Sprint(stopped)
	})
}

// Events share a lease (a grant per write doubled the cost of every
// event), and a lease that vanished (revoked, or etcd restored from a
// snapshot) is replaced instead of failing every later event.
func TestEventsShareALeaseAndSurviveItsLoss(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	st := h.srv.Store()
	leases := func() map[int64]int {
		t.Helper()
		resp, err := h.srv.Etcd().Get(ctx, store.EventsPrefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		out := map[int64]int{}
		for _, kv := range resp.Kvs {
			out[kv.Lease]++
		}
		return out
	}
	for i := range 5 {
		if err := st.RecordEvent(ctx, store.Event{Namespace: "default", Object: "service/lease", Reason: "Test", Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var lease int64
	for id := range leases() {
		lease = id
	}
	// Other parts (the controller) may write events too, on the same lease.
	if ls := leases(); len(ls) != 1 || lease == 0 {
		t.Fatalf("events on leases %v, want one shared lease", ls)
	}
	if _, err := h.srv.Etcd().Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordEvent(ctx, store.Event{Namespace: "default", Object: "service/lease", Reason: "Test", Message: "after the revoke"}); err != nil {
		t.Fatalf("an event after its lease was revoked: %v", err)
	}
	evs, err := st.ListEvents(ctx, "default", "service/lease", 0)
	if err != nil || len(evs) != 1 || evs[0].Message != "after the revoke" {
		t.Fatalf("listed %+v %v; want the one event written after the revoke", evs, err)
	}
}
