// Package nodeagent is the node agent: it joins the control plane, follows
// the node's assignments and makes containerd match them (start, restart
// with backoff, probe, stop), reports what it observes, adopts the
// containers it finds after a restart, and serves node-local DNS on the
// bridge address from the discovery snapshot the control plane streams.
// Decisions about what should run are the control plane's; the agent only
// carries them out and reports. containerd and CNI are reached only through
// nodeagent/runtime.
package nodeagent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	berthdns "github.com/berth-dev/berth/dns"
	"github.com/berth-dev/berth/nodeagent/probe"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"github.com/berth-dev/berth/nodeagent/volume"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config configures an agent.
type Config struct {
	// Name is the node name; default the host name.
	Name string
	// ServerAddr is the control plane's API address, or the addresses of
	// its replicas separated by commas.
	ServerAddr string
	// ContainerHostAccess lets containers reach every port of the node
	// itself and the control plane's ports. Off (the default), only the
	// node-local DNS and ContainerHostPorts are reachable on the node, and
	// ControlPlanePorts (plus the API port) on the control plane's
	// addresses are refused, by iptables rules the agent owns.
	ContainerHostAccess bool
	ContainerHostPorts  []uint16
	ControlPlanePorts   []uint16
	// Credentials are the node's certificate (in-process parts); nil:
	// from CertDir, or joined with JoinToken and CAHash.
	Credentials *enroll.Credentials
	// CertDir keeps the node's key, certificate and the cluster CA
	// (default StateDir/pki).
	CertDir string
	// JoinToken and CAHash join the node when CertDir holds no
	// certificate (from `berth token create --role node`).
	JoinToken, CAHash string
	// Address is the node's IP as other nodes reach it.
	Address string
	// ShellAddr is where the agent serves NodeShell (logs, exec,
	// port-forward) to control plane replicas, which must reach it;
	// default: Address with a port the kernel picks.
	ShellAddr string
	// Labels are reported with the node.
	Labels map[string]string
	// Capacity overrides what the host offers (zero fields: detected).
	Capacity api.Capacity
	// Runtime configures containerd and CNI; Subnet is taken from the
	// control plane at registration.
	Runtime runtime.Config
	// DNSPort is the node-local DNS port on the bridge address (53).
	DNSPort int
	// DNSUpstreams resolve names outside berth.internal for containers.
	DNSUpstreams []string
	// DNSNoForwardTo are other Berth DNS servers (the host's, in berth
	// dev) that the node-local server must never forward to.
	DNSNoForwardTo []netip.AddrPort
	// DNSUpstreamsFromSystem: DNSUpstreams came from resolv.conf, so one
	// that would loop is dropped with a warning rather than an error.
	DNSUpstreamsFromSystem bool
	// DNSTTL is the TTL of service records.
	DNSTTL time.Duration
	// StopOnExit stops every container when the agent stops (berth dev);
	// otherwise containers keep running and are adopted on restart.
	StopOnExit bool
	// StopGrace is the time between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// MaxBackoff caps the delay between restarts of a failing instance.
	MaxBackoff time.Duration
	// DefaultLimits are the limits of a container whose service sets none
	// (per resource): no container runs without a memory, CPU and process
	// limit, so a fork bomb or a leak stays in its cgroup.
	DefaultLimits DefaultLimits
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// DefaultConfig returns the defaults of `berth agent`.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:          strings.ToLower(host),
		ServerAddr:    "127.0.0.1:7400",
		Address:       "127.0.0.1",
		Runtime:       runtime.DefaultConfig(),
		DNSPort:       53,
		DNSTTL:        5 * time.Second,
		StopGrace:     10 * time.Second,
		MaxBackoff:    30 * time.Second,
		DefaultLimits: DefaultLimits{MilliCPU: 1000, MemoryBytes: 512 << 20, Pids: 1024},
		// etcd's client and peer ports; Berth's API, xDS and metrics.
		ControlPlanePorts: []uint16{2379, 2380, 7400, 7401, 7402, 7403, 7404},
	}
}

// DefaultLimits are the node's limits for a container whose service's
// resources leave one out.
type DefaultLimits struct {
	MilliCPU, MemoryBytes, Pids int64
}

// Agent runs one node.
type Agent struct {
	cfg    Config
	logger *slog.Logger
	conn   *grpc.ClientConn
	client pb.NodeAgentClient
	berth  pb.BerthClient
	prober prober

	rt  Runtime
	dns *berthdns.Server
	// dnsVersion is the snapshot version the DNS answers from; beatNow
	// asks for a heartbeat carrying it without waiting for the ticker.
	dnsVersion atomic.Uint64
	// connected is whether the last heartbeat reached the control plane.
	connected atomic.Bool
	beatNow   chan struct{}

	readyOnce sync.Once
	ready     chan struct{}

	// imageLocks serialises getting one image, so replicas starting
	// together import it once.
	imageMu    sync.Mutex
	imageLocks map[string]*sync.Mutex

	starts    prometheus.Counter
	running   prometheus.Gauge
	instances *instanceCollector // per-instance series; nil without a Registerer
}

// prober runs health probes (probe.Prober; a fake in the loop's tests,
// which send no packets).
type prober interface {
	Check(ctx context.Context, ip string, h *api.Health) error
}

// New checks the configuration and prepares the connection to the
// control plane (connecting happens in Run).
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		return nil, errors.New("agent: node name is empty")
	}
	def := DefaultConfig() // the one place defaults live
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = def.StopGrace
	}
	if cfg.DefaultLimits == (DefaultLimits{}) {
		cfg.DefaultLimits = def.DefaultLimits
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = def.MaxBackoff
	}
	if cfg.DNSPort == 0 {
		cfg.DNSPort = def.DNSPort
	}
	a := &Agent{
		cfg: cfg, logger: cfg.Logger.With("component", "agent", "node", cfg.Name),
		prober: probe.New(), ready: make(chan struct{}), imageLocks: map[string]*sync.Mutex{}, beatNow: make(chan struct{}, 1),
		starts:  prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_agent_container_starts_total", Help: "Containers started."}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_agent_containers_running", Help: "Containers running on this node."}),
	}
	if cfg.Registerer != nil {
		a.instances = newInstanceCollector(cfg.Name)
		cfg.Registerer.MustRegister(a.starts, a.running, a.instances)
	}
	return a, nil
}

// Ready is closed once the agent has registered, set up its runtime and
// DNS, and received its first assignments.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// hostGuard is what containers may not reach: the node itself but for
// its DNS and ContainerHostPorts, and the control plane's addresses (each
// replica's API port and ControlPlanePorts).
func (a *Agent) hostGuard(ctx context.Context) *runtime.HostGuard {
	g := &runtime.HostGuard{HostPorts: append([]uint16{uint16(a.cfg.DNSPort)}, a.cfg.ContainerHostPorts...)}
	ports := map[uint16]bool{}
	for _, p := range a.cfg.ControlPlanePorts {
		ports[p] = true
	}
	seen := map[netip.Addr]bool{}
	for _, addr := range strings.Split(a.cfg.ServerAddr, ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(addr))
		if err != nil {
			continue
		}
		if p, err := strconv.ParseUint(port, 10, 16); err == nil {
			ports[uint16(p)] = true
		}
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
		if err != nil {
			a.logger.Warn("cannot resolve the control plane's address for the container guard", "addr", addr, "err", err)
			continue
		}
		for _, ip := range ips {
			if ip = ip.Unmap(); !seen[ip] && !ip.IsLoopback() {
				seen[ip] = true
				g.ControlPlane = append(g.ControlPlane, ip)
			}
		}
	}
	g.ControlPlanePorts = slices.Sorted(maps.Keys(ports))
	return g
}

// DNSAddr is the node-local DNS address (after Ready).
func (a *Agent) DNSAddr() string {
	if a.dns == nil {
		return ""
	}
	return a.dns.Addr()
}

// detectCapacity reads CPUs and memory from the host.
func detectCapacity() api.Capacity {
	c := api.Capacity{MilliCPU: int64(goruntime.NumCPU()) * 1000}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 && fields[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(fields[1], 10, 64)
				c.MemoryBytes = kb << 10
			}
		}
	}
	return c
}

func (a *Agent) register(ctx context.Context, shellAddr string) (*pb.RegisterResponse, error) {
	capacity := detectCapacity()
	if a.cfg.Capacity.MilliCPU > 0 {
		capacity.MilliCPU = a.cfg.Capacity.MilliCPU
	}
	if a.cfg.Capacity.MemoryBytes > 0 {
		capacity.MemoryBytes = a.cfg.Capacity.MemoryBytes
	}
	req := &pb.RegisterRequest{Name: a.cfg.Name, Address: a.cfg.Address, Labels: a.cfg.Labels, ShellAddr: shellAddr,
		Capacity: &pb.Capacity{MilliCpu: capacity.MilliCPU, MemoryBytes: capacity.MemoryBytes}}
	retry := newRetryBackoff()
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := a.client.Register(rctx, req)
		cancel()
		if err == nil {
			return resp, nil
		}
		if c := status.Code(err); c == codes.InvalidArgument || c == codes.Unauthenticated {
			return nil, fmt.Errorf("agent: register with %s: %s", a.cfg.ServerAddr, status.Convert(err).Message())
		}
		a.logger.Warn("cannot register with the control plane, retrying", "server", a.cfg.ServerAddr, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(retry.Next()):
		}
	}
}

// dial sets up the agent's connection to the control plane (pb.Dial: TLS,
// failover between replicas, a backoff capped at 2 s) and its clients.
func (a *Agent) dial(creds *enroll.Credentials) (*grpc.ClientConn, error) {
	conn, err := pb.Dial(a.cfg.ServerAddr, creds.ClientTLS())
	if err != nil {
		return nil, fmt.Errorf("agent: control plane address %q: %w", a.cfg.ServerAddr, err)
	}
	a.conn, a.client, a.berth = conn, waitForReady{pb.NewNodeAgentClient(conn)}, pb.NewBerthClient(conn)
	return conn, nil
}

// Run joins the cluster and runs the node until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	creds := a.cfg.Credentials
	if creds == nil {
		dir := a.cfg.CertDir
		if dir == "" {
			dir = filepath.Join(a.cfg.Runtime.StateDir, "pki")
		}
		var err error
		creds, err = enroll.Load(ctx, enroll.Options{Server: a.cfg.ServerAddr, Role: pki.RoleNode, Name: a.cfg.Name, Dir: dir,
			JoinToken: a.cfg.JoinToken, CAHash: a.cfg.CAHash, Logger: a.logger})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: %w", err)
		}
	}
	conn, err := a.dial(creds)
	if err != nil {
		return err
	}
	defer conn.Close()
	renewCtx, stopRenew := context.WithCancel(ctx)
	defer stopRenew()
	go func() { _ = creds.KeepRenewed(renewCtx, conn, a.logger) }()
	shellLn, shellAddr, err := listenShell(a.cfg.ShellAddr, a.cfg.Address)
	if err != nil {
		return err
	}
	shell := &shellServer{}
	shellGRPC := newShellGRPC(creds, shell)
	go func() { _ = shellGRPC.Serve(shellLn) }()
	defer shellGRPC.Stop()
	reg, err := a.register(ctx, shellAddr)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	rcfg := a.cfg.Runtime
	rcfg.Subnet, rcfg.ClusterCIDR = reg.PodCidr, reg.ClusterCidr
	rcfg.Logger = a.cfg.Logger
	if !a.cfg.ContainerHostAccess {
		rcfg.HostGuard = a.hostGuard(ctx)
	}
	a.rt, err = runtime.New(ctx, rcfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer a.rt.Close()
	if srt, ok := a.rt.(shellRuntime); ok {
		shell.setRuntime(srt)
	}
	subnet, err := netip.ParsePrefix(reg.PodCidr)
	if err != nil {
		return fmt.Errorf("agent: pod subnet %q from the control plane: %w", reg.PodCidr, err)
	}
	dcfg := berthdns.DefaultConfig()
	dcfg.Addr = net.JoinHostPort(a.rt.GatewayIP().String(), strconv.Itoa(a.cfg.DNSPort))
	dcfg.FreeBind = true
	// Recursion for this node's pods, and for every other node's: this
	// DNS is their fallback while their own node's is down. Never for
	// addresses outside the pod network (no open resolver).
	dcfg.AllowRecursion = []netip.Prefix{subnet}
	if cluster, err := netip.ParsePrefix(reg.ClusterCidr); err == nil {
		dcfg.AllowRecursion = append(dcfg.AllowRecursion, cluster.Masked())
	}
	dcfg.Upstreams = a.cfg.DNSUpstreams
	dcfg.NoForwardToAddrs = a.cfg.DNSNoForwardTo
	dcfg.UpstreamsFromSystem = a.cfg.DNSUpstreamsFromSystem
	if a.cfg.DNSTTL > 0 {
		dcfg.TTL = a.cfg.DNSTTL
	}
	dcfg.Logger = a.cfg.Logger.With("node", a.cfg.Name)
	a.dns, err = berthdns.New(dcfg)
	if err != nil {
		return fmt.Errorf("agent: node-local dns on %s: %w", dcfg.Addr, err)
	}
	a.logger.Info("node agent joined", "server", a.cfg.ServerAddr, "podCIDR", reg.PodCidr, "bridge", a.rt.GatewayIP(), "dns", a.dns.Addr())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	goRun(func(ctx context.Context) { _ = a.dns.Run(ctx) })
	hb := time.Duration(reg.HeartbeatIntervalMs) * time.Millisecond
	goRun(func(ctx context.Context) { a.heartbeat(ctx, hb) })
	goRun(a.followDiscovery)
	if srt, ok := a.rt.(shellRuntime); ok {
		// Logs of containers gone for longer than the retention go.
		goRun(func(ctx context.Context) {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if n := srt.Logs().Sweep(); n > 0 {
						a.logger.Info("removed the logs of containers gone past the retention", "instances", n)
					}
				}
			}
		})
	}
	goRun(a.followNodes)
	assignments := make(chan *pb.Assignments, 1)
	goRun(func(ctx context.Context) { a.followAssignments(ctx, assignments) })
	loop := newLoop(a)
	err = loop.run(ctx, assignments, a.rt.Exits)
	cancel()
	wg.Wait()
	return err
}

func (a *Agent) heartbeat(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	// One stream carries the heartbeats (a message each interval and at
	// once after each snapshot); it is opened again when it breaks. A
	// control plane without it gets unary calls.
	var hb pb.HeartbeatStream
	defer hb.Close()
	unary := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.beatNow:
		}
		req := &pb.HeartbeatRequest{Name: a.cfg.Name, DnsVersion: a.dnsVersion.Load()}
		var err error
		if !unary {
			if err = hb.Send(ctx, a.client, req); status.Code(err) == codes.Unimplemented {
				unary = true
			}
		}
		if unary {
			hctx, cancel := context.WithTimeout(ctx, every)
			_, err = a.client.Heartbeat(hctx, req)
			cancel()
		}
		if err != nil && !failing && ctx.Err() == nil {
			a.logger.Warn("heartbeat failed", "err", err)
		}
		failing = err != nil
		a.connected.Store(err == nil)
	}
}

// retry runs a stream-following function again after errors, with a
// jittered backoff capped at about two seconds (newRetryBackoff). The streams
// wait for the connection (waitForReady), so the backoff only paces a
// control plane that is up but refuses; it starts again after a stream
// that lasted. It warns once per outage.
func (a *Agent) retry(ctx context.Context, what string, f func(context.Context) error) {
	retry := newRetryBackoff()
	failing := false
	for ctx.Err() == nil {
		start := time.Now()
		err := f(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			retry.Reset()
			failing = false
		}
		delay := retry.Next()
		if !failing {
			a.logger.Warn(what+" stream ended, reconnecting", "err", err, "in", delay.Round(time.Millisecond))
		} else {
			a.logger.Debug(what+" stream failed again, reconnecting", "err", err, "in", delay.Round(time.Millisecond))
		}
		failing = true
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (a *Agent) followDiscovery(ctx context.Context) {
	// The snapshot as the agent holds it, kept across reconnects: a
	// replica that still has the deltas since its version sends only
	// those.
	held := &heldSnapshot{services: map[string]*pb.DiscoveryService{}}
	wholeOnly := false
	a.retry(ctx, "discovery", func(ctx context.Context) error {
		if wholeOnly {
			return a.followWholeSnapshots(ctx)
		}
		stream, err := a.client.WatchDiscoveryDeltas(ctx, &pb.WatchDiscoveryRequest{Node: a.cfg.Name, HaveVersion: held.version, EndpointDeltas: true}, pb.Compressed())
		if err != nil {
			return err
		}
		for {
			msg, err := stream.Recv()
			if status.Code(err) == codes.Unimplemented {
				wholeOnly = true // an older control plane
				return err
			}
			if err != nil {
				return err
			}
			if err := held.apply(msg); err != nil {
				held.version = 0 // ask for the whole snapshot
				return err
			}
			a.gotSnapshot(held.snapshot())
		}
	})
}

// followWholeSnapshots is the feed of a control plane without deltas.
func (a *Agent) followWholeSnapshots(ctx context.Context) error {
	stream, err := a.client.WatchDiscovery(ctx, &pb.WatchDiscoveryRequest{Node: a.cfg.Name})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		a.gotSnapshot(msg)
	}
}

// gotSnapshot hands a snapshot to the node-local DNS and tells the
// control plane at once: rollout steps and drains wait for every node's
// DNS to have it. While the control plane is away the DNS keeps answering
// from the last one.
func (a *Agent) gotSnapshot(msg *pb.DiscoverySnapshot) {
	a.dns.Update(pb.ToSnapshot(msg))
	a.dnsVersion.Store(msg.Version)
	select {
	case a.beatNow <- struct{}{}:
	default:
	}
}

// heldSnapshot is the discovery snapshot an agent built from deltas.
type heldSnapshot struct {
	version  uint64
	services map[string]*pb.DiscoveryService // by "namespace/name"
}

// apply takes one message of the delta feed.
func (h *heldSnapshot) apply(d *pb.DiscoveryDelta) error {
	switch {
	case d.BaseVersion == 0:
		clear(h.services)
	case d.BaseVersion != h.version:
		return fmt.Errorf("discovery delta from version %d, but the agent has %d", d.BaseVersion, h.version)
	}
	for _, svc := range d.Services {
		h.services[svc.Namespace+"/"+svc.Name] = svc
	}
	// Applied to a copy: a delta that does not apply leaves the held
	// snapshot as it was (the agent then asks for the whole one again).
	next := map[string]*pb.DiscoveryService{}
	for _, sd := range d.ServiceDeltas {
		key := sd.Namespace + "/" + sd.Name
		svc, err := pb.ApplyServiceDelta(h.services[key], sd)
		if err != nil {
			return err
		}
		next[key] = svc
	}
	maps.Copy(h.services, next)
	for _, k := range d.Removed {
		delete(h.services, k)
	}
	h.version = d.Version
	return nil
}

// snapshot is the held snapshot, services in (namespace, name) order as
// the control plane builds it.
func (h *heldSnapshot) snapshot() *pb.DiscoverySnapshot {
	out := &pb.DiscoverySnapshot{Version: h.version, Services: make([]*pb.DiscoveryService, 0, len(h.services))}
	for _, svc := range h.services {
		out.Services = append(out.Services, svc)
	}
	slices.SortFunc(out.Services, func(a, b *pb.DiscoveryService) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

func (a *Agent) followAssignments(ctx context.Context, out chan *pb.Assignments) {
	a.retry(ctx, "assignments", func(ctx context.Context) error {
		stream, err := a.client.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: a.cfg.Name})
		if err != nil {
			return err
		}
		for {
			msg, err := stream.Recv()
			if err != nil {
				return err
			}
			// Level-triggered: only the latest set matters.
			select {
			case <-out:
			default:
			}
			out <- msg
		}
	})
}

// uploadLabel records on a containerd image which `berth image load`
// upload it came from.
const uploadLabel = "berth.dev/upload-digest"

// ensureImage makes ref available to containerd: already there, uploaded
// to the control plane with `berth image load`, or pulled from its
// registry. digest, when the revision pinned one, is the upload it must
// be: the bytes received are checked against it.
func (a *Agent) ensureImage(ctx context.Context, ref, digest string) error {
	a.imageMu.Lock()
	mu := a.imageLocks[ref]
	if mu == nil {
		mu = &sync.Mutex{}
		a.imageLocks[ref] = mu
	}
	a.imageMu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	// An image uploaded with `berth image load` wins over what containerd
	// has under that name, unless it is that very upload (label).
	fctx, cancelFetch := context.WithCancel(ctx)
	defer cancelFetch()
	stream, err := a.client.FetchImage(fctx, &pb.FetchImageRequest{Reference: ref, Digest: digest})
	if err != nil {
		return fmt.Errorf("fetch image %s: %w", ref, err)
	}
	first, err := stream.Recv()
	if status.Code(err) == codes.NotFound {
		if ok, err := a.rt.HasImage(ctx, ref); err == nil && ok {
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := a.rt.PullImage(pctx, ref); err != nil {
			return fmt.Errorf("pull image %s: %w", ref, err)
		}
		return nil
	}
	if err != nil {
		if ok, herr := a.rt.HasImage(ctx, ref); herr == nil && ok {
			// The control plane is unreachable: run what we have.
			return nil
		}
		return fmt.Errorf("fetch image %s: %w", ref, err)
	}
	if digest != "" && first.Digest != digest {
		return fmt.Errorf("fetch image %s: the control plane offered upload %s, the revision pinned %s", ref, first.Digest, digest)
	}
	if have, _ := a.rt.ImageLabel(ctx, ref, uploadLabel); have != "" && have == first.Digest {
		return nil
	}
	pr, pw := io.Pipe()
	h := sha256.New()
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		msg := first
		for {
			h.Write(msg.Data)
			if _, werr := pw.Write(msg.Data); werr != nil {
				return
			}
			var rerr error
			msg, rerr = stream.Recv()
			if errors.Is(rerr, io.EOF) {
				pw.Close()
				return
			}
			if rerr != nil {
				pw.CloseWithError(rerr)
				return
			}
		}
	}()
	refs, err := a.rt.ImportImage(ctx, pr)
	if err == nil {
		_, err = io.Copy(io.Discard, pr) // what the importer left (tar padding) counts for the digest
	}
	pr.Close()
	if err != nil {
		cancelFetch() // the reader may wait in Recv
	}
	<-hashed
	if err != nil {
		return fmt.Errorf("import image %s: %w", ref, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != first.Digest {
		// Imported, but not labelled: the next start fetches it again.
		return fmt.Errorf("import image %s: received bytes with digest %s, not upload %s", ref, got, first.Digest)
	}
	a.logger.Info("image imported from the control plane", "ref", ref, "names", refs, "upload", first.Digest)
	if ok, err := a.rt.HasImage(ctx, ref); err != nil || !ok {
		return fmt.Errorf("import image %s: the uploaded tarball does not carry that name (it has %v)", ref, refs)
	}
	if err := a.rt.LabelImage(ctx, ref, uploadLabel, first.Digest); err != nil {
		a.logger.Warn("could not label imported image", "ref", ref, "err", err)
	}
	return nil
}

// volumeDir returns (creating it on first use) the directory holding a
// volume's data on this node (volume.Store).
func (a *Agent) volumeDir(namespace, name string, sizeBytes int64) (string, error) {
	return a.volumeStore().Dir(namespace, name, sizeBytes)
}

func (a *Agent) volumeStore() volume.Store {
	return volume.Store{Root: filepath.Join(a.cfg.Runtime.StateDir, "volumes"), Logger: a.logger}
}

// deleteVolume removes a deleted volume's data and tells the control plane.
func (a *Agent) deleteVolume(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	dir, err := a.volumeStore().Remove(ns, name)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := a.client.VolumeDeleted(rctx, &pb.VolumeDeletedRequest{Node: a.cfg.Name, Namespace: ns, Name: name}); err != nil {
		return err
	}
	a.logger.Info("volume data removed", "volume", key, "dir", dir)
	return nil
}
