package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/loadshare"
	"github.com/berth-dev/berth/controlplane/publish"
	"github.com/berth-dev/berth/discovery"
	berthdns "github.com/berth-dev/berth/dns"
	"github.com/berth-dev/berth/gateway"
	"github.com/berth-dev/berth/internal/buildinfo"
	"github.com/berth-dev/berth/internal/health"
	"github.com/berth-dev/berth/nodeagent"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"github.com/berth-dev/berth/ui"
	"github.com/berth-dev/berth/xds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"golang.org/x/sync/errgroup"
)

// serverFlags are shared by `berth server` and `berth dev`.
type serverFlags struct {
	dataDir        string
	etcd           []string
	apiAddr        string
	xdsAddr        string
	dnsAddr        string
	metricsAddr    string
	uiAddr         string
	clusterCIDR    string
	nodeSubnetSize int
	dnsTTL         time.Duration
	dnsUpstreams   []string
	dnsRateLimit   float64
	nodeTimeout    time.Duration
	caCert         string
	caKey          string
	certTTL        time.Duration
	maxNodes       int
	maxImageSize   string
	imageQuota     string
	secretsKey     string
	adminConfig    string
	etcdCA         string
	etcdCert       string
	etcdKey        string
	lostGrace      time.Duration
	name           string
	advertise      string
	// berth server only: a member of a multi-member embedded etcd.
	etcdPeerAddr      string
	etcdAdvertisePeer string
	join              []string
}

func (f *serverFlags) register(cmd *cobra.Command, dataDir, metrics string) {
	cmd.Flags().StringVar(&f.dataDir, "data-dir", dataDir, "where etcd's data and uploaded images live")
	cmd.Flags().StringSliceVar(&f.etcd, "etcd-endpoints", nil, "external etcd endpoints (default: embedded etcd in --data-dir)")
	cmd.Flags().StringVar(&f.apiAddr, "api-addr", "127.0.0.1:7400", "gRPC API address")
	cmd.Flags().StringVar(&f.xdsAddr, "xds-addr", "127.0.0.1:7401", "xDS (ADS) address that gateways connect to")
	cmd.Flags().StringVar(&f.dnsAddr, "dns-addr", "127.0.0.1:1053", "DNS address for the host (UDP and TCP); empty disables")
	cmd.Flags().StringVar(&f.metricsAddr, "metrics-addr", metrics, "Prometheus /metrics, /healthz and /readyz address; empty disables")
	cmd.Flags().StringVar(&f.uiAddr, "ui-addr", ui.DefaultAddr, "web dashboard address (log in with an API token); empty disables")
	cmd.Flags().StringVar(&f.clusterCIDR, "cluster-cidr", "10.213.0.0/16", "pod network, divided into one subnet of --node-subnet-size per node")
	cmd.Flags().IntVar(&f.nodeSubnetSize, "node-subnet-size", 24, "prefix length of each node's pod subnet: /24 gives 253 pods a node and 256 nodes in a /16; /26 gives 61 pods and 1,024 nodes")
	cmd.Flags().DurationVar(&f.dnsTTL, "dns-ttl", 5*time.Second, "TTL of service DNS records; a stopped endpoint leaves DNS this long before its container stops")
	cmd.Flags().StringSliceVar(&f.dnsUpstreams, "dns-upstream", nil, "resolvers for names outside berth.internal (default: from /etc/resolv.conf)")
	cmd.Flags().Float64Var(&f.dnsRateLimit, "dns-rate-limit", -1, "UDP responses a second per client /24 (IPv6 /56) from the host DNS, then dropped or truncated; -1: 200 when --dns-addr is not loopback, else off; 0: off")
	def := controlplane.DefaultConfig()
	cmd.Flags().StringVar(&f.caCert, "ca-cert", "", "cluster CA certificate (PEM) to use instead of the one in --data-dir/pki or etcd (with --ca-key)")
	cmd.Flags().StringVar(&f.caKey, "ca-key", "", "the cluster CA's private key (PEM), with --ca-cert")
	cmd.Flags().DurationVar(&f.certTTL, "cert-ttl", def.CertTTL, "lifetime of the certificates issued to nodes, gateways and replicas (renewed two thirds of the way)")
	cmd.Flags().IntVar(&f.maxNodes, "max-nodes", def.MaxNodes, "most nodes that may join (0: no cap)")
	cmd.Flags().StringVar(&f.maxImageSize, "max-image-size", "4Gi", "largest image tarball one `berth image load` may upload")
	cmd.Flags().StringVar(&f.imageQuota, "image-quota", "20Gi", "most bytes all uploaded images may take together")
	cmd.Flags().StringVar(&f.secretsKey, "secrets-key-file", "", "key Secrets are sealed with in etcd, created at first start (default --data-dir/secrets.key; every replica needs the same)")
	cmd.Flags().StringVar(&f.adminConfig, "admin-config", "", "where to write the first admin's CLI configuration, mode 0600 (default --data-dir/admin.conf; - disables)")
	cmd.Flags().StringVar(&f.etcdCA, "etcd-cafile", "", "CA of an external etcd's server certificates")
	cmd.Flags().StringVar(&f.etcdCert, "etcd-certfile", "", "client certificate for an external etcd")
	cmd.Flags().StringVar(&f.etcdKey, "etcd-keyfile", "", "client key for an external etcd")
	cmd.Flags().DurationVar(&f.nodeTimeout, "node-timeout", def.NodeTimeout, "a node that misses heartbeats this long is NotReady and its endpoints leave DNS and the gateways")
	cmd.Flags().DurationVar(&f.lostGrace, "lost-grace", def.LostGrace, "a node NotReady this long is Lost and its instances are replaced on other nodes")
	cmd.Flags().StringVar(&f.name, "name", "", "this replica's name in the leader election, `get servers` and etcd (default: its API address; with --etcd-peer-addr, the host's name)")
	cmd.Flags().StringVar(&f.advertise, "advertise-addr", "", "the API address the other replicas reach this one at (default: --api-addr as bound)")
}

func (f *serverFlags) upstreams(logger *slog.Logger) []string {
	if len(f.dnsUpstreams) > 0 {
		return f.dnsUpstreams
	}
	ups, err := berthdns.UpstreamsFromResolvConf("/etc/resolv.conf")
	if err != nil {
		logger.Warn("no DNS upstreams: names outside berth.internal will not resolve", "err", err)
	}
	return ups
}

// controlPlane is the server role: etcd, API, controllers, xDS, host DNS.
type controlPlane struct {
	cp     *controlplane.Server
	xds    *xds.Server
	dns    *berthdns.Server
	ui     *ui.Server
	logger *slog.Logger
}

func newControlPlane(ctx context.Context, f *serverFlags, reg prometheus.Registerer, logger *slog.Logger) (*controlPlane, error) {
	xcfg := xds.DefaultConfig()
	xcfg.Addr, xcfg.Logger, xcfg.Registerer = f.xdsAddr, logger, reg
	// Gateways retry idempotent requests on connect failure, a refused
	// stream or a 503, twice at most, within the clusters' retry budget.
	xcfg.Translate.Retries = 2
	xsrv, err := xds.New(xcfg)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	c := &controlPlane{xds: xsrv, logger: logger}
	sinks := []publish.Sink{func(s *discovery.Snapshot) {
		if err := xsrv.Update(s); err != nil {
			logger.Error("xds: snapshot rejected, gateways keep the previous one", "version", s.Version, "err", err)
		}
	}}
	if f.dnsAddr != "" {
		dcfg := berthdns.DefaultConfig()
		dcfg.Addr, dcfg.TTL, dcfg.Logger, dcfg.Registerer = f.dnsAddr, f.dnsTTL, logger, reg
		dcfg.Upstreams = f.upstreams(logger)
		dcfg.UpstreamsFromSystem = len(f.dnsUpstreams) == 0
		dcfg.RateLimit = f.dnsRateLimit
		if dcfg.RateLimit < 0 {
			dcfg.RateLimit = 0
			if ap, err := netip.ParseAddrPort(f.dnsAddr); err != nil || !ap.Addr().IsLoopback() {
				dcfg.RateLimit = 200 // reachable from outside: no reflection amplifier
			}
		}
		// The node-local servers listen in the pod network: the host
		// server never forwards there, so the two can never loop.
		if p, err := netip.ParsePrefix(f.clusterCIDR); err == nil {
			dcfg.NoForwardTo = []netip.Prefix{p}
		}
		c.dns, err = berthdns.New(dcfg)
		if err != nil {
			return nil, fmt.Errorf("dns on %s: %w", f.dnsAddr, err)
		}
		sinks = append(sinks, c.dns.Update)
	}
	cfg := controlplane.DefaultConfig()
	cfg.DataDir, cfg.EtcdEndpoints, cfg.APIAddr, cfg.ClusterCIDR = f.dataDir, f.etcd, f.apiAddr, f.clusterCIDR
	if cluster, err := netip.ParsePrefix(f.clusterCIDR); err != nil || !cluster.Addr().Is4() {
		return nil, fmt.Errorf("--cluster-cidr %q: want an IPv4 CIDR like 10.213.0.0/16", f.clusterCIDR)
	} else if f.nodeSubnetSize < cluster.Bits() || f.nodeSubnetSize > 28 {
		return nil, fmt.Errorf("--node-subnet-size %d: must be between the cluster's /%d and /28", f.nodeSubnetSize, cluster.Bits())
	}
	cfg.NodeSubnetBits = f.nodeSubnetSize
	cfg.DrainDelay, cfg.Logger, cfg.Registerer = f.dnsTTL, logger, reg
	cfg.NodeTimeout, cfg.LostGrace, cfg.Name, cfg.AdvertiseAddr = f.nodeTimeout, f.lostGrace, f.name, f.advertise
	cfg.CACertFile, cfg.CAKeyFile, cfg.CertTTL, cfg.MaxNodes, cfg.AdminConfig = f.caCert, f.caKey, f.certTTL, f.maxNodes, f.adminConfig
	cfg.SecretsKeyFile = f.secretsKey
	cfg.EtcdPeerAddr, cfg.EtcdAdvertisePeerAddr, cfg.Join = f.etcdPeerAddr, f.etcdAdvertisePeer, f.join
	for _, q := range []struct {
		flag, v string
		dst     *int64
	}{{"--max-image-size", f.maxImageSize, &cfg.MaxImageSize}, {"--image-quota", f.imageQuota, &cfg.ImageQuota}} {
		n, err := api.ParseMemory(q.v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s %q: a size like 4Gi or 500Mi", q.flag, q.v)
		}
		*q.dst = n
	}
	if f.etcdCA != "" || f.etcdCert != "" || f.etcdKey != "" {
		info := transport.TLSInfo{TrustedCAFile: f.etcdCA, CertFile: f.etcdCert, KeyFile: f.etcdKey}
		if cfg.EtcdTLS, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
	}
	cfg.HeartbeatInterval = f.nodeTimeout / 4
	cfg.Gateways = func() []api.GatewayStatus { return gatewaysOf(xsrv) }
	cfg.GatewaysChanged = xsrv.Changed
	cfg.Loads = revisionLoads{xsrv}
	c.cp, err = controlplane.New(ctx, cfg, sinks...)
	if err != nil {
		return nil, err
	}
	// xDS serves gateways only: mutual TLS with a gateway certificate
	// whose name is the node id it claims, cut when revoked.
	auth := c.cp.Auth()
	xsrv.SetAuth(xds.Auth{TLS: c.cp.ServerTLS(true), Check: auth.CheckCertificate, Changed: auth.Changed})
	if f.uiAddr != "" {
		if c.ui, err = newDashboard(c.cp, f.uiAddr, reg, logger); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// newDashboard serves the web dashboard of this replica. It calls the
// replica's own API over TLS with no client certificate, each call with
// the logged-in user's token: the API decides what a user may see and do.
func newDashboard(cp *controlplane.Server, addr string, reg prometheus.Registerer, logger *slog.Logger) (*ui.Server, error) {
	conn, err := pb.Dial(cp.APIAddr(), pki.ClientTLS(nil, cp.CA().Pool()))
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	cfg := ui.DefaultConfig()
	cfg.Addr, cfg.API, cfg.Logger, cfg.Registerer = addr, pb.NewBerthClient(conn), logger, reg
	cfg.Replica, cfg.Version = cp.ReplicaName(), buildinfo.Get().Version
	cfg.Views, cfg.Discovery, cfg.History = cp.Cache(), cp.Publisher().Latest, cp.RolloutHistory()
	srv, err := ui.New(cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return srv, nil
}

// dashboardLine is how `berth dev` and `berth server` print the
// dashboard's address: for dev, a link that logs the admin in (like
// Jupyter's); for a server, how to log in.
func (c *controlPlane) dashboardLine(dev bool) string {
	if c.ui == nil {
		return "disabled"
	}
	if dev {
		if tok := adminToken(c.cp.AdminConfigPath()); tok != "" {
			return c.ui.URL() + "/login?token=" + url.QueryEscape(tok)
		}
	}
	return c.ui.URL() + " (log in with an API token: berth token create --role viewer)"
}

func (c *controlPlane) run(ctx context.Context, g *group) {
	g.go_("xds", c.xds.Run)
	if c.dns != nil {
		g.go_("dns", c.dns.Run)
	}
	g.go_("control plane", c.cp.Run)
	if c.ui != nil {
		g.go_("dashboard", c.ui.Run)
	}
	// Load reports reach the replica a gateway is connected to; sharing
	// them lets the leader's canary analysis see the whole cluster's.
	sharer := &loadshare.Sharer{Client: c.cp.Etcd(), Replica: c.cp.ReplicaName(), XDS: c.xds, Logger: c.logger}
	g.go_("load sharing", sharer.Run)
}

// group runs a role's components (errgroup): the first to fail stops
// them all, and its error, named, is the role's. A component that returns
// after the stop is not an error.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc // stops every component
	eg     *errgroup.Group
}

func newGroup(ctx context.Context) *group {
	ctx, cancel := context.WithCancel(ctx)
	eg, ctx := errgroup.WithContext(ctx)
	return &group{ctx: ctx, cancel: cancel, eg: eg}
}

func (g *group) go_(name string, f func(context.Context) error) {
	g.eg.Go(func() error {
		if err := f(g.ctx); err != nil && g.ctx.Err() == nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// wait waits for every component and returns the first failure.
func (g *group) wait() error {
	err := g.eg.Wait()
	g.cancel()
	return err
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serveMetrics serves a role's /metrics, /healthz (the process serves)
// and /readyz (the role's checks pass) on addr.
func serveMetrics(g *group, addr string, reg *prometheus.Registry, checks ...health.Check) (string, error) {
	if addr == "" {
		return "", nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	health.Register(mux, checks...)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.go_("metrics", func(ctx context.Context) error {
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return lis.Addr().String(), nil
}

// agentFlags are shared by `berth agent` and `berth dev`.
type agentFlags struct {
	token                     string
	shellAddr                 string
	defaultCPU, defaultMemory string
	defaultPids               int64
	caHash                    string
	certDir                   string
	name                      string
	address                   string
	socket                    string
	namespace                 string
	stateDir                  string
	bridge                    string
	labels                    map[string]string
	dnsPort                   int
	grace                     time.Duration
	cpu                       string
	memory                    string
	hostAccess                bool
	hostPorts, cpPorts        []uint
}

func toUints(ps []uint16) []uint {
	out := make([]uint, len(ps))
	for i, p := range ps {
		out[i] = uint(p)
	}
	return out
}

func toPorts(flag string, ps []uint) ([]uint16, error) {
	out := make([]uint16, len(ps))
	for i, p := range ps {
		if p == 0 || p > 65535 {
			return nil, fmt.Errorf("%s: port %d is not 1-65535", flag, p)
		}
		out[i] = uint16(p)
	}
	return out, nil
}

func (f *agentFlags) register(cmd *cobra.Command, stateDir string) {
	def := nodeagent.DefaultConfig()
	cmd.Flags().StringVar(&f.name, "node-name", def.Name, "this node's name")
	if cmd.Name() == "agent" {
		cmd.Flags().StringVar(&f.token, "join-token", os.Getenv("BERTH_JOIN_TOKEN"), "join token from `berth token create --role node`, needed once: the certificate it buys is kept in --cert-dir (env BERTH_JOIN_TOKEN)")
		cmd.Flags().StringVar(&f.caHash, "ca-hash", os.Getenv("BERTH_CA_HASH"), "the cluster CA's hash (sha256:...) the control plane must present before the join token is sent (env BERTH_CA_HASH)")
		cmd.Flags().StringVar(&f.certDir, "cert-dir", "", "where the node keeps its key and certificate (default --state-dir/pki)")
	}
	cmd.Flags().StringVar(&f.address, "node-address", def.Address, "this node's IP address as other nodes reach it")
	cmd.Flags().StringVar(&f.shellAddr, "shell-addr", "", "where the agent serves logs, exec and port-forward to control plane replicas (mutual TLS, replicas only): host:port on --node-address (default: --node-address, a free port)")
	cmd.Flags().StringVar(&f.socket, "containerd-socket", def.Runtime.Socket, "containerd's socket")
	cmd.Flags().StringVar(&f.namespace, "containerd-namespace", def.Runtime.Namespace, "containerd namespace for Berth's containers and images")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", stateDir, "node state: CNI allocations, resolv.conf files, container logs")
	cmd.Flags().StringVar(&f.bridge, "bridge", def.Runtime.BridgeName, "name of the node bridge CNI creates")
	cmd.Flags().StringToStringVar(&f.labels, "label", nil, "node labels, k=v")
	cmd.Flags().IntVar(&f.dnsPort, "node-dns-port", 53, "port of the node-local DNS on the bridge address")
	cmd.Flags().DurationVar(&f.grace, "stop-grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping a container")
	lim := nodeagent.DefaultConfig().DefaultLimits
	cmd.Flags().StringVar(&f.defaultCPU, "default-cpu", fmt.Sprintf("%dm", lim.MilliCPU), "CPU limit of a container whose service sets no resources.cpu")
	cmd.Flags().StringVar(&f.defaultMemory, "default-memory", fmt.Sprintf("%dMi", lim.MemoryBytes>>20), "memory limit of a container whose service sets no resources.memory")
	cmd.Flags().Int64Var(&f.defaultPids, "default-pids", lim.Pids, "process limit (pids.max) of a container whose service sets no resources.pids")
	cmd.Flags().BoolVar(&f.hostAccess, "container-host-access", false, "let containers reach every port of this node and the control plane's ports (default: only the node-local DNS and --container-host-ports)")
	cmd.Flags().UintSliceVar(&f.hostPorts, "container-host-ports", nil, "ports of this node (TCP and UDP) containers may reach besides the node-local DNS")
	cmd.Flags().UintSliceVar(&f.cpPorts, "control-plane-ports", toUints(def.ControlPlanePorts), "ports containers may not reach on the control plane's addresses (besides the API port of --server)")
	cmd.Flags().StringVar(&f.cpu, "cpu", "", "CPU this node offers, e.g. 4 or 3500m (default: the host's CPUs)")
	cmd.Flags().StringVar(&f.memory, "memory", "", "memory this node offers, e.g. 8Gi (default: the host's memory)")
}

func (f *agentFlags) config(server string, stopOnExit bool, dnsTTL time.Duration, upstreams []string, reg prometheus.Registerer, logger *slog.Logger) (nodeagent.Config, error) {
	cfg := nodeagent.DefaultConfig()
	var err error
	if cfg.Capacity.MilliCPU, err = api.ParseCPU(f.cpu); err != nil {
		return cfg, fmt.Errorf("--cpu: %w", err)
	}
	if cfg.Capacity.MemoryBytes, err = api.ParseMemory(f.memory); err != nil {
		return cfg, fmt.Errorf("--memory: %w", err)
	}
	cfg.Name, cfg.ServerAddr, cfg.Address, cfg.Labels, cfg.ShellAddr = f.name, server, f.address, f.labels, f.shellAddr
	cfg.JoinToken, cfg.CAHash, cfg.CertDir = f.token, f.caHash, f.certDir
	cfg.Runtime.Socket, cfg.Runtime.Namespace, cfg.Runtime.StateDir, cfg.Runtime.BridgeName = f.socket, f.namespace, f.stateDir, f.bridge
	cfg.Runtime.NetworkName = f.bridge
	cfg.DNSPort, cfg.DNSTTL, cfg.DNSUpstreams = f.dnsPort, dnsTTL, upstreams
	cfg.StopOnExit, cfg.StopGrace = stopOnExit, f.grace
	cfg.ContainerHostAccess = f.hostAccess
	if cfg.ContainerHostPorts, err = toPorts("--container-host-ports", f.hostPorts); err != nil {
		return cfg, err
	}
	if cfg.ControlPlanePorts, err = toPorts("--control-plane-ports", f.cpPorts); err != nil {
		return cfg, err
	}
	cpu, err := api.ParseCPU(f.defaultCPU)
	if err != nil || cpu <= 0 {
		return cfg, fmt.Errorf("--default-cpu %q: want a CPU quantity like 500m or 2", f.defaultCPU)
	}
	mem, err := api.ParseMemory(f.defaultMemory)
	if err != nil || mem <= 0 {
		return cfg, fmt.Errorf("--default-memory %q: want a size like 512Mi", f.defaultMemory)
	}
	if f.defaultPids <= 0 {
		return cfg, fmt.Errorf("--default-pids %d: must be positive", f.defaultPids)
	}
	cfg.DefaultLimits = nodeagent.DefaultLimits{MilliCPU: cpu, MemoryBytes: mem, Pids: f.defaultPids}
	cfg.Logger, cfg.Registerer = logger, reg
	return cfg, nil
}

// preflight checks containerd and the CNI plugins before anything starts,
// so a missing install is reported at once with what to do.
func preflight(ctx context.Context, f *agentFlags) error {
	rcfg := runtime.DefaultConfig()
	rcfg.Socket, rcfg.Namespace, rcfg.StateDir = f.socket, f.namespace, f.stateDir
	rt, err := runtime.New(ctx, rcfg)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	return rt.Close()
}

func newDevCmd(g *globalOptions) *cobra.Command {
	sf := &serverFlags{}
	af := &agentFlags{}
	gf := &gatewayFlags{}
	var gatewayAddr string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a whole one-node cluster in this process: etcd, control plane, agent, DNS, xDS and gateway",
		Long: `berth dev runs everything on this machine in one process: embedded etcd in
--data-dir, the control plane API, scheduler and controllers, a node agent on
the local containerd, node-local DNS (on the bridge address for containers and
on --dns-addr for the host), the xDS server and the gateway. Ctrl-C stops it
and the containers it started; started again on the same --data-dir it brings
the same services back.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := g.logger()
			if err := preflight(ctx, af); err != nil {
				return err
			}
			reg := newRegistry()
			// The agent stops first (it stops the containers while the
			// control plane can still hear about it), then the rest.
			grp := newGroup(context.WithoutCancel(ctx))
			cp, err := newControlPlane(ctx, sf, reg, logger)
			if err != nil {
				return err
			}
			cp.run(ctx, grp)
			gcfg := gateway.DefaultConfig()
			gcfg.ListenAddr, gcfg.XDSAddr, gcfg.NodeID, gcfg.Logger, gcfg.Registerer = gatewayAddr, cp.xds.Addr(), "gateway-"+af.name, logger, reg
			gwCreds, err := cp.partCredentials(ctx, pki.RoleGateway, gcfg.NodeID)
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			gcfg.XDSTLS = gwCreds.ClientTLS()
			grp.go_("gateway certificate", func(ctx context.Context) error { return renewOver(ctx, cp.cp.APIAddr(), gwCreds, logger) })
			accessLog, err := gf.apply(&gcfg)
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			defer accessLog.Close()
			gw, err := gateway.New(gcfg)
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return fmt.Errorf("gateway: %w", err)
			}
			grp.go_("gateway", gw.Run)
			// The in-process agent gets its certificate from the CA this
			// process holds, recorded as if it had joined.
			nodeCreds, err := cp.partCredentials(ctx, pki.RoleNode, af.name)
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			acfg, err := af.config(cp.cp.APIAddr(), true, sf.dnsTTL, sf.upstreams(logger), reg, logger)
			acfg.Credentials = nodeCreds
			acfg.DNSUpstreamsFromSystem = len(sf.dnsUpstreams) == 0
			if cp.dns != nil {
				// Nor does the node-local server forward to the host's.
				if ap, err := netip.ParseAddrPort(cp.dns.Addr()); err == nil {
					acfg.DNSNoForwardTo = append(acfg.DNSNoForwardTo, ap)
				}
			}
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			agent, err := nodeagent.New(acfg)
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			metricsAddr, err := serveMetrics(grp, sf.metricsAddr, reg,
				health.Check{Name: "control plane", Fn: cp.cp.CheckReady},
				health.Check{Name: "gateway", Fn: gw.CheckReady},
				health.Check{Name: "agent", Fn: agent.CheckReady})
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			agentCtx, stopAgent := context.WithCancel(ctx)
			defer stopAgent()
			agentDone := make(chan error, 1)
			go func() { agentDone <- agent.Run(agentCtx) }()
			var agentErr error
			select {
			case <-agent.Ready():
				hostDNS := "disabled"
				if cp.dns != nil {
					hostDNS = cp.dns.Addr()
				}
				fmt.Fprintf(os.Stdout, `berth dev is up (Ctrl-C stops it and its containers)
  api        %s        (CLI configuration: %s)
  gateway    http://%s
  xds        %s
  dns        %s (host)   %s (containers)
  metrics    %s
  dashboard  %s
  node       %s, containerd %s (namespace %s)
  data       %s
`, cp.cp.APIAddr(), cp.cp.AdminConfigPath(), gw.Addr(), cp.xds.Addr(), hostDNS, agent.DNSAddr(), metricsURL(metricsAddr), cp.dashboardLine(true), af.name, af.socket, af.namespace, sf.dataDir)
			case agentErr = <-agentDone:
				agentDone <- agentErr
			case <-grp.ctx.Done():
			}
			select {
			case <-ctx.Done():
			case <-grp.ctx.Done():
			case agentErr = <-agentDone:
				agentDone <- agentErr
			}
			stopAgent()
			agentErr = <-agentDone
			grp.cancel()
			err = errors.Join(agentErr, grp.wait())
			if err == nil {
				fmt.Fprintln(os.Stdout, "berth dev stopped")
			}
			return err
		},
	}
	sf.register(cmd, "/var/lib/berth/dev", "127.0.0.1:7402")
	af.register(cmd, "")
	cmd.Flags().StringVar(&gatewayAddr, "gateway-addr", "127.0.0.1:8080", "gateway HTTP address")
	gf.register(cmd)
	cmd.PreRun = func(cmd *cobra.Command, args []string) {
		if af.stateDir == "" {
			af.stateDir = filepath.Join(sf.dataDir, "node")
		}
	}
	return cmd
}

func metricsURL(addr string) string {
	if addr == "" {
		return "disabled"
	}
	return "http://" + addr + "/metrics"
}

func newServerCmd(g *globalOptions) *cobra.Command {
	sf := &serverFlags{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: etcd (embedded unless --etcd-endpoints), API, scheduler, controllers, xDS and DNS",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := g.logger()
			reg := newRegistry()
			grp := newGroup(ctx)
			cp, err := newControlPlane(ctx, sf, reg, logger)
			if err != nil {
				return err
			}
			cp.run(ctx, grp)
			metricsAddr, err := serveMetrics(grp, sf.metricsAddr, reg, health.Check{Name: "control plane", Fn: cp.cp.CheckReady})
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			hostDNS := "disabled"
			if cp.dns != nil {
				hostDNS = cp.dns.Addr()
			}
			fmt.Fprintf(os.Stdout, "berth server: api %s, xds %s, dns %s, metrics %s, data %s\n", cp.cp.APIAddr(), cp.xds.Addr(), hostDNS, metricsURL(metricsAddr), sf.dataDir)
			fmt.Fprintf(os.Stdout, "  dashboard: %s\n", cp.dashboardLine(false))
			fmt.Fprintf(os.Stdout, "  admin CLI configuration: %s\n  join nodes:    berth token create --role node    (then berth agent --server ADDR --join-token T --ca-hash %s)\n  join gateways: berth token create --role gateway (then berth gateway --server ADDR --join-token T --ca-hash %s)\n", cp.cp.AdminConfigPath(), cp.cp.CA().Pin(), cp.cp.CA().Pin())
			return grp.wait()
		},
	}
	sf.register(cmd, "/var/lib/berth/server", "127.0.0.1:7402")
	cmd.Flags().StringVar(&sf.etcdPeerAddr, "etcd-peer-addr", "", "make the embedded etcd a member of a multi-member cluster, listening for its peers on this host:port (mutual TLS with the cluster CA), e.g. 10.0.0.1:7410; empty: a single member on Unix sockets")
	cmd.Flags().StringVar(&sf.etcdAdvertisePeer, "etcd-advertise-peer-addr", "", "host:port the other etcd members reach this one at (default --etcd-peer-addr)")
	cmd.Flags().StringSliceVar(&sf.join, "join", nil, "API addresses of running servers: on its first start this server's etcd member joins their cluster through one (needs --etcd-peer-addr, and --ca-cert, --ca-key and --secrets-key-file copied from a running server)")
	return cmd
}

func newAgentCmd(g *globalOptions) *cobra.Command {
	af := &agentFlags{}
	var metricsAddr string
	var dnsTTL time.Duration
	var upstreams []string
	var stopOnExit bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent: containers through containerd and CNI, probes, node-local DNS",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := g.logger()
			if err := preflight(ctx, af); err != nil {
				return err
			}
			reg := newRegistry()
			grp := newGroup(ctx)
			fromSystem := len(upstreams) == 0
			if fromSystem {
				upstreams, _ = berthdns.UpstreamsFromResolvConf("/etc/resolv.conf")
			}
			acfg, err := af.config(g.server, stopOnExit, dnsTTL, upstreams, reg, logger)
			acfg.DNSUpstreamsFromSystem = fromSystem
			if err != nil {
				return err
			}
			agent, err := nodeagent.New(acfg)
			if err != nil {
				return err
			}
			grp.go_("agent", agent.Run)
			if _, err := serveMetrics(grp, metricsAddr, reg, health.Check{Name: "agent", Fn: agent.CheckReady}); err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			return grp.wait()
		},
	}
	af.register(cmd, "/var/lib/berth/node")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:7403", "Prometheus /metrics, /healthz and /readyz address; empty disables")
	cmd.Flags().DurationVar(&dnsTTL, "dns-ttl", 5*time.Second, "TTL of service records served by node-local DNS")
	cmd.Flags().StringSliceVar(&upstreams, "dns-upstream", nil, "resolvers for names outside berth.internal (default: from /etc/resolv.conf)")
	cmd.Flags().BoolVar(&stopOnExit, "stop-on-exit", false, "stop all containers when the agent stops (default: leave them running to be adopted)")
	return cmd
}

func newGatewayCmd(g *globalOptions) *cobra.Command {
	var listen, xdsAddr, nodeID, metricsAddr, joinToken, caHash, certDir, stateDir string
	var stateMaxAge time.Duration
	gf := &gatewayFlags{}
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a gateway: an HTTP proxy configured over xDS by the control plane",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := g.logger()
			reg := newRegistry()
			grp := newGroup(ctx)
			gcfg := gateway.DefaultConfig()
			gcfg.ListenAddr, gcfg.XDSAddr, gcfg.NodeID, gcfg.Logger, gcfg.Registerer = listen, xdsAddr, nodeID, logger, reg
			gcfg.StateDir, gcfg.StateMaxAge = stateDir, stateMaxAge
			// The gateway's certificate: from --cert-dir, or bought once
			// with a join token from a control plane that presents the
			// pinned CA.
			creds, err := enroll.Load(ctx, enroll.Options{Server: g.server, Role: pki.RoleGateway, Name: nodeID, Dir: certDir, JoinToken: joinToken, CAHash: caHash, Logger: logger})
			if err != nil {
				return err
			}
			gcfg.XDSTLS = creds.ClientTLS()
			grp.go_("gateway certificate", func(ctx context.Context) error { return renewOver(ctx, g.server, creds, logger) })
			accessLog, err := gf.apply(&gcfg)
			if err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			defer accessLog.Close()
			gw, err := gateway.New(gcfg)
			if err != nil {
				return err
			}
			grp.go_("gateway", gw.Run)
			if _, err := serveMetrics(grp, metricsAddr, reg, health.Check{Name: "gateway", Fn: gw.CheckReady}); err != nil {
				grp.cancel()
				_ = grp.wait()
				return err
			}
			fmt.Fprintf(os.Stdout, "berth gateway: http://%s, xds %s, node id %s\n", gw.Addr(), xdsAddr, nodeID)
			return grp.wait()
		},
	}
	host, _ := os.Hostname()
	cmd.AddCommand(newEnvoyBootstrapCmd(), newEnvoyCredentialsCmd(g), newGatewayRevokeCmd(g))
	cmd.Flags().StringVar(&joinToken, "join-token", os.Getenv("BERTH_JOIN_TOKEN"), "join token from `berth token create --role gateway`, needed once (env BERTH_JOIN_TOKEN)")
	cmd.Flags().StringVar(&caHash, "ca-hash", os.Getenv("BERTH_CA_HASH"), "the cluster CA's hash the control plane must present (env BERTH_CA_HASH)")
	cmd.Flags().StringVar(&certDir, "cert-dir", "/var/lib/berth/gateway/pki", "where the gateway keeps its key and certificate")
	cmd.Flags().StringVar(&stateDir, "state-dir", "/var/lib/berth/gateway", "where the gateway keeps the last configuration it accepted, served (marked stale) at its next start until the control plane answers; empty disables")
	cmd.Flags().DurationVar(&stateMaxAge, "state-max-age", gateway.DefaultStateMaxAge, "a saved configuration older than this is not served at start (its addresses may belong to other services by then); 0: any age")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "HTTP address to serve")
	cmd.Flags().StringVar(&xdsAddr, "xds", "127.0.0.1:7401", "control plane xDS address")
	cmd.Flags().StringVar(&nodeID, "node-id", "gateway-"+strings.ToLower(host), "this gateway's xDS node id")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:7404", "Prometheus /metrics, /healthz and /readyz address; empty disables")
	gf.register(cmd)
	return cmd
}

// partCredentials issues a part of this process (`berth dev`'s agent and
// gateway) its certificate from the CA the control plane holds.
func (c *controlPlane) partCredentials(ctx context.Context, role pki.Role, name string) (*enroll.Credentials, error) {
	certPEM, keyPEM, err := c.cp.IssuePart(ctx, role, name)
	if err != nil {
		return nil, err
	}
	return enroll.FromPEM(c.cp.CA().CertPEM, certPEM, keyPEM)
}

// renewOver keeps a part's certificate renewed through the API at server.
func renewOver(ctx context.Context, server string, creds *enroll.Credentials, logger *slog.Logger) error {
	conn, err := pb.Dial(server, creds.ClientTLS())
	if err != nil {
		return err
	}
	defer conn.Close()
	return creds.KeepRenewed(ctx, conn, logger)
}

// gatewaysOf is the xDS server's view of its clients, in the control
// plane's terms.
func gatewaysOf(x *xds.Server) []api.GatewayStatus {
	var out []api.GatewayStatus
	for _, g := range x.Gateways() {
		st := api.GatewayStatus{NodeID: g.NodeID, Address: g.Address, Version: g.Version, State: g.State,
			Delta: g.Delta, Proxyless: g.Proxyless, Connected: g.ConnectedAt.UTC(), Lag: g.Lag}
		if g.LastNack != nil {
			st.LastNack = fmt.Sprintf("%s version %s: %s", g.LastNack.TypeURL, g.LastNack.Version, g.LastNack.Error)
		}
		out = append(out, st)
	}
	return out
}

func newEnvoyBootstrapCmd() *cobra.Command {
	var xdsAddr, nodeID, certDir string
	var adminPort uint32
	var sotw bool
	cmd := &cobra.Command{
		Use:   "envoy-bootstrap",
		Short: "Print an Envoy bootstrap (ADS over mutual TLS to Berth) for running real Envoy as a gateway",
		Long: `Print an Envoy bootstrap for running real Envoy as a Berth gateway.

Berth's xDS serves only gateways with a gateway certificate whose name is
their node id. Get one next to Envoy with

  berth gateway envoy-credentials --node-id ID --cert-dir DIR --server API --join-token T --ca-hash H

which joins once and keeps the certificate in DIR renewed; Envoy reloads
the files when they change.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(certDir)
			if err != nil {
				return err
			}
			opts := []xds.BootstrapOption{xds.WithAdminPort(adminPort), xds.WithTLSFiles(dir)}
			if sotw {
				opts = append(opts, xds.WithStateOfTheWorld())
			}
			b, err := xds.EnvoyBootstrap(xdsAddr, nodeID, opts...)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(append(b, '\n'))
			return err
		},
	}
	cmd.Flags().StringVar(&xdsAddr, "xds", "127.0.0.1:7401", "control plane xDS address")
	cmd.Flags().StringVar(&nodeID, "node-id", "envoy", "the Envoy's xDS node id (the name in its gateway certificate)")
	cmd.Flags().StringVar(&certDir, "cert-dir", "/var/lib/berth/envoy/pki", "directory with the gateway's ca.crt, tls.crt and tls.key (see envoy-credentials)")
	cmd.Flags().Uint32Var(&adminPort, "admin-port", 9901, "Envoy admin port (on 127.0.0.1)")
	cmd.Flags().BoolVar(&sotw, "sotw", false, "state-of-the-world ADS instead of delta")
	return cmd
}

// newEnvoyCredentialsCmd keeps a real Envoy's gateway certificate: it
// joins once with a gateway token and renews the files before expiry.
func newEnvoyCredentialsCmd(g *globalOptions) *cobra.Command {
	var nodeID, certDir, joinToken, caHash string
	var once bool
	cmd := &cobra.Command{
		Use:   "envoy-credentials",
		Short: "Join as a gateway and keep the certificate files a real Envoy reads renewed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			logger := g.logger()
			creds, err := enroll.Load(ctx, enroll.Options{Server: g.server, Role: pki.RoleGateway, Name: nodeID, Dir: certDir, JoinToken: joinToken, CAHash: caHash, Logger: logger})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "berth: gateway %s's certificate is in %s (expires %s)\n", nodeID, certDir, creds.KeyPair.Leaf().NotAfter.Format(time.RFC3339))
			if once {
				return nil
			}
			return renewOver(ctx, g.server, creds, logger)
		},
	}
	cmd.Flags().StringVar(&nodeID, "node-id", "envoy", "the Envoy's xDS node id")
	cmd.Flags().StringVar(&certDir, "cert-dir", "/var/lib/berth/envoy/pki", "where to keep ca.crt, tls.crt and tls.key")
	cmd.Flags().StringVar(&joinToken, "join-token", os.Getenv("BERTH_JOIN_TOKEN"), "join token from `berth token create --role gateway`, needed once (env BERTH_JOIN_TOKEN)")
	cmd.Flags().StringVar(&caHash, "ca-hash", os.Getenv("BERTH_CA_HASH"), "the cluster CA's hash the control plane must present (env BERTH_CA_HASH)")
	cmd.Flags().BoolVar(&once, "once", false, "join (or check the files) and exit instead of renewing in the foreground")
	return cmd
}

// revisionLoads adapts the xDS server's load reports to the controllers.
type revisionLoads struct{ x *xds.Server }

func (l revisionLoads) RevisionLoad(namespace, service string, revision int64, window time.Duration) controller.RevisionLoad {
	st := l.x.Load(namespace, service, revision, window)
	return controller.RevisionLoad{Requests: int64(st.Requests), Errors: int64(st.Errors), P99: st.LatencyP99, LatencySamples: int64(st.LatencySamples), Impossible: int64(st.Impossible)}
}

// adminToken is the token of the admin CLI configuration at path ("" if
// none).
func adminToken(path string) string {
	if path == "" {
		return ""
	}
	ac, err := controlplane.ReadAdminConfig(path)
	if err != nil {
		return ""
	}
	return ac.Token
}
