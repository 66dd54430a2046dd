package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/bench/internal/simgw"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"github.com/berth-dev/berth/xds"
)

// tokenEnv carries the join token to the agents' process (not on its
// command line, where ps would show it).
const tokenEnv = "CPSCALE_JOIN_TOKEN"

// caHashEnv carries the CA hash the agents pin when they join.
const caHashEnv = "CPSCALE_CA_HASH"

// plainEnv set: the control plane serves without TLS (-tls plain); each
// agent names itself in a header instead of joining.
const plainEnv = "CPSCALE_PLAIN"

// fleet is the agents' process: its counters are what the benchmark
// process reads (a "stats" line on stdin answers one line on stdout).
type fleet struct {
	agents []*simAgent

	registered, heartbeats, heartbeatErrs atomic.Int64
	snapshots, snapshotBytes, wireBytes   atomic.Int64
	assignments, reports, reportErrs      atomic.Int64
	nodeLists                             atomic.Int64

	// errors prints each distinct error once, to stderr.
	mu     sync.Mutex
	errors map[string]bool
}

func (f *fleet) logOnce(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.errors[msg] || len(f.errors) > 50 {
		return
	}
	f.errors[msg] = true
	fmt.Fprintln(os.Stderr, "cpscale agents:", msg)
}

// agentStats is one "stats" answer. Live counts the instances agents hold
// with desired running and not draining; Ready, those of them reported
// Ready (and stored: the ReportStatus call returned); Total, every
// instance assigned to them, draining and stopped ones too.
type agentStats struct {
	Registered, Heartbeats, HeartbeatErrs int64
	Snapshots, SnapshotBytes, WireBytes   int64
	Assignments, Reports, ReportErrs      int64
	Live, Ready, Total                    int64
	CPU                                   time.Duration
}

var statsFields = []string{"registered", "heartbeats", "heartbeat_errors", "snapshots", "snapshot_bytes", "wire_bytes",
	"assignments", "reports", "report_errors", "live", "ready", "total", "cpu_ns"}

func (s *agentStats) fields() []*int64 {
	return []*int64{&s.Registered, &s.Heartbeats, &s.HeartbeatErrs, &s.Snapshots, &s.SnapshotBytes, &s.WireBytes,
		&s.Assignments, &s.Reports, &s.ReportErrs, &s.Live, &s.Ready, &s.Total, (*int64)(&s.CPU)}
}

func (s agentStats) String() string {
	var b strings.Builder
	for i, p := range s.fields() {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", statsFields[i], *p)
	}
	return b.String()
}

func parseStats(line string) (agentStats, error) {
	var s agentStats
	kv := map[string]string{}
	for f := range strings.FieldsSeq(line) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	for i, p := range s.fields() {
		v, err := strconv.ParseInt(kv[statsFields[i]], 10, 64)
		if err != nil {
			return s, fmt.Errorf("agents' stats line %q: %s: %w", line, statsFields[i], err)
		}
		*p = v
	}
	return s, nil
}

// command answers one line of the benchmark process:
//
//	stats               the fleet's counters (agentStats)
//	flip                agent 0 turns an instance's readiness over and
//	                    reports it: "flip id=ID at=UNIXNANO ready=BOOL"
//	arrived V T0        how many live agents hold discovery version >= V,
//	                    and each one's delay from T0 (unix ns) until it
//	                    got it: "arrived n=N of=M us=D1,D2,..."
//	kill I              agent I stops (a node lost): "killed NAME at=NS"
func (f *fleet) command(ctx context.Context, line string, cpu0 time.Duration) string {
	args := strings.Fields(line)
	if len(args) == 0 {
		return "error empty command"
	}
	switch {
	case args[0] == "stats":
		return f.stats(cpu0).String()
	case args[0] == "flip":
		reply := make(chan string, 1)
		select {
		case f.agents[0].flips <- reply:
		case <-ctx.Done():
			return "error stopped"
		case <-time.After(10 * time.Second):
			return "error agent 0 busy"
		}
		return <-reply
	case args[0] == "arrived" && len(args) >= 3:
		v, err1 := strconv.ParseUint(args[1], 10, 64)
		t0, err2 := strconv.ParseInt(args[2], 10, 64)
		if err1 != nil || err2 != nil {
			return "error arrived V T0: " + line
		}
		var delays []string
		of := 0
		for _, a := range f.agents {
			if a.dead.Load() {
				continue
			}
			of++
			if at, ok := a.arrivedAt(v); ok {
				delays = append(delays, strconv.FormatInt(max(0, at.UnixNano()-t0)/1000, 10))
			}
		}
		return fmt.Sprintf("arrived n=%d of=%d us=%s", len(delays), of, strings.Join(delays, ","))
	case args[0] == "kill" && len(args) == 2:
		i, err := strconv.Atoi(args[1])
		if err != nil || i < 0 || i >= len(f.agents) {
			return "error kill I: " + line
		}
		at := time.Now()
		f.agents[i].dead.Store(true)
		f.agents[i].cancel()
		return fmt.Sprintf("killed %s at=%d", f.agents[i].name, at.UnixNano())
	}
	return "error unknown command: " + line
}

func (f *fleet) stats(cpu0 time.Duration) agentStats {
	s := agentStats{
		Registered: f.registered.Load(), Heartbeats: f.heartbeats.Load(), HeartbeatErrs: f.heartbeatErrs.Load(),
		Snapshots: f.snapshots.Load(), SnapshotBytes: f.snapshotBytes.Load(), WireBytes: f.wireBytes.Load(),
		Assignments: f.assignments.Load(), Reports: f.reports.Load(), ReportErrs: f.reportErrs.Load(),
		CPU: cpuTime() - cpu0,
	}
	for _, a := range f.agents {
		if a.dead.Load() { // killed: its containers are gone with it
			continue
		}
		s.Live += a.live.Load()
		s.Ready += a.ready.Load()
		s.Total += a.total.Load()
	}
	return s
}

// runAgents runs n simulated agents against the control plane at addr
// until SIGTERM or until stdin closes (the benchmark process is gone).
// gatewayTokenEnv passes the gateways' join token to the child.
const gatewayTokenEnv = "CPSCALE_GATEWAY_TOKEN"

func runAgents(addr string, n int, xdsAddr string, gateways int) error {
	ctx, cancel := context.WithCancel(context.Background())
	var conns []*grpc.ClientConn
	defer func() {
		cancel() // first, so that the agents do not take the closing for an error
		for _, c := range conns {
			c.Close()
		}
	}()
	token, caHash := os.Getenv(tokenEnv), os.Getenv(caHashEnv)
	f := &fleet{errors: map[string]bool{}}
	errc := make(chan error, n)
	for i := range n {
		// Each simulated node joins as a real one does: its own key, a
		// CSR, a certificate naming it, and mutual TLS from then on.
		name := fmt.Sprintf("node-%03d", i)
		var conn *grpc.ClientConn
		if os.Getenv(plainEnv) != "" {
			c, err := dialPlain(addr, nodeMD(name), grpc.WithStatsHandler(wireCounter{f}))
			if err != nil {
				return err
			}
			conn = c
		} else {
			creds, err := enroll.Join(ctx, enroll.Options{Server: addr, Role: pki.RoleNode, Name: name, JoinToken: token, CAHash: caHash,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				return err
			}
			if conn, err = pb.Dial(addr, creds.ClientTLS(), grpc.WithStatsHandler(wireCounter{f})); err != nil {
				return err
			}
		}
		conns = append(conns, conn)
		a := &simAgent{
			name: name, address: fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250),
			client: pb.NewNodeAgentClient(conn), fleet: f, beatNow: make(chan struct{}, 1), flips: make(chan chan string),
		}
		f.agents = append(f.agents, a)
	}
	for _, a := range f.agents {
		actx, cancel := context.WithCancel(ctx)
		a.cancel = cancel
		go func() {
			if err := a.run(actx); err != nil && actx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", a.name, err)
			}
		}()
	}
	gwConns, err := startGateways(ctx, addr, xdsAddr, gateways, caHash, errc)
	conns = append(conns, gwConns...)
	if err != nil {
		return err
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	sig := make(chan os.Signal, 1)
	signalNotify(sig)
	cpu0 := cpuTime()
	for {
		select {
		case err := <-errc:
			return err
		case <-sig:
			return nil
		case line, ok := <-lines:
			if !ok {
				return nil
			}
			fmt.Println(f.command(ctx, line, cpu0))
		}
	}
}

// simAgent does what nodeagent.Agent does towards the control plane, with
// no containers: every instance it is told to run is at once Running and
// Ready with an address from its pod subnet.
type simAgent struct {
	name, address string
	client        pb.NodeAgentClient
	fleet         *fleet

	dnsVersion atomic.Uint64
	beatNow    chan struct{}
	// cancel stops this agent alone (the "kill" command: a node lost);
	// flips asks its assignments loop to turn an instance's readiness
	// over (the "flip" command: a probe failing or passing again).
	cancel context.CancelFunc
	dead   atomic.Bool
	flips  chan chan string
	// arrivals: when each of the last discovery versions arrived.
	arrivalsMu sync.Mutex
	arrivals   []arrival
	live       atomic.Int64
	ready      atomic.Int64
	total      atomic.Int64

	// Owned by the assignments loop.
	hosts    *hostPool
	want     map[string]*pb.InstanceStatus // what the instances are now
	reported map[string]*pb.InstanceStatus // what the control plane has stored
	liveIDs  []string                      // assigned, desired running, not draining
}

// arrival is a discovery version and when the agent received it.
type arrival struct {
	version uint64
	at      time.Time
}

// arrivedAt returns when the agent first held a discovery version of at
// least v.
func (a *simAgent) arrivedAt(v uint64) (time.Time, bool) {
	a.arrivalsMu.Lock()
	defer a.arrivalsMu.Unlock()
	for _, r := range a.arrivals {
		if r.version >= v {
			return r.at, true
		}
	}
	return time.Time{}, false
}

func (a *simAgent) run(ctx context.Context) error {
	reg, err := a.register(ctx)
	if err != nil {
		return err
	}
	subnet, err := netip.ParsePrefix(reg.PodCidr)
	if err != nil {
		return fmt.Errorf("pod subnet %q: %w", reg.PodCidr, err)
	}
	a.hosts = newHostPool(subnet)
	a.want, a.reported = map[string]*pb.InstanceStatus{}, map[string]*pb.InstanceStatus{}
	a.fleet.registered.Add(1)
	go a.heartbeat(ctx, time.Duration(reg.HeartbeatIntervalMs)*time.Millisecond)
	go a.retry(ctx, "discovery", a.followDiscovery)
	go a.retry(ctx, "nodes", a.followNodes)
	latest := make(chan *pb.Assignments, 1)
	go a.retry(ctx, "assignments", func(ctx context.Context) error { return a.followAssignments(ctx, latest) })
	return a.assignmentsLoop(ctx, latest)
}

// register retries like the real agent: the control plane may be busy, and
// concurrent joins conflict on the subnet claim.
func (a *simAgent) register(ctx context.Context) (*pb.RegisterResponse, error) {
	req := &pb.RegisterRequest{Name: a.name, Address: a.address,
		Capacity: &pb.Capacity{MilliCpu: 16000, MemoryBytes: 64 << 30}}
	backoff := 100 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := a.client.Register(rctx, req)
		cancel()
		if err == nil {
			return resp, nil
		}
		if c := status.Code(err); c == codes.InvalidArgument || c == codes.Unauthenticated {
			return nil, fmt.Errorf("register: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// heartbeat sends on the Heartbeats stream every interval and at once
// after each snapshot, with the last snapshot version received
// (nodeagent.Agent.heartbeat).
func (a *simAgent) heartbeat(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	// One stream, as nodeagent.Agent.heartbeat.
	var hb pb.HeartbeatStream
	defer hb.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.beatNow:
		}
		err := hb.Send(ctx, a.client, &pb.HeartbeatRequest{Name: a.name, DnsVersion: a.dnsVersion.Load()})
		if err != nil {
			if ctx.Err() == nil {
				a.fleet.heartbeatErrs.Add(1)
				a.fleet.logOnce("heartbeat: %v", err)
			}
			continue
		}
		a.fleet.heartbeats.Add(1)
	}
}

func (a *simAgent) retry(ctx context.Context, what string, f func(context.Context) error) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := f(ctx)
		if ctx.Err() != nil {
			return
		}
		a.fleet.logOnce("%s stream ended: %v", what, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// followDiscovery receives every snapshot, as the real agent's node-local
// DNS does, but decodes only its version (versionCodec): decoding 10,000
// endpoints per agent per snapshot would take the CPU the control plane
// is measured on.
func (a *simAgent) followDiscovery(ctx context.Context) error {
	codec := &versionCodec{fleet: a.fleet}
	// The delta feed, as nodeagent.Agent.followDiscovery.
	stream, err := a.client.WatchDiscoveryDeltas(ctx, &pb.WatchDiscoveryRequest{Node: a.name, HaveVersion: a.dnsVersion.Load(), EndpointDeltas: true}, grpc.ForceCodec(codec), pb.Compressed())
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		a.fleet.snapshots.Add(1)
		a.dnsVersion.Store(msg.Version)
		a.arrivalsMu.Lock()
		if len(a.arrivals) >= 64 {
			a.arrivals = slices.Delete(a.arrivals, 0, 1)
		}
		a.arrivals = append(a.arrivals, arrival{msg.Version, time.Now()})
		a.arrivalsMu.Unlock()
		select {
		case a.beatNow <- struct{}{}:
		default:
		}
	}
}

// followNodes follows the node list as the real agent does for its
// routes to the other nodes' pod subnets (pb.FollowNodes).
func (a *simAgent) followNodes(ctx context.Context) error {
	var set pb.NodeSet
	return pb.FollowNodes(ctx, a.client, a.name, &set, func() {
		a.fleet.nodeLists.Add(1)
	})
}

// followAssignments keeps only the latest set: assignments are level
// triggered.
func (a *simAgent) followAssignments(ctx context.Context, latest chan *pb.Assignments) error {
	stream, err := a.client.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: a.name})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		a.fleet.assignments.Add(1)
		select {
		case <-latest:
		default:
		}
		latest <- msg
	}
}

// assignmentsLoop turns each assignment set into the statuses a real agent
// would reach, and reports those that changed in one batch (as
// nodeagent's loop.report does), retrying a failed report every second.
func (a *simAgent) assignmentsLoop(ctx context.Context, latest chan *pb.Assignments) error {
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-latest:
			if err := a.apply(msg); err != nil {
				return err
			}
		case <-retry.C:
		case reply := <-a.flips:
			reply <- a.flip(ctx)
		}
		a.report(ctx)
	}
}

// flip turns the readiness of the agent's first live instance over and
// reports it at once; it answers the instance, the time just before the
// report, and the new readiness, or an error line.
func (a *simAgent) flip(ctx context.Context) string {
	for _, id := range slices.Sorted(slices.Values(a.liveIDs)) {
		st := a.want[id]
		if st == nil || st.Phase != api.PhaseRunning {
			continue
		}
		next := proto.Clone(st).(*pb.InstanceStatus)
		next.Ready = !st.Ready
		next.UpdatedAt = timestamppb.Now()
		a.want[id] = next
		at := time.Now()
		a.report(ctx)
		if a.reported[id] != next {
			return "error report failed"
		}
		return fmt.Sprintf("flip id=%s at=%d ready=%t", id, at.UnixNano(), next.Ready)
	}
	return "error no live instance"
}

func (a *simAgent) apply(msg *pb.Assignments) error {
	now := timestamppb.Now()
	seen := make(map[string]bool, len(msg.Instances))
	var live []string
	for _, in := range msg.Instances {
		seen[in.Id] = true
		cur := a.want[in.Id]
		switch in.Desired {
		case api.DesiredRunning:
			if !in.Draining {
				live = append(live, in.Id)
			}
			if cur != nil && cur.Phase == api.PhaseRunning {
				continue
			}
			ip, err := a.hosts.take(in.Id)
			if err != nil {
				return err
			}
			a.want[in.Id] = &pb.InstanceStatus{Id: in.Id, Node: a.name, Phase: api.PhaseRunning, ContainerId: in.Id,
				Ip: ip.String(), Ready: true, StartedAt: now, UpdatedAt: now}
		case api.DesiredStopped:
			if cur != nil && cur.Phase == api.PhaseStopped {
				continue
			}
			a.hosts.release(in.Id)
			a.want[in.Id] = &pb.InstanceStatus{Id: in.Id, Node: a.name, Phase: api.PhaseStopped, UpdatedAt: now}
		}
	}
	// Deleted instances: their containers are gone, their status too.
	for id := range a.want {
		if !seen[id] {
			a.hosts.release(id)
			delete(a.want, id)
			delete(a.reported, id)
		}
	}
	a.live.Store(int64(len(live)))
	a.total.Store(int64(len(msg.Instances)))
	a.countReady(live)
	a.liveIDs = live
	return nil
}

func (a *simAgent) countReady(live []string) {
	n := 0
	for _, id := range live {
		if st := a.reported[id]; st != nil && st.Phase == api.PhaseRunning && st.Ready {
			n++
		}
	}
	a.ready.Store(int64(n))
}

func (a *simAgent) report(ctx context.Context) {
	var batch []*pb.InstanceStatus
	for id, st := range a.want {
		if a.reported[id] != st {
			batch = append(batch, st)
		}
	}
	if len(batch) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := a.client.ReportStatus(rctx, &pb.ReportStatusRequest{Node: a.name, Statuses: batch}); err != nil {
		if ctx.Err() == nil {
			a.fleet.reportErrs.Add(1)
			a.fleet.logOnce("report status (%d statuses): %v", len(batch), err)
		}
		return
	}
	a.fleet.reports.Add(1)
	for _, st := range batch {
		a.reported[st.Id] = st
	}
	a.countReady(a.liveIDs)
}

// hostPool hands out a pod subnet's addresses (.1 is the bridge), as the
// host-local IPAM does: an address is free again once its instance stops.
type hostPool struct {
	next  netip.Addr
	last  netip.Addr
	free  []netip.Addr
	taken map[string]netip.Addr
}

func newHostPool(p netip.Prefix) *hostPool {
	first := p.Masked().Addr()
	last := first
	for range 1<<(32-p.Bits()) - 2 { // the broadcast address stays out
		last = last.Next()
	}
	return &hostPool{next: first.Next().Next(), last: last, taken: map[string]netip.Addr{}}
}

func (h *hostPool) take(id string) (netip.Addr, error) {
	if ip, ok := h.taken[id]; ok {
		return ip, nil
	}
	var ip netip.Addr
	switch {
	case len(h.free) > 0:
		ip, h.free = h.free[len(h.free)-1], h.free[:len(h.free)-1]
	case h.next.Compare(h.last) <= 0:
		ip, h.next = h.next, h.next.Next()
	default:
		return ip, errors.New("pod subnet exhausted")
	}
	h.taken[id] = ip
	return ip, nil
}

func (h *hostPool) release(id string) {
	if ip, ok := h.taken[id]; ok {
		delete(h.taken, id)
		h.free = append(h.free, ip)
	}
}

// versionCodec is the proto codec for WatchDiscovery that decodes only a
// snapshot's version (field 1) and counts the bytes received. Its name is
// "proto", so the server sees an ordinary call.
type versionCodec struct{ fleet *fleet }

func (versionCodec) Name() string { return "proto" }

func (versionCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }

func (c versionCodec) Unmarshal(data []byte, v any) error {
	var version *uint64
	switch m := v.(type) {
	case *pb.DiscoverySnapshot:
		m.Reset()
		version = &m.Version
	case *pb.DiscoveryDelta:
		m.Reset()
		version = &m.Version
	default:
		return proto.Unmarshal(data, v.(proto.Message))
	}
	c.fleet.snapshotBytes.Add(int64(len(data)))
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return protowire.ParseError(m)
			}
			*version, data = v, data[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return protowire.ParseError(m)
		}
		data = data[m:]
	}
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// wireCounter counts the bytes of discovery messages as they came over
// the wire (compressed), beside versionCodec's count of them decoded.
type wireCounter struct{ fleet *fleet }

type discoveryRPC struct{}

func (wireCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if strings.HasSuffix(info.FullMethodName, "/WatchDiscoveryDeltas") || strings.HasSuffix(info.FullMethodName, "/WatchDiscovery") {
		return context.WithValue(ctx, discoveryRPC{}, true)
	}
	return ctx
}

func (w wireCounter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InPayload); ok && ctx.Value(discoveryRPC{}) != nil {
		w.fleet.wireBytes.Add(int64(in.WireLength))
	}
}

func (wireCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (wireCounter) HandleConn(context.Context, stats.ConnStats)                       {}

// startGateways connects n simulated gateways (simgw: delta ADS, every
// resource type, every response ACKed) to the xDS server at xdsAddr, each
// enrolled as a real gateway is (a gateway certificate naming its node id)
// unless the run is plain.
func startGateways(ctx context.Context, addr, xdsAddr string, n int, caHash string, errc chan<- error) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	token := os.Getenv(gatewayTokenEnv)
	for i := range n {
		id := fmt.Sprintf("gw-%03d", i)
		creds := insecure.NewCredentials()
		if os.Getenv(plainEnv) == "" {
			c, err := enroll.Join(ctx, enroll.Options{Server: addr, Role: pki.RoleGateway, Name: id, JoinToken: token, CAHash: caHash,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				return conns, fmt.Errorf("gateway %s: %w", id, err)
			}
			creds = credentials.NewTLS(c.ClientTLS())
		}
		conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return conns, err
		}
		conns = append(conns, conn)
		client := discoverypb.NewAggregatedDiscoveryServiceClient(conn)
		go func() {
			err := simgw.Delta(ctx, client, &core.Node{Id: id, UserAgentName: "cpscale"}, xds.TypeURLs, func(int) {})
			if err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("gateway %s: %w", id, err)
			}
		}()
	}
	return conns, nil
}
