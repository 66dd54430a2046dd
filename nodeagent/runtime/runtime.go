// Package runtime is the node agent's only door to containerd and CNI: it
// imports and pulls images, creates network namespaces and attaches them to
// the node bridge through the CNI bridge, host-local and portmap plugins,
// runs containers as containerd tasks, restarts and stops them, lists them
// for adoption after an agent restart, and reports task exits.
//
// It knows nothing of the control plane: it neither reads desired state nor
// reports status; the agent loop decides what to run and calls this package.
//
// State on disk (Config.StateDir):
//
//	ipam/                      host-local IPAM dataDir (one file per IP)
//	containers/<id>/resolv.conf  bind-mounted read-only at /etc/resolv.conf
//	containers/<id>/hosts        bind-mounted read-only at /etc/hosts
//	containers/<id>/attachment.json  netns path, IP and port mappings: what
//	                           CNI DEL needs after a crash
//	containers/<id>/log        the task's stdout and stderr
//
// Network namespaces are bind mounts at /run/netns/<namespace>-<id>
// (Config.NetNSDir), so `ip netns exec` works on them; New makes that
// directory a shared mount point of its own, as `ip netns add` does.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-dev/berth/nodeagent/logs"

	containerd "github.com/containerd/containerd/v2/client"
	gocni "github.com/containerd/go-cni"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// ErrContainerdUnavailable is returned by New when containerd cannot be
// reached on its socket.
var ErrContainerdUnavailable = errors.New("containerd unavailable")

// ErrCNIPluginsMissing is returned by New when a required CNI plugin binary
// is not found in Config.CNIPluginDirs.
var ErrCNIPluginsMissing = errors.New("cni plugins missing")

// ErrNotFound is returned when an instance has no container.
var ErrNotFound = errors.New("container not found")

// Labels the runtime sets on every container it creates.
const (
	LabelInstance  = "berth.instance"
	LabelService   = "berth.service"
	LabelNamespace = "berth.namespace"
	LabelRevision  = "berth.revision"
	// LabelIP and LabelNetNS record the network attachment on the container
	// itself, so List can report the IP without reading StateDir.
	LabelIP    = "berth.ip"
	LabelNetNS = "berth.netns"
)

// requiredPlugins are the CNI plugins the network config uses.
var requiredPlugins = []string{"bridge", "host-local", "portmap", "loopback"}

// Config configures a Runtime. Start from DefaultConfig.
type Config struct {
	// Socket is containerd's GRPC socket.
	Socket string
	// Namespace is the containerd namespace all Berth containers, images
	// and snapshots live in.
	Namespace string
	// StateDir holds resolv.conf and hosts files, persisted CNI attachments,
	// task logs and the host-local IPAM dataDir. Separate runtimes must use
	// separate StateDirs so that they never share IP allocations.
	StateDir string
	// CNIPluginDirs are searched for the CNI plugin binaries.
	CNIPluginDirs []string
	// NetworkName is the CNI network name (also the host-local IPAM
	// subdirectory and part of the iptables chain names).
	NetworkName string
	// BridgeName is the Linux bridge the CNI bridge plugin creates.
	BridgeName string
	// HostGuard, when set, installs iptables rules that keep containers
	// from the node's own ports and the control plane's (guard.go); nil
	// takes any guard of this bridge out.
	HostGuard *HostGuard
	// Subnet is the node's pod subnet; the bridge gets its first address.
	Subnet string
	// ClusterCIDR is the whole pod network. When set, pod traffic to it
	// keeps its source address and only traffic leaving it is masqueraded
	// (rules installed by New); when empty, the CNI bridge masquerades
	// everything that leaves the node.
	ClusterCIDR string
	// DNSServers are written to each container's resolv.conf; empty means
	// the bridge address (where the node-local DNS listens).
	DNSServers []string
	// SearchDomains are written to each container's resolv.conf unless the
	// ContainerSpec brings its own.
	SearchDomains []string
	// DNSOptions are written as the resolv.conf "options" line.
	DNSOptions []string
	// NetNSDir holds the network namespaces' bind mounts; default
	// /run/netns, where `ip netns` finds them.
	NetNSDir string
	// Snapshotter is the containerd snapshotter; default overlayfs.
	Snapshotter string
	// Logs keeps the containers' output (default: a store in
	// StateDir/logs with its default sizes).
	Logs *logs.Store
	// ConnectTimeout bounds New's check that containerd answers.
	ConnectTimeout time.Duration
	Logger         *slog.Logger
}

// DefaultConfig returns the configuration of a single-node agent.
func DefaultConfig() Config {
	return Config{
		Socket:        "/run/containerd/containerd.sock",
		Namespace:     "berth",
		StateDir:      "/var/lib/berth/node",
		CNIPluginDirs: []string{"/usr/lib/cni", "/opt/cni/bin"},
		NetworkName:   "berth",
		BridgeName:    "berth0",
		Subnet:        "10.213.0.0/24",
		SearchDomains: []string{"default.svc.berth.internal", "svc.berth.internal", "berth.internal"},
		// timeout:1: a query this node's DNS does not answer (its agent
		// restarting; the kernel rate-limits the port-unreachable
		// answers) moves to the fallback nameserver after a second, not
		// after the resolvers' default five, which used a lookup's whole
		// budget.
		DNSOptions:     []string{"ndots:5", "timeout:1", "attempts:2"},
		NetNSDir:       "/run/netns",
		Snapshotter:    "overlayfs",
		ConnectTimeout: 3 * time.Second,
	}
}

// Runtime runs Berth containers on one node. It is safe for concurrent use;
// operations on the same instance are serialised.
type Runtime struct {
	cfg     Config
	log     *slog.Logger
	client  *containerd.Client
	cni     gocni.CNI
	subnet  netip.Prefix
	gateway netip.Addr

	logs *logs.Store

	mu    sync.Mutex
	locks map[string]*instanceLock

	// dnsFallback is another node's DNS, the second nameserver of every
	// container ("": none; SetDNSFallback).
	dnsMu       sync.Mutex
	dnsFallback string
}

type instanceLock struct {
	mu   sync.Mutex
	refs int
}

// New connects to containerd, checks the CNI plugins and prepares StateDir.
// Unset Config fields take their DefaultConfig values.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg = withDefaults(cfg)
	subnet, err := netip.ParsePrefix(cfg.Subnet)
	if err != nil || !subnet.Addr().Is4() {
		return nil, fmt.Errorf("runtime: subnet %q: must be an IPv4 CIDR", cfg.Subnet)
	}
	subnet = subnet.Masked()
	if subnet.Bits() > 30 {
		return nil, fmt.Errorf("runtime: subnet %s is too small", subnet)
	}
	if len(cfg.BridgeName) > 15 {
		return nil, fmt.Errorf("runtime: bridge name %q is longer than 15 characters", cfg.BridgeName)
	}
	if err := checkPlugins(cfg.CNIPluginDirs); err != nil {
		return nil, err
	}
	client, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := ensureNetNSDir(cfg.NetNSDir); err != nil {
		client.Close()
		return nil, fmt.Errorf("runtime: %w", err)
	}
	r := &Runtime{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "runtime"),
		client:  client,
		subnet:  subnet,
		gateway: subnet.Addr().Next(),
		locks:   map[string]*instanceLock{},
		logs:    cfg.Logs,
	}
	if r.logs == nil {
		lc := logs.DefaultConfig()
		lc.Dir = filepath.Join(cfg.StateDir, "logs")
		if r.logs, err = logs.New(lc); err != nil {
			client.Close()
			return nil, fmt.Errorf("runtime: %w", err)
		}
	}
	if len(r.cfg.DNSServers) == 0 {
		r.cfg.DNSServers = []string{r.gateway.String()}
	}
	for _, dir := range []string{cfg.StateDir, r.containersDir(), r.ipamDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			client.Close()
			return nil, fmt.Errorf("runtime: state dir: %w", err)
		}
	}
	// Container logs and files are root's alone (also in a state dir
	// made before this rule).
	if err := os.Chmod(r.containersDir(), 0o700); err != nil {
		client.Close()
		return nil, fmt.Errorf("runtime: state dir: %w", err)
	}
	if r.cni, err = r.newCNI(); err != nil {
		client.Close()
		return nil, err
	}
	if cfg.ClusterCIDR != "" {
		if err := r.ensureMasquerade(ctx); err != nil {
			client.Close()
			return nil, err
		}
	}
	if cfg.HostGuard != nil {
		if err := r.ensureGuard(ctx); err != nil {
			client.Close()
			return nil, err
		}
	} else {
		r.removeGuard(ctx)
	}
	return r, nil
}

func withDefaults(cfg Config) Config {
	def := DefaultConfig()
	if cfg.Socket == "" {
		cfg.Socket = def.Socket
	}
	if cfg.Namespace == "" {
		cfg.Namespace = def.Namespace
	}
	if cfg.StateDir == "" {
		cfg.StateDir = def.StateDir
	}
	if len(cfg.CNIPluginDirs) == 0 {
		cfg.CNIPluginDirs = def.CNIPluginDirs
	}
	if cfg.NetworkName == "" {
		cfg.NetworkName = def.NetworkName
	}
	if cfg.BridgeName == "" {
		cfg.BridgeName = def.BridgeName
	}
	if cfg.Subnet == "" {
		cfg.Subnet = def.Subnet
	}
	if cfg.SearchDomains == nil {
		cfg.SearchDomains = def.SearchDomains
	}
	if cfg.DNSOptions == nil {
		cfg.DNSOptions = def.DNSOptions
	}
	if cfg.NetNSDir == "" {
		cfg.NetNSDir = def.NetNSDir
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = def.Snapshotter
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = def.ConnectTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

const installHint = "install and start it: apt-get install containerd runc containernetworking-plugins; then run `containerd &` (or systemctl start containerd)"

func connect(ctx context.Context, cfg Config) (*containerd.Client, error) {
	if _, err := os.Stat(cfg.Socket); err != nil {
		return nil, fmt.Errorf("%w: socket %s: %v; %s", ErrContainerdUnavailable, cfg.Socket, err, installHint)
	}
	client, err := containerd.New(cfg.Socket,
		containerd.WithDefaultNamespace(cfg.Namespace),
		containerd.WithTimeout(cfg.ConnectTimeout),
		// After a containerd restart the connection is back within a
		// second: the client's default backoff grows to ConnectTimeout,
		// and the exit feed waits for the connection (Exits).
		containerd.WithExtraDialOpts([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 800 * time.Millisecond},
			MinConnectTimeout: cfg.ConnectTimeout,
		})}))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v; %s", ErrContainerdUnavailable, cfg.Socket, err, installHint)
	}
	vctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if _, err := client.Version(vctx); err != nil {
		client.Close()
		return nil, fmt.Errorf("%w: %s: %v; %s", ErrContainerdUnavailable, cfg.Socket, err, installHint)
	}
	return client, nil
}

func checkPlugins(dirs []string) error {
	var missing []string
	for _, p := range requiredPlugins {
		found := false
		for _, d := range dirs {
			if st, err := os.Stat(filepath.Join(d, p)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %v not found in %v; install them: apt-get install containernetworking-plugins (installs to /usr/lib/cni)", ErrCNIPluginsMissing, missing, dirs)
	}
	return nil
}

// GatewayIP is the bridge address, the first host of Subnet: containers'
// default gateway and where the node-local DNS listens.
func (r *Runtime) GatewayIP() netip.Addr { return r.gateway }

// Subnet is the node pod subnet.
func (r *Runtime) Subnet() netip.Prefix { return r.subnet }

// Close closes the containerd connection. Containers keep running.
func (r *Runtime) Close() error { return r.client.Close() }

// lock serialises operations on one instance.
func (r *Runtime) lock(id string) func() {
	r.mu.Lock()
	l := r.locks[id]
	if l == nil {
		l = &instanceLock{}
		r.locks[id] = l
	}
	l.refs++
	r.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		r.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(r.locks, id)
		}
		r.mu.Unlock()
	}
}

func (r *Runtime) containersDir() string { return filepath.Join(r.cfg.StateDir, "containers") }
func (r *Runtime) containerDir(id string) string {
	return filepath.Join(r.containersDir(), id)
}
func (r *Runtime) ipamDir() string { return filepath.Join(r.cfg.StateDir, "ipam") }

// Logs is the store of the containers' output.
func (r *Runtime) Logs() *logs.Store { return r.logs }

// ioDir holds the FIFOs of a container's task and execs.
func (r *Runtime) ioDir(instanceID string) string {
	return filepath.Join(r.containerDir(instanceID), "io")
}
