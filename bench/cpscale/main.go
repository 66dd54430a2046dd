// Command cpscale measures how Berth's control plane scales with nodes,
// instances and gateways, without containerd. A real control plane
// (embedded etcd in a temporary directory, cache, controllers, discovery
// publisher, gRPC API) and an xDS server fed by its publisher, as in berth
// server, run in this process; N simulated node agents and G simulated
// gateways run in a child process (this binary with -role agents) so that
// the CPU figures are the control plane's alone. Each agent enrolls with
// its own certificate, registers, follows WatchDiscoveryDeltas (endpoint
// deltas, gzip), WatchNodes and WatchAssignments, heartbeats on its stream
// as nodeagent does, and reports what it is told to run as Running and
// Ready with an address from its pod subnet (mirror_test.go checks that it
// calls what the real agent calls). Each gateway is a delta ADS stream
// that ACKs every response (bench/internal/simgw).
//
// Measured, through the Berth API and etcd:
//   - join: every agent Ready and every gateway connected;
//   - deploy: S services x R replicas applied -> ListServices shows every
//     replica ready (per Apply call, p50/p99 until the agents hold its
//     replicas and until they are stored ready);
//   - steady state: the control plane's CPU with no change, heartbeats
//     only: % of one core, and CPU per heartbeat;
//   - endpoint changes (-flips): an agent reports an instance not ready,
//     then ready; timed from just before its report until every agent
//     holds a discovery version with it, until every gateway ACKed it, and
//     until the control plane published it;
//   - rolling changes (-rollouts), and a scale of every service by one;
//   - one node lost (-node-loss): an agent killed; until its endpoints are
//     out of every other agent's snapshot and its instances run elsewhere;
//   - memory: RSS and the Go heap;
//
// and prints the goals beside the figures. -curve runs it at
// several node counts and plots how each figure grows (curve.go).
//
// The Apply calls are small and paced by default: at most ten new
// replicas per call, the next call once the agents hold exactly what was
// asked for. -batch N makes the calls N services each, -paced=false fires
// them without waiting (the deploy: -batch 20 -paced=false).
//
// The drain delay is 1s rather than the server's 5s. Everything listens on
// 127.0.0.1 (etcd on Unix sockets in the temporary directory). It stops by
// itself (-timeout) and removes its directory.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/xds"
)

// maxReplicasPerPass bounds the new replicas one Apply call asks for by
// default (paced, one call after the other), so figures stay comparable
// with earlier runs. It once kept the controllers within etcd's 128
// operations a transaction while they created replicas twice from views
// older than their own writes; they no longer do (Store.Tracked), and
// commit in as many transactions as the limits need.
const maxReplicasPerPass = 10

type options struct {
	nodes, services, replicas, batch int
	gateways                         int
	rollouts, flips                  int
	nodeLoss                         bool
	paced                            bool
	steady, drainDelay, heartbeat    time.Duration
	stall, timeout                   time.Duration
	cpuProfile, tls, debugAddr       string
}

func main() {
	role := flag.String("role", "bench", "bench, or agents (the child process)")
	addr := flag.String("addr", "", "control plane API address (agents role)")
	xdsAddr := flag.String("xds-addr", "", "xDS server address (agents role)")
	var o options
	flag.IntVar(&o.nodes, "nodes", 20, "simulated node agents")
	flag.IntVar(&o.gateways, "gateways", -1, "simulated gateways on delta ADS (-1: as many as -nodes)")
	flag.IntVar(&o.services, "services", 200, "services")
	flag.IntVar(&o.replicas, "replicas", 10, "replicas per service")
	flag.IntVar(&o.batch, "batch", 0, "services per Apply call; 0: calls of at most ten new replicas")
	flag.BoolVar(&o.paced, "paced", true, "wait for each Apply call's replicas before the next call")
	flag.IntVar(&o.rollouts, "rollouts", 5, "rolling changes to time, one service after the other")
	flag.IntVar(&o.flips, "flips", 20, "endpoint changes (readiness flips) to time until every node's DNS has them")
	flag.BoolVar(&o.nodeLoss, "node-loss", true, "kill one agent at the end and time until its endpoints are out and its instances replaced")
	flag.DurationVar(&o.steady, "steady", 10*time.Second, "steady-state CPU measurement window")
	flag.DurationVar(&o.drainDelay, "drain-delay", time.Second, "the control plane's drain delay (berth server --dns-ttl, whose default is 5s)")
	flag.DurationVar(&o.heartbeat, "heartbeat", controlplane.DefaultConfig().HeartbeatInterval, "the agents' heartbeat interval")
	flag.DurationVar(&o.stall, "stall", 30*time.Second, "give up when nothing progresses for this long")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.StringVar(&o.tls, "tls", "both", "plain (no TLS; needs -tags berthbench, as make bench-cp-scale builds it), mtls (as Berth runs), or both side by side")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write the control plane's CPU profiles to <this>-<phase>.pprof (deploy, steady, rolling, scale)")
	curve := flag.String("curve", "", "a sweep: node counts (like 100,300,1000), each run with as many gateways and ten instances a node, mutual TLS; prints a table and writes -curve-out")
	curveOut := flag.String("curve-out", "cp-curve.png", "the sweep's plot (PNG)")
	flag.StringVar(&o.debugAddr, "debug-addr", "", "serve the bench process's net/http/pprof on this loopback address (e.g. 127.0.0.1:6060), to look inside a stall")
	flag.Parse()
	if o.gateways < 0 {
		o.gateways = o.nodes
	}

	var err error
	if o.debugAddr != "" && *role == "bench" {
		if err := serveDebug(o.debugAddr); err != nil {
			fmt.Fprintln(os.Stderr, "cpscale:", err)
			os.Exit(1)
		}
	}
	switch {
	case *role == "agents":
		err = runAgents(*addr, o.nodes, *xdsAddr, o.gateways)
	case *curve != "":
		err = runCurve(o, *curve, *curveOut)
	default:
		err = runModes(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpscale:", err)
		os.Exit(1)
	}
}

// bench is the measuring side: the control plane, an API client and the
// agents' process.
type bench struct {
	o     options
	berth pb.BerthClient
	xds   *xds.Server
	etcd  *clientv3.Client
	// published is the version of the control plane's latest snapshot.
	published func() uint64
	// nodeTimeout is the control plane's (for the node loss line).
	nodeTimeout time.Duration
	goals       []goal
	agents      *agentsProc
	reg         *prometheus.Registry
	warns       *warnLog
	plain       bool
	// figures are the headline numbers, for the side-by-side table.
	figures []figure
}

// figure is one headline number; lower is better for every one.
type figure struct {
	name  string
	value float64
	unit  string
}

func (b *bench) note(name string, value float64, unit string) {
	b.figures = append(b.figures, figure{name, value, unit})
}

// runModes runs the benchmark without TLS, with mutual TLS, or both one
// after the other, and then prints the figures side by side with the
// cost of mTLS as ratios.
func runModes(o options) error {
	var modes []bool // plain?
	switch o.tls {
	case "plain":
		modes = []bool{true}
	case "mtls":
		modes = []bool{false}
	case "both":
		modes = []bool{true, false}
	default:
		return fmt.Errorf("-tls %q: want plain, mtls or both", o.tls)
	}
	if slices.Contains(modes, true) && !canPlain {
		return errors.New("-tls plain or both: build with -tags berthbench (make bench-cp-scale does), or use -tls mtls")
	}
	var runs [][]figure
	for _, plain := range modes {
		mode := "mutual TLS (as Berth runs)"
		if plain {
			mode = "plain TCP (no TLS; for comparison only)"
		}
		fmt.Printf("\n=== control plane API over %s ===\n", mode)
		figs, err := runOnce(o, plain)
		if err != nil {
			return err
		}
		runs = append(runs, figs)
	}
	if len(runs) == 2 {
		fmt.Printf("\nside by side (one run each, this machine):\n%-44s %14s %14s %10s\n", "", "plain", "mTLS", "mTLS/plain")
		for i, f := range runs[0] {
			if i >= len(runs[1]) || runs[1][i].name != f.name {
				break
			}
			ratio := "-"
			if f.value > 0 {
				ratio = fmt.Sprintf("%.2fx", runs[1][i].value/f.value)
			}
			fmt.Printf("%-44s %11.2f %-2s %11.2f %-2s %10s\n", f.name, f.value, f.unit, runs[1][i].value, f.unit, ratio)
		}
	}
	return nil
}

func runOnce(o options, plain bool) (figures []figure, retErr error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	clusterCIDR, bits, err := podNetwork(o)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cpscale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	b := &bench{o: o, reg: prometheus.NewRegistry(), warns: newWarnLog(), plain: plain}
	defer func() { figures = b.figures }()
	cfg := controlplane.DefaultConfig()
	cfg.DataDir = dir
	cfg.APIAddr = "127.0.0.1:0"
	cfg.ClusterCIDR, cfg.NodeSubnetBits = clusterCIDR, bits
	cfg.DrainDelay = o.drainDelay
	cfg.HeartbeatInterval = o.heartbeat
	cfg.Logger = slog.New(b.warns)
	cfg.Registerer = b.reg

	fmt.Printf("cp scale bench: %d cores (GOMAXPROCS %d); %d simulated agents, %d services x %d replicas; heartbeat %v, drain delay %v, node subnets /%d of %s\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), o.nodes, o.services, o.replicas, o.heartbeat, o.drainDelay, bits, clusterCIDR)
	start := time.Now()
	runCtx, stopServer := context.WithCancel(ctx)
	// The xDS server the gateways follow, fed by the publisher as in
	// berth server.
	xcfg := xds.DefaultConfig()
	xcfg.Addr, xcfg.Logger = "127.0.0.1:0", slog.New(b.warns)
	xsrv, err := xds.New(xcfg)
	if err != nil {
		stopServer()
		return nil, err
	}
	b.xds = xsrv
	setPlaintext(plain)
	srv, err := controlplane.New(runCtx, cfg, func(s *discovery.Snapshot) {
		if err := xsrv.Update(s); err != nil {
			b.warns.Handle(ctx, slog.NewRecord(time.Now(), slog.LevelError, "xds update: "+err.Error(), 0))
		}
	})
	setPlaintext(false)
	if err != nil {
		stopServer()
		return nil, err
	}
	if !plain {
		xsrv.SetAuth(xds.Auth{TLS: srv.ServerTLS(true), Check: srv.Auth().CheckCertificate, Changed: srv.Auth().Changed})
	}
	xdsDone := make(chan error, 1)
	go func() { xdsDone <- xsrv.Run(runCtx) }()
	defer func() { <-xdsDone }()
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(runCtx) }()
	defer func() {
		stopServer()
		if err := <-runDone; err != nil {
			fmt.Fprintln(os.Stderr, "cpscale: control plane:", err)
		}
	}()
	defer b.warns.print()

	admin, err := controlplane.ReadAdminConfig(srv.AdminConfigPath())
	if err != nil {
		return nil, err
	}
	pool, err := pki.PoolFromPEM([]byte(admin.CA))
	if err != nil {
		return nil, err
	}
	big := grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20))
	var conn *grpc.ClientConn
	if plain {
		conn, err = dialPlain(srv.APIAddr(), metadata.Pairs("authorization", "Bearer "+admin.Token), big)
	} else {
		conn, err = pb.Dial(srv.APIAddr(), pki.ClientTLS(nil, pool), append(pb.WithToken(admin.Token), big)...)
	}
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	b.berth = pb.NewBerthClient(conn)
	b.etcd, b.nodeTimeout = srv.Etcd(), cfg.NodeTimeout
	b.published = func() uint64 {
		if l := srv.Publisher().Latest(); l != nil {
			return l.Version
		}
		return 0
	}
	tok, err := b.berth.CreateToken(ctx, &pb.CreateTokenRequest{Role: "node", Uses: int32(o.nodes), Description: "cpscale"})
	if err != nil {
		return nil, fmt.Errorf("create join token: %w", err)
	}
	fmt.Printf("control plane up (embedded etcd) in %v\n", time.Since(start).Round(time.Millisecond))

	gwTok, err := b.berth.CreateToken(ctx, &pb.CreateTokenRequest{Role: "gateway", Uses: int32(max(1, o.gateways)), Description: "cpscale gateways"})
	if err != nil {
		return nil, fmt.Errorf("create gateway token: %w", err)
	}
	b.agents, err = startAgents(ctx, srv.APIAddr(), tok.Token, tok.CaHash, o.nodes, plain, xsrv.Addr(), o.gateways, gwTok.Token)
	if err != nil {
		return nil, err
	}
	defer b.agents.stop()

	if err := b.join(ctx); err != nil {
		return nil, err
	}
	specs := make([]*pb.Service, o.services)
	for i := range specs {
		specs[i] = serviceSpec(i, "berth.local/hello:v1", o.replicas)
	}
	if err := b.deploy(ctx, specs); err != nil {
		return nil, err
	}
	deployRSS := rss()
	if err := b.steadyState(ctx); err != nil {
		return nil, err
	}
	if err := b.propagation(ctx); err != nil {
		return nil, err
	}
	if err := b.rolling(ctx, specs[:min(o.rollouts, len(specs))]); err != nil {
		return nil, err
	}
	if err := b.scale(ctx, specs); err != nil {
		return nil, err
	}
	if err := b.nodeLoss(ctx); err != nil {
		return nil, err
	}
	mem := max(deployRSS, rss())
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("memory: control plane process (with embedded etcd) RSS %.0f MiB after the deploy, %.0f MiB at the end; Go heap live %.0f MiB (of %.0f MiB held), stacks %.0f MiB, GC target %.0f MiB\n",
		deployRSS, rss(), float64(ms.HeapAlloc)/(1<<20), float64(ms.HeapSys-ms.HeapReleased)/(1<<20), float64(ms.StackInuse)/(1<<20), float64(ms.NextGC)/(1<<20))
	b.note("control plane RSS", mem, "MiB")
	b.goal(fmt.Sprintf("control plane RSS, %d instances, %d nodes, %d gateways", b.o.services*b.o.replicas, b.o.nodes, b.o.gateways), fmt.Sprintf("%.0f MiB", mem), "< 300 MiB", mem < 300)
	fmt.Printf("total %v\n", time.Since(start).Round(time.Millisecond))
	b.printGoals()
	return b.figures, nil
}

// podNetwork picks the cluster CIDR and node subnet size: node subnets
// big enough for a node's share of the replicas (with room for surges),
// as many as there are nodes, in the smallest cluster network (of /16 to
// /12, around 10.213.0.0) that holds them. At 1,000 nodes of 10 instances
// that is /26 subnets of 10.213.0.0/16, as with one; at 1,000 nodes of
// 111 it is /24 subnets of 10.212.0.0/14.
func podNetwork(o options) (cluster string, bits int, err error) {
	perNode := (o.services*(o.replicas+1)+o.nodes-1)/o.nodes + o.replicas
	for clusterBits := 16; clusterBits >= 12; clusterBits-- {
		for bits := clusterBits; bits <= 28; bits++ {
			if 1<<(32-bits)-3 >= perNode*3/2+16 && o.nodes <= 1<<(bits-clusterBits) {
				if clusterBits == 16 {
					return "10.213.0.0/16", bits, nil
				}
				base := 213 &^ (1<<(16-clusterBits) - 1) // the network holding 10.213
				return fmt.Sprintf("10.%d.0.0/%d", base, clusterBits), bits, nil
			}
		}
	}
	return "", 0, fmt.Errorf("%d nodes with %d instances each do not fit in a /12", o.nodes, perNode)
}

func serviceSpec(i int, image string, replicas int) *pb.Service {
	name := fmt.Sprintf("svc-%04d", i)
	return &pb.Service{
		Metadata: &pb.ObjectMeta{Name: name, Namespace: "bench"},
		Spec: &pb.ServiceSpec{Image: image, Replicas: proto.Int32(int32(replicas)),
			Ports:     []*pb.Port{{Name: "http", Port: 8080, Protocol: "http"}},
			Resources: &pb.Resources{Cpu: "10m", Memory: "32Mi"},
			Route:     &pb.Route{Hosts: []string{name + ".bench.test"}}},
	}
}

// join waits until every agent has registered and every node is Ready.
func (b *bench) join(ctx context.Context) error {
	start := time.Now()
	_, err := b.waitAgents(ctx, "agents registered", func(s agentStats) (bool, int64) {
		return s.Registered == int64(b.o.nodes), s.Registered
	})
	if err != nil {
		return err
	}
	for {
		nodes, err := b.berth.ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes.Nodes {
			if n.Ready && n.State == api.NodeReady {
				ready++
			}
		}
		if ready == b.o.nodes {
			break
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("%d of %d nodes ready: %w", ready, b.o.nodes, err)
		}
	}
	for b.o.gateways > 0 && len(b.xds.Gateways()) < b.o.gateways {
		if time.Since(start) > b.o.stall+time.Duration(b.o.nodes+b.o.gateways)*10*time.Millisecond {
			return fmt.Errorf("%d of %d gateways connected", len(b.xds.Gateways()), b.o.gateways)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	fmt.Printf("join: %d agents registered and Ready, %d gateways connected (delta ADS), in %v\n", b.o.nodes, len(b.xds.Gateways()), time.Since(start).Round(time.Millisecond))
	b.note("join: all agents Ready", time.Since(start).Seconds(), "s")
	return nil
}

// phase measures one phase: wall time, the control plane's CPU, its
// controller passes and snapshots, and the agents' CPU; it runs the CPU
// profile when asked.
type phase struct {
	b          *bench
	name       string
	wall0      time.Time
	cpu0       time.Duration
	agents0    agentStats
	reconciles float64
	snapshots  float64
	placements float64
	profile    *os.File
}

func (b *bench) startPhase(name string) (*phase, error) {
	runtime.GC()
	p := &phase{b: b, name: name}
	if b.o.cpuProfile != "" {
		f, err := os.Create(fmt.Sprintf("%s-%s.pprof", b.o.cpuProfile, name))
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		p.profile = f
	}
	s, err := b.agents.stats()
	if err != nil {
		p.stopProfile()
		return nil, err
	}
	p.agents0, p.reconciles, p.snapshots = s, b.counter("berth_controller_reconciles_total"), b.counter("berth_discovery_snapshots_total")
	p.placements = b.counter("berth_scheduler_placements_total")
	p.wall0, p.cpu0 = time.Now(), cpuTime()
	return p, nil
}

func (p *phase) stopProfile() {
	if p.profile != nil {
		pprof.StopCPUProfile()
		p.profile.Close()
		p.profile = nil
	}
}

type phaseResult struct {
	wall, cpu, agentsCPU              time.Duration
	reconciles, published, placements int64
	agents                            agentStats // deltas
}

func (p *phase) end() (phaseResult, error) {
	r := phaseResult{wall: time.Since(p.wall0), cpu: cpuTime() - p.cpu0}
	p.stopProfile()
	s, err := p.b.agents.stats()
	if err != nil {
		return r, err
	}
	r.reconciles = int64(p.b.counter("berth_controller_reconciles_total") - p.reconciles)
	r.published = int64(p.b.counter("berth_discovery_snapshots_total") - p.snapshots)
	r.placements = int64(p.b.counter("berth_scheduler_placements_total") - p.placements)
	r.agents = s
	for i, f := range r.agents.fields() {
		*f -= *p.agents0.fields()[i]
	}
	r.agentsCPU = r.agents.CPU
	return r, nil
}

func (r phaseResult) String() string {
	return fmt.Sprintf("control plane CPU %v (%.0f%% of one core); %d controller passes, %d snapshots published (%d sent to agents, %.1f MB, %.1f MB on the wire); %d heartbeats, %d status reports; agents' process CPU %v",
		r.cpu.Round(time.Millisecond), 100*r.cpu.Seconds()/r.wall.Seconds(), r.reconciles, r.published,
		r.agents.Snapshots, float64(r.agents.SnapshotBytes)/1e6, float64(r.agents.WireBytes)/1e6, r.agents.Heartbeats, r.agents.Reports, r.agentsCPU.Round(time.Millisecond))
}

// placed says how many instances the scheduler placed against the number
// of replicas asked for: the difference is duplicates.
func (r phaseResult) placed(asked int) string {
	return fmt.Sprintf("%d instances placed for %d replicas asked (%d duplicates)", r.placements, asked, r.placements-int64(asked))
}

// deploy applies every service and waits until ListServices shows every
// replica ready.
func (b *bench) deploy(ctx context.Context, specs []*pb.Service) error {
	perCall, paced := b.o.batch, b.o.paced
	if perCall <= 0 {
		perCall = max(1, maxReplicasPerPass/max(1, b.o.replicas))
	}
	p, err := b.startPhase("deploy")
	if err != nil {
		return err
	}
	calls, err := b.applyAll(ctx, specs, perCall, paced, 0, int64(b.o.replicas))
	if err != nil {
		p.stopProfile()
		b.diagnose(ctx)
		return fmt.Errorf("deploy: %w", err)
	}
	if err := b.waitListed(ctx, b.o.replicas); err != nil {
		p.stopProfile()
		return fmt.Errorf("deploy: %w", err)
	}
	r, err := p.end()
	if err != nil {
		return err
	}
	total := b.o.services * b.o.replicas
	fmt.Printf("deploy: %d services x %d replicas = %d instances in %d Apply calls of <= %d services (paced: %v): all ready in ListServices after %v (%.0f instances/s)\n",
		b.o.services, b.o.replicas, total, len(calls), perCall, paced, r.wall.Round(time.Millisecond), float64(total)/r.wall.Seconds())
	printCalls(calls)
	fmt.Printf("  %s\n  %s\n", r.placed(total), r)
	b.note("deploy: all ready", r.wall.Seconds(), "s")
	if !paced {
		b.goal(fmt.Sprintf("deploy %d instances to %d nodes, unpaced: all ready", total, b.o.nodes),
			fmt.Sprintf("%v (%.0f/s)", r.wall.Round(time.Millisecond), float64(total)/r.wall.Seconds()), "<= 10s", r.wall <= 10*time.Second)
	}
	b.note("deploy: control plane CPU", r.cpu.Seconds(), "s")
	return nil
}

// call is one Apply call's timing: until it returned, until the agents
// held its replicas, until they were stored ready.
type call struct{ apply, held, ready time.Duration }

func printCalls(calls []call) {
	if len(calls) == 0 {
		return
	}
	var apply, held, ready []time.Duration
	for _, c := range calls {
		apply, held, ready = append(apply, c.apply), append(held, c.held), append(ready, c.ready)
	}
	fmt.Printf("  per Apply call: returned p50 %v p99 %v | replicas held by agents p50 %v p99 %v | stored ready p50 %v p99 %v\n",
		q(apply, 0.5), q(apply, 0.99), q(held, 0.5), q(held, 0.99), q(ready, 0.5), q(ready, 0.99))
}

func q(d []time.Duration, p float64) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[min(len(d)-1, int(p*float64(len(d))))].Round(time.Millisecond)
}

// applyAll applies specs perCall services at a time. Each call adds delta
// live replicas per service to base; when paced, the next call waits until
// the agents hold exactly the replicas asked for so far, all stored ready
// (duplicates deleted). It returns once that holds for every call.
func (b *bench) applyAll(ctx context.Context, specs []*pb.Service, perCall int, paced bool, base, delta int64) ([]call, error) {
	type pending struct {
		at           time.Time
		target       int64
		held, stored bool
	}
	var calls []call
	var open []*pending
	// observe records which calls are done by the agents' counters.
	observe := func(s agentStats) {
		for i, c := range open {
			if !c.held && s.Live >= c.target {
				c.held = true
				calls[i].held = time.Since(c.at)
			}
			if !c.stored && s.Ready >= c.target {
				c.stored = true
				calls[i].ready = time.Since(c.at)
			}
		}
	}
	for i := 0; i < len(specs); i += perCall {
		j := min(len(specs), i+perCall)
		c := &pending{at: time.Now(), target: base + int64(j)*delta}
		// A deadline, so a control plane that stops answering is an error
		// that says so, not a silent stall.
		actx, cancel := context.WithTimeout(ctx, b.o.stall)
		res, err := b.berth.Apply(actx, &pb.ApplyRequest{Services: specs[i:j]})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("apply services %d-%d: %w", i, j-1, err)
		}
		for _, r := range res.Results {
			if r.Action == "unchanged" {
				return nil, fmt.Errorf("apply %s: unchanged", r.Name)
			}
		}
		calls = append(calls, call{apply: time.Since(c.at)})
		open = append(open, c)
		if !paced {
			continue
		}
		_, err = b.waitAgents(ctx, fmt.Sprintf("exactly %d replicas held, all ready", c.target), func(s agentStats) (bool, int64) {
			observe(s)
			return converged(s, c.target), progress(s)
		})
		if err != nil {
			return nil, err
		}
	}
	want := base + int64(len(specs))*delta
	_, err := b.waitAgents(ctx, fmt.Sprintf("exactly %d replicas held, all ready", want), func(s agentStats) (bool, int64) {
		observe(s)
		return converged(s, want), progress(s)
	})
	return calls, err
}

// converged says the agents hold exactly want instances, all live and
// stored ready: no extra one left, draining or stopped.
func converged(s agentStats, want int64) bool {
	return s.Live == want && s.Ready == want && s.Total == want
}

func progress(s agentStats) int64 { return s.Live<<42 | s.Ready<<21 | s.Total }

// waitListed polls ListServices until every service shows want replicas,
// all ready. A call costs the control plane a scan of every instance per
// service, so it polls at most half the time.
func (b *bench) waitListed(ctx context.Context, want int) error {
	start := time.Now()
	var last string
	for {
		t0 := time.Now()
		list, err := b.berth.ListServices(ctx, &pb.ListServicesRequest{})
		if err != nil {
			return fmt.Errorf("list services: %w", err)
		}
		took := time.Since(t0)
		done := len(list.Services) == b.o.services
		last = fmt.Sprintf("%d services", len(list.Services))
		for _, s := range list.Services {
			if s.Desired != int32(want) || s.Ready != int32(want) || s.Instances != int32(want) {
				done = false
				last = fmt.Sprintf("%s/%s: desired %d ready %d instances %d", s.Service.Metadata.Namespace, s.Service.Metadata.Name, s.Desired, s.Ready, s.Instances)
				break
			}
		}
		if done {
			return nil
		}
		if time.Since(start) > b.o.stall {
			return fmt.Errorf("ListServices not all ready after %v; last: %s", b.o.stall, last)
		}
		if err := sleep(ctx, max(20*time.Millisecond, 2*took)); err != nil {
			return fmt.Errorf("waiting for ListServices (last: %s): %w", last, err)
		}
	}
}

// waitAgents polls the agents' counters every 10 ms until done. It fails
// when the progress value stops changing for -stall.
func (b *bench) waitAgents(ctx context.Context, what string, done func(agentStats) (bool, int64)) (agentStats, error) {
	var lastProgress int64 = math.MinInt64
	moved, said := time.Now(), time.Now()
	for {
		s, err := b.agents.stats()
		if err != nil {
			return s, err
		}
		ok, progress := done(s)
		if ok {
			return s, nil
		}
		if time.Since(said) > 15*time.Second {
			said = time.Now()
			fmt.Printf("  ... waiting for %s: %d so far (instances live %d, ready %d)\n", what, progress, s.Live, s.Ready)
		}
		if progress != lastProgress {
			lastProgress, moved = progress, time.Now()
		} else if time.Since(moved) > b.o.stall {
			return s, fmt.Errorf("waiting for %s: no progress for %v (agents: %s)", what, b.o.stall, s)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return s, fmt.Errorf("waiting for %s (agents: %s): %w", what, s, err)
		}
	}
}

// steadyState measures the control plane's CPU while nothing changes.
func (b *bench) steadyState(ctx context.Context) error {
	// Let the last reports' snapshots and heartbeats settle.
	if err := sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	p, err := b.startPhase("steady")
	if err != nil {
		return err
	}
	if err := sleep(ctx, b.o.steady); err != nil {
		p.stopProfile()
		return err
	}
	r, err := p.end()
	if err != nil {
		return err
	}
	perBeat := time.Duration(0)
	if r.agents.Heartbeats > 0 {
		perBeat = r.cpu / time.Duration(r.agents.Heartbeats)
	}
	fmt.Printf("steady state over %v (heartbeats only): control plane %.1f%% of one core; %d heartbeats (%.0f/s, %d failed) -> %v CPU per heartbeat\n",
		r.wall.Round(time.Millisecond), 100*r.cpu.Seconds()/r.wall.Seconds(), r.agents.Heartbeats,
		float64(r.agents.Heartbeats)/r.wall.Seconds(), r.agents.HeartbeatErrs, perBeat.Round(time.Microsecond))
	b.note("steady: control plane, % of one core", 100*r.cpu.Seconds()/r.wall.Seconds(), "%")
	b.note("steady: CPU per heartbeat", float64(perBeat.Microseconds()), "us")
	share := 100 * r.cpu.Seconds() / r.wall.Seconds()
	b.goal(fmt.Sprintf("steady state, %d idle nodes (%d instances)", b.o.nodes, b.o.services*b.o.replicas), fmt.Sprintf("%.1f%% of a core", share), "< 20%", share < 20)
	fmt.Printf("  %s\n", r)

	// What one look at the cluster costs at this size.
	for _, c := range []struct {
		name string
		f    func() error
	}{
		{"ListServices", func() error { _, err := b.berth.ListServices(ctx, &pb.ListServicesRequest{}); return err }},
		{"ListInstances (all)", func() error { _, err := b.berth.ListInstances(ctx, &pb.ListInstancesRequest{}); return err }},
		{"ListNodes", func() error { _, err := b.berth.ListNodes(ctx, &pb.ListNodesRequest{}); return err }},
	} {
		var took []time.Duration
		for range 5 {
			t0 := time.Now()
			if err := c.f(); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			took = append(took, time.Since(t0))
		}
		fmt.Printf("  one %s call: p50 %v\n", c.name, q(took, 0.5))
	}
	return nil
}

// rolling gives each service in specs a new image, one after the other,
// and times until only the new revision's replicas are ready, and until
// the old ones are gone. It updates specs.
func (b *bench) rolling(ctx context.Context, specs []*pb.Service) error {
	if len(specs) == 0 {
		return nil
	}
	p, err := b.startPhase("rolling")
	if err != nil {
		return err
	}
	var newReady, onlyNew, oldGone []time.Duration
	for i, spec := range specs {
		next := proto.Clone(spec).(*pb.Service)
		next.Spec.Image = "berth.local/hello:v2"
		a, o, g, err := b.rollOne(ctx, next)
		if err != nil {
			p.stopProfile()
			return fmt.Errorf("rolling change of %s: %w", next.Metadata.Name, err)
		}
		newReady, onlyNew, oldGone = append(newReady, a), append(onlyNew, o), append(oldGone, g)
		specs[i] = next
	}
	r, err := p.end()
	if err != nil {
		return err
	}
	fmt.Printf("rolling change (new image, %d replicas, surge) of %d services, one after the other: all new ready p50 %v p99 %v; only the new revision ready p50 %v p99 %v; old replicas deleted p50 %v p99 %v (drain delay %v)\n",
		b.o.replicas, len(specs), q(newReady, 0.5), q(newReady, 0.99), q(onlyNew, 0.5), q(onlyNew, 0.99), q(oldGone, 0.5), q(oldGone, 0.99), b.o.drainDelay)
	fmt.Printf("  %s\n  %s\n", r.placed(len(specs)*b.o.replicas), r)
	b.note("rolling: all new ready, p50", float64(q(newReady, 0.5).Milliseconds()), "ms")
	return nil
}

// rollOne applies next and polls its instances until the new revision's
// replicas are all ready and the old ones deleted.
func (b *bench) rollOne(ctx context.Context, next *pb.Service) (newReady, onlyNew, oldGone time.Duration, err error) {
	ns, name := next.Metadata.Namespace, next.Metadata.Name
	start := time.Now()
	res, err := b.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{next}})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("apply: %w", err)
	}
	rev := res.Results[0].Revision
	last, moved := "", time.Now()
	for {
		list, err := b.berth.ListInstances(ctx, &pb.ListInstancesRequest{Namespace: ns, Service: name})
		if err != nil {
			return 0, 0, 0, err
		}
		var ready, oldServing, old int
		for _, iv := range list.Instances {
			in, st := iv.Instance, iv.Status
			serving := st.GetReady() && st.GetNode() == in.Node && in.Desired == api.DesiredRunning && !in.Draining
			switch {
			case in.Revision == rev && serving:
				ready++
			case in.Revision != rev:
				old++
				if serving {
					oldServing++
				}
			}
		}
		el := time.Since(start)
		if ready == b.o.replicas && newReady == 0 {
			newReady = el
		}
		if ready == b.o.replicas && oldServing == 0 && onlyNew == 0 {
			onlyNew = el
		}
		if ready == b.o.replicas && old == 0 {
			return newReady, onlyNew, el, nil
		}
		state := fmt.Sprintf("revision %d: %d ready; older revisions: %d serving, %d in all", rev, ready, oldServing, old)
		if state != last {
			last, moved = state, time.Now()
		} else if time.Since(moved) > b.o.stall+b.o.drainDelay {
			return 0, 0, 0, fmt.Errorf("no progress for %v: %s", b.o.stall+b.o.drainDelay, state)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, 0, 0, fmt.Errorf("%s: %w", state, err)
		}
	}
}

// scale takes every service from R to R+1 replicas.
func (b *bench) scale(ctx context.Context, specs []*pb.Service) error {
	want := b.o.replicas + 1
	scaled := make([]*pb.Service, len(specs))
	for i, spec := range specs {
		scaled[i] = proto.Clone(spec).(*pb.Service)
		scaled[i].Spec.Replicas = proto.Int32(int32(want))
	}
	perCall, paced := b.o.batch, b.o.paced
	if perCall <= 0 {
		perCall = maxReplicasPerPass // one new replica per service
	}
	p, err := b.startPhase("scale")
	if err != nil {
		return err
	}
	calls, err := b.applyAll(ctx, scaled, perCall, paced, int64(b.o.services*b.o.replicas), 1)
	if err != nil {
		p.stopProfile()
		b.diagnose(ctx)
		return fmt.Errorf("scale: %w", err)
	}
	if err := b.waitListed(ctx, want); err != nil {
		p.stopProfile()
		return fmt.Errorf("scale: %w", err)
	}
	r, err := p.end()
	if err != nil {
		return err
	}
	fmt.Printf("scale: %d services %d -> %d replicas (%d new instances) in %d Apply calls of <= %d services (paced: %v): all ready in ListServices after %v\n",
		b.o.services, b.o.replicas, want, b.o.services, len(calls), perCall, paced, r.wall.Round(time.Millisecond))
	printCalls(calls)
	fmt.Printf("  %s\n  %s\n", r.placed(b.o.services), r)
	b.note("scale: all ready", r.wall.Seconds(), "s")
	b.note("scale: control plane CPU", r.cpu.Seconds(), "s")
	return nil
}

// diagnose prints, when a phase is stuck, the services with the most
// instances and what state those are in.
func (b *bench) diagnose(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	list, err := b.berth.ListInstances(ctx, &pb.ListInstancesRequest{})
	if err != nil {
		fmt.Println("diagnose: list instances:", err)
		return
	}
	type counts struct{ all, live, draining, stopped, unplaced, ready int }
	by := map[string]*counts{}
	var total counts
	for _, iv := range list.Instances {
		in := iv.Instance
		c := by[in.Service]
		if c == nil {
			c = &counts{}
			by[in.Service] = c
		}
		for _, c := range []*counts{c, &total} {
			c.all++
			switch {
			case in.Desired == api.DesiredStopped:
				c.stopped++
			case in.Draining:
				c.draining++
			default:
				c.live++
			}
			if in.Node == "" {
				c.unplaced++
			}
			if iv.Status.GetReady() {
				c.ready++
			}
		}
	}
	names := slices.Collect(maps.Keys(by))
	slices.SortFunc(names, func(a, b string) int { return by[b].all - by[a].all })
	fmt.Printf("diagnose: %d instances: %+v\n", len(list.Instances), total)
	for _, n := range names[:min(5, len(names))] {
		fmt.Printf("  %s (want %d): %+v\n", n, b.o.replicas, *by[n])
	}
}

// counter sums a counter of the control plane's metrics.
func (b *bench) counter(name string) float64 {
	mfs, err := b.reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.Metric {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// agentsProc is the agents' child process: a "stats" line on its stdin
// answers one line on its stdout.
type agentsProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex
}

func startAgents(ctx context.Context, addr, token, caHash string, n int, plain bool, xdsAddr string, gateways int, gwToken string) (*agentsProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, "-role", "agents", "-addr", addr, "-nodes", fmt.Sprint(n), "-xds-addr", xdsAddr, "-gateways", fmt.Sprint(gateways))
	cmd.Env = append(os.Environ(), tokenEnv+"="+token, caHashEnv+"="+caHash, gatewayTokenEnv+"="+gwToken)
	if plain {
		cmd.Env = append(cmd.Env, plainEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &agentsProc{cmd: cmd, in: in, out: bufio.NewReader(out)}, nil
}

func (p *agentsProc) stats() (agentStats, error) {
	line, err := p.ask("stats")
	if err != nil {
		return agentStats{}, err
	}
	return parseStats(line)
}

// ask sends the agents' process one command and returns its answer's
// fields (key=value) after the first word; an "error" answer is an error.
func (p *agentsProc) ask(cmd string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		return "", fmt.Errorf("agents' process: %w", err)
	}
	line, err := p.out.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("agents' process: %w", err)
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "error") {
		return "", fmt.Errorf("agents' process, %q: %s", cmd, line)
	}
	return line, nil
}

// fields parses "word k=v k=v".
func fields(line string) map[string]string {
	kv := map[string]string{}
	for f := range strings.FieldsSeq(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

func (p *agentsProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.in.Close()
	p.cmd.Wait()
}

// warnLog is the control plane's logger: it keeps warnings and errors,
// counted by message, and prints them at the end.
type warnLog struct {
	mu    *sync.Mutex
	count map[string]int
	order *[]string
	attrs []slog.Attr
}

func newWarnLog() *warnLog {
	return &warnLog{mu: &sync.Mutex{}, count: map[string]int{}, order: &[]string{}}
}

func (h *warnLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warnLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	key := b.String()
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.count[key]; !ok {
		if len(*h.order) >= 30 {
			key = "(more distinct warnings)"
		}
		if _, ok := h.count[key]; !ok {
			*h.order = append(*h.order, key)
		}
	}
	h.count[key]++
	return nil
}

func (h *warnLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clone(h.attrs), attrs...)
	return &c
}

func (h *warnLog) WithGroup(string) slog.Handler { return h }

func (h *warnLog) print() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(*h.order) == 0 {
		return
	}
	fmt.Println("control plane warnings:")
	for _, k := range *h.order {
		fmt.Printf("  %5dx %s\n", h.count[k], k)
	}
}
