// Command xdsbench measures how fast one endpoint change reaches a fleet of
// gateways: N simulated gateways (real gRPC ADS streams, delta or state of
// the world, each ACKing every response) subscribe to every resource of a
// snapshot of S services x E endpoints; the benchmark publishes C snapshots
// that each move one endpoint and times Update -> every gateway ACKed
// (WaitForAck), and the control plane's CPU time per change.
//
// The gateways run in a child process (this binary with -role gateways) so
// that the CPU figure is the control plane's alone. Everything listens on
// 127.0.0.1 only. It stops by itself (-timeout).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/berth-dev/berth/bench/internal/simgw"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/gateway"
	"github.com/berth-dev/berth/xds"
)

func main() {
	role := flag.String("role", "bench", "bench, or gateways (the child process)")
	addr := flag.String("addr", "", "xDS server address (gateways role)")
	gateways := flag.Int("gateways", 100, "simulated gateways")
	services := flag.Int("services", 1000, "services in the snapshot")
	endpoints := flag.Int("endpoints", 10000, "endpoints in the snapshot, spread evenly over the services")
	changes := flag.Int("changes", 100, "endpoint changes to time")
	protocol := flag.String("protocol", "delta", "delta or sotw")
	clientKind := flag.String("client", "sim", "sim: bare ADS streams that ACK everything; berth: Berth's own gateways (each compiles what it gets and swaps its routing table)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	cpuProfile := flag.String("cpuprofile", "", "write the control plane's CPU profile of the timed changes here")
	tlsMode := flag.String("tls", "both", "plain, mtls (gateway certificates, as Berth serves xDS), or both side by side")
	pkiDir := flag.String("pki", "", "the CA the gateways' certificates come from (gateways role, with mTLS)")
	flag.Parse()
	profilePath = *cpuProfile

	var err error
	switch *role {
	case "gateways":
		var certs *gatewayCerts
		if *pkiDir != "" {
			if certs, err = loadGatewayCerts(*pkiDir); err != nil {
				break
			}
		}
		if *clientKind == "berth" {
			err = runBerthGateways(*addr, *gateways, *protocol, certs)
		} else {
			err = runGateways(*addr, *gateways, *protocol, certs)
		}
	default:
		err = runBoth(*tlsMode, *gateways, *services, *endpoints, *changes, *protocol, *clientKind, *timeout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "xdsbench:", err)
		os.Exit(1)
	}
}

var profilePath string

func buildSnapshot(version uint64, services, endpoints int) *discovery.Snapshot {
	snap := &discovery.Snapshot{Version: version, Services: make([]discovery.Service, services)}
	per := endpoints / services
	for i := range snap.Services {
		name := fmt.Sprintf("svc-%04d", i)
		eps := make([]discovery.Endpoint, per)
		for j := range eps {
			eps[j] = discovery.Endpoint{
				Instance: fmt.Sprintf("%s-1-%02d", name, j),
				Node:     fmt.Sprintf("node-%d", j%10),
				IP:       fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, j+1),
				Ready:    true,
			}
		}
		snap.Services[i] = discovery.Service{
			Namespace: "bench", Name: name,
			Ports:     []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
			Route:     &discovery.Route{Hosts: []string{name + ".example.test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: eps}},
		}
	}
	return snap
}

// moveEndpoint returns a copy of snap at version with one endpoint of
// service i given a new address; everything else is shared.
func moveEndpoint(snap *discovery.Snapshot, version uint64, i, n int) *discovery.Snapshot {
	next := &discovery.Snapshot{Version: version, Services: slices.Clone(snap.Services)}
	svc := &next.Services[i]
	rev := svc.Revisions[0]
	rev.Endpoints = slices.Clone(rev.Endpoints)
	rev.Endpoints[0].IP = fmt.Sprintf("10.200.%d.%d", (n/250)%250, n%250+1)
	svc.Revisions = []discovery.Revision{rev}
	return next
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// result is one run's figures.
type result struct {
	sync, p50, p99 time.Duration
	cpuPerChange   time.Duration
}

// runBoth runs the benchmark in plain TCP, with mutual TLS, or both, and
// prints the cost of mTLS as ratios.
func runBoth(mode string, gateways, services, endpoints, changes int, protocol, clientKind string, timeout time.Duration) error {
	var modes []bool
	switch mode {
	case "plain":
		modes = []bool{false}
	case "mtls":
		modes = []bool{true}
	case "both":
		modes = []bool{false, true}
	default:
		return fmt.Errorf("-tls %q: want plain, mtls or both", mode)
	}
	var rs []result
	for _, mtls := range modes {
		r, err := runBench(mtls, gateways, services, endpoints, changes, protocol, clientKind, timeout)
		if err != nil {
			return err
		}
		rs = append(rs, r)
	}
	if len(rs) == 2 {
		ratio := func(a, b time.Duration) string { return fmt.Sprintf("%.2fx", float64(b)/float64(max(a, 1))) }
		fmt.Printf("\nmTLS / plain: initial sync %s, change p50 %s, p99 %s, control-plane CPU per change %s\n",
			ratio(rs[0].sync, rs[1].sync), ratio(rs[0].p50, rs[1].p50), ratio(rs[0].p99, rs[1].p99), ratio(rs[0].cpuPerChange, rs[1].cpuPerChange))
	}
	return nil
}

func runBench(mtls bool, gateways, services, endpoints, changes int, protocol, clientKind string, timeout time.Duration) (res result, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	srv, err := xds.New(xds.DefaultConfig()) // 127.0.0.1:0
	if err != nil {
		return res, err
	}
	mode, childPKI := "plain TCP", []string{}
	if mtls {
		dir, err := os.MkdirTemp("", "xdsbench-pki-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		auth, err := benchAuth(dir)
		if err != nil {
			return res, err
		}
		srv.SetAuth(auth)
		mode, childPKI = "mutual TLS", []string{"-pki", dir}
	}
	runCtx, stop := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(runCtx) }()
	defer func() { stop(); <-runDone }()

	snap := buildSnapshot(1, services, endpoints)
	start := time.Now()
	if err := srv.Update(snap); err != nil {
		return res, err
	}
	fmt.Printf("\nxds bench (%s): %d %s %s gateways, %d services, %d endpoints; first translate+publish %v\n",
		mode, gateways, clientKind, protocol, services, endpoints, time.Since(start).Round(time.Microsecond))

	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	child := exec.CommandContext(ctx, self, append([]string{"-role", "gateways", "-addr", srv.Addr(),
		"-gateways", fmt.Sprint(gateways), "-protocol", protocol, "-client", clientKind}, childPKI...)...)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := child.Start(); err != nil {
		return res, err
	}
	defer func() {
		child.Process.Signal(syscall.SIGTERM)
		child.Wait()
	}()
	childOut := bufio.NewReader(out)

	// Every gateway connected and ACKed version 1.
	start = time.Now()
	for len(srv.Gateways()) < gateways {
		if ctx.Err() != nil {
			return res, fmt.Errorf("only %d of %d gateways connected", len(srv.Gateways()), gateways)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.WaitForAck(ctx, 1); err != nil {
		return res, err
	}
	res.sync = time.Since(start)
	fmt.Printf("initial sync of %d gateways: %v\n", gateways, res.sync.Round(time.Millisecond))

	runtime.GC()
	if profilePath != "" {
		f, err := os.Create(profilePath)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}
	lat := make([]time.Duration, 0, changes)
	pub := make([]time.Duration, 0, changes)
	cpu0, wall0 := cpuTime(), time.Now()
	for n := range changes {
		version := uint64(n + 2)
		next := moveEndpoint(snap, version, (n*7919)%services, n)
		t0 := time.Now()
		if err := srv.Update(next); err != nil {
			return res, err
		}
		t1 := time.Now()
		if err := srv.WaitForAck(ctx, version); err != nil {
			return res, err
		}
		lat = append(lat, time.Since(t0))
		pub = append(pub, t1.Sub(t0))
		snap = next
	}
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)

	// The child reports its own CPU time when asked.
	child.Process.Signal(syscall.SIGUSR1)
	line, _ := childOut.ReadString('\n')

	slices.Sort(lat)
	slices.Sort(pub)
	q := func(d []time.Duration, p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	fmt.Printf("change -> all %d ACKs over %d changes: p50 %v  p99 %v  max %v\n", gateways, changes,
		q(lat, 0.50).Round(time.Microsecond), q(lat, 0.99).Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
	fmt.Printf("Update (incremental translate + publish): p50 %v  p99 %v\n", q(pub, 0.50).Round(time.Microsecond), q(pub, 0.99).Round(time.Microsecond))
	fmt.Printf("control-plane CPU per change: %v (%.0f%% of one core over %v)\n",
		(cpu / time.Duration(changes)).Round(time.Microsecond), 100*cpu.Seconds()/wall.Seconds(), wall.Round(time.Millisecond))
	if line != "" {
		fmt.Printf("gateways' process: %s", line)
	}
	goal := "met"
	if q(lat, 0.99) >= 50*time.Millisecond {
		goal = "NOT met"
	}
	fmt.Printf("goal p99 < 50ms: %s\n", goal)
	res.p50, res.p99, res.cpuPerChange = q(lat, 0.50), q(lat, 0.99), cpu/time.Duration(changes)
	return res, nil
}

// runGateways opens n ADS streams that subscribe to everything and ACK
// every response, until SIGTERM. On SIGUSR1 it prints its CPU time and the
// responses and resources received since the previous SIGUSR1.
func runGateways(addr string, n int, protocol string, certs *gatewayCerts) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var responses, resources int
	count := func(res int) { mu.Lock(); responses++; resources += res; mu.Unlock() }
	types := xds.TypeURLs
	errc := make(chan error, n)
	for i := range n {
		id := fmt.Sprintf("bench-gw-%03d", i)
		creds := insecure.NewCredentials()
		if certs != nil {
			cfg, err := certs.tls(id)
			if err != nil {
				return err
			}
			creds = credentials.NewTLS(cfg)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		client := discoverypb.NewAggregatedDiscoveryServiceClient(conn)
		node := &core.Node{Id: id, UserAgentName: "xdsbench"}
		go func() {
			var err error
			if protocol == "sotw" {
				err = simgw.SotW(ctx, client, node, types, count)
			} else {
				err = simgw.Delta(ctx, client, node, types, count)
			}
			if err != nil && ctx.Err() == nil {
				errc <- err
			}
		}()
	}
	return serveChild(errc, func(cpu time.Duration) {
		mu.Lock()
		fmt.Printf("CPU %v; %d responses, %d resources received\n", cpu.Round(time.Millisecond), responses, resources)
		mu.Unlock()
	})
}

// serveChild runs the child's loop: it returns the first error of errc,
// or nil on SIGTERM; on each SIGUSR1 it reports its CPU time since start.
func serveChild(errc <-chan error, report func(cpu time.Duration)) error {
	sig := make(chan os.Signal, 2)
	signalNotify(sig)
	cpu0 := cpuTime()
	for {
		select {
		case err := <-errc:
			return err
		case s := <-sig:
			if s == syscall.SIGTERM {
				return nil
			}
			report(cpuTime() - cpu0)
		}
	}
}

// runBerthGateways runs n of Berth's own gateways (ADS over the protocol,
// each compiling what it receives and swapping its routing table), until
// SIGTERM; on SIGUSR1 it prints its CPU time.
func runBerthGateways(addr string, n int, protocol string, certs *gatewayCerts) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, n)
	var err error
	for i := range n {
		cfg := gateway.DefaultConfig()
		cfg.ListenAddr, cfg.XDSAddr, cfg.NodeID, cfg.XDSProtocol = "127.0.0.1:0", addr, fmt.Sprintf("bench-gw-%03d", i), protocol
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if certs != nil {
			if cfg.XDSTLS, err = certs.tls(cfg.NodeID); err != nil {
				return err
			}
		}
		gw, gerr := gateway.New(cfg)
		if gerr != nil {
			return gerr
		}
		go func() {
			if err := gw.Run(ctx); err != nil && ctx.Err() == nil {
				errc <- err
			}
		}()
	}
	return serveChild(errc, func(cpu time.Duration) { fmt.Printf("CPU %v\n", cpu.Round(time.Millisecond)) })
}
