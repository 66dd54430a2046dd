package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/berth-dev/berth/discovery"
)

// Config configures a Server.
type Config struct {
	// Addr is where the ADS gRPC server listens, e.g. "127.0.0.1:0".
	Addr string
	// ListenerPort is the port of the HTTP Listener handed to Envoy.
	ListenerPort uint32
	// Translate overrides the translation options; ListenerPort above
	// wins over Translate.ListenerPort when set. Zero means defaults.
	Translate TranslateOptions
	// Logger gets the server's own records; nil discards them.
	Logger *slog.Logger
	// Registerer receives the berth_xds_ metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// ShutdownGrace bounds how long Run waits for streams to end.
	ShutdownGrace time.Duration
}

// DefaultConfig returns a Config listening on an ephemeral loopback port.
func DefaultConfig() Config {
	return Config{
		Addr:          "127.0.0.1:0",
		ListenerPort:  8080,
		Translate:     DefaultTranslateOptions(),
		ShutdownGrace: 5 * time.Second,
	}
}

// TypeURLs are the resource types Berth serves, in the order Envoy wants
// them applied over ADS (clusters before their endpoints, listeners before
// their routes).
var TypeURLs = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// ErrNacked is returned by WaitForAck when a gateway rejected the version
// waited for (or a later one).
var ErrNacked = errors.New("xds: gateway rejected the configuration")

// Server serves published resources over ADS and records what each gateway
// ACKed. It is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	lis     net.Listener
	cache   cachev3.SnapshotCache
	metrics *metrics

	runOnce sync.Once

	mu        sync.Mutex
	published uint64 // last published snapshot version; 0 = none
	streams   map[int64]*streamState
	changed   chan struct{} // closed and replaced whenever ACK state moves
}

// streamState is what one ADS stream (one connected gateway) did.
type streamState struct {
	nodeID      string
	connectedAt time.Time
	subscribed  map[string]bool
	acked       map[string]string     // type URL -> version
	sent        map[string]sentState  // type URL -> last response
	nacks       map[string]NackStatus // type URL -> last NACK
	lastNack    *NackStatus
}

type sentState struct{ nonce, version string }

// NackStatus is one rejected response.
type NackStatus struct {
	TypeURL string
	// Version is the version the gateway rejected.
	Version string
	Error   string
	At      time.Time
}

// GatewayStatus is one connected ADS stream as seen by the server.
type GatewayStatus struct {
	NodeID      string
	StreamID    int64
	ConnectedAt time.Time
	// Acked maps each subscribed type URL to the last version the gateway
	// ACKed ("" if none yet).
	Acked map[string]string
	// LastNack is the most recent rejection on this stream, if any. It stays
	// after later ACKs: it is history, not state.
	LastNack *NackStatus
}

// nodeKey is the one snapshot key: every gateway gets the same resources.
const nodeKey = "berth"

type allNodes struct{}

func (allNodes) ID(*core.Node) string { return nodeKey }

// New binds cfg.Addr and prepares the cache. Serving starts with Run.
func New(cfg Config) (*Server, error) {
	def := DefaultConfig()
	if cfg.Addr == "" {
		cfg.Addr = def.Addr
	}
	if cfg.Translate == (TranslateOptions{}) {
		cfg.Translate = def.Translate
	}
	if cfg.ListenerPort != 0 {
		cfg.Translate.ListenerPort = cfg.ListenerPort
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = def.ShutdownGrace
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "xds")
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("xds: listen %s: %w", cfg.Addr, err)
	}
	s := &Server{
		cfg:     cfg,
		log:     logger,
		lis:     lis,
		metrics: m,
		streams: map[int64]*streamState{},
		changed: make(chan struct{}),
	}
	s.cache = cachev3.NewSnapshotCache(true, allNodes{}, slogAdapter(logger))
	return s, nil
}

// Addr is the address the ADS server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Update translates snap and publishes it under its version.
func (s *Server) Update(snap *discovery.Snapshot) error {
	start := time.Now()
	res, err := Translate(snap, s.cfg.Translate)
	s.metrics.translateSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.publishErrors.Inc()
		return err
	}
	for _, w := range res.Warnings {
		s.log.Warn("snapshot part left out", "version", snap.Version, "warning", w)
	}
	return s.Publish(snap.Version, res)
}

// Publish offers res to every gateway as version. Every resource must pass
// ValidateAll and the whole set Consistent, or nothing is published.
// Versions must grow; publishing the current version again is a no-op.
// Publish takes resources from anywhere (Update uses Translate); tests use
// it to hand gateways something Translate would never produce.
func (s *Server) Publish(version uint64, res *Resources) error {
	if err := s.publish(version, res); err != nil {
		s.metrics.publishErrors.Inc()
		return err
	}
	return nil
}

func (s *Server) publish(version uint64, res *Resources) error {
	snap, err := cacheSnapshot(version, res)
	if err != nil {
		return fmt.Errorf("xds: publish version %d: %w", version, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case version == s.published:
		return nil
	case version < s.published:
		return fmt.Errorf("xds: publish version %d: older than published version %d", version, s.published)
	}
	// Under s.mu so two publishers cannot reorder versions in the cache.
	if err := s.cache.SetSnapshot(context.Background(), nodeKey, snap); err != nil {
		return fmt.Errorf("xds: publish version %d: %w", version, err)
	}
	s.published = version
	s.metrics.publishedVersion.Set(float64(version))
	s.notifyLocked()
	s.log.Debug("published", "version", version,
		"listeners", len(res.Listeners), "routes", len(res.Routes),
		"clusters", len(res.Clusters), "endpoints", len(res.Endpoints))
	return nil
}

// Version is the last published version, 0 before the first.
func (s *Server) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published
}

// Run serves ADS until ctx ends, then stops the gRPC server. It may be
// called once.
func (s *Server) Run(ctx context.Context) error {
	err := errors.New("xds: Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx) })
	return err
}

func (s *Server) run(ctx context.Context) error {
	xdsServer := serverv3.NewServer(ctx, s.cache, s.callbacks())
	gs := grpc.NewServer(
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xdsServer)

	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(s.lis) }()
	s.log.Info("serving ADS", "addr", s.Addr())

	select {
	case err := <-serveErr:
		return fmt.Errorf("xds: serve: %w", err)
	case <-ctx.Done():
	}
	// The go-control-plane server ends its streams when ctx ends, so a
	// graceful stop normally returns at once.
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownGrace):
		gs.Stop()
		<-stopped
	}
	<-serveErr
	return nil
}

// Gateways lists the connected ADS streams by node id.
func (s *Server) Gateways() []GatewayStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]GatewayStatus, 0, len(s.streams))
	for id, st := range s.streams {
		g := GatewayStatus{NodeID: st.nodeID, StreamID: id, ConnectedAt: st.connectedAt, Acked: map[string]string{}}
		for t := range st.subscribed {
			g.Acked[t] = st.acked[t]
		}
		if st.lastNack != nil {
			n := *st.lastNack
			g.LastNack = &n
		}
		out = append(out, g)
	}
	sortGateways(out)
	return out
}

// WaitForAck returns nil once every connected gateway has ACKed version (or
// a later one) for every type it subscribed to, or at once when no gateway
// is connected. It returns an error wrapping ErrNacked when a gateway
// rejected version or a later one for a type it has not ACKed since, and
// ctx's error when ctx ends first.
func (s *Server) WaitForAck(ctx context.Context, version uint64) error {
	for {
		s.mu.Lock()
		done, err := s.ackedLocked(version)
		changed := s.changed
		s.mu.Unlock()
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("xds: wait for ack of version %d: %w", version, ctx.Err())
		case <-changed:
		}
	}
}

func (s *Server) ackedLocked(version uint64) (bool, error) {
	for _, st := range s.streams {
		if len(st.subscribed) == 0 {
			return false, nil // connected, not yet subscribed
		}
		for t := range st.subscribed {
			if parseVersion(st.acked[t]) >= version {
				continue
			}
			if n, ok := st.nacks[t]; ok && parseVersion(n.Version) >= version {
				return false, fmt.Errorf("%w: node %q rejected %s version %s: %s", ErrNacked, st.nodeID, n.TypeURL, n.Version, n.Error)
			}
			return false, nil
		}
	}
	return true, nil
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// cacheSnapshot checks res (ValidateAll on each resource, Consistent on
// the whole) and packs it as a go-control-plane snapshot.
func cacheSnapshot(version uint64, res *Resources) (*cachev3.Snapshot, error) {
	if res == nil {
		return nil, errors.New("nil resources")
	}
	if err := res.Validate(); err != nil {
		return nil, err
	}
	byType := map[resource.Type][]types.Resource{
		resource.ListenerType: nil, resource.RouteType: nil, resource.ClusterType: nil, resource.EndpointType: nil,
	}
	for _, r := range res.Listeners {
		byType[resource.ListenerType] = append(byType[resource.ListenerType], r)
	}
	for _, r := range res.Routes {
		byType[resource.RouteType] = append(byType[resource.RouteType], r)
	}
	for _, r := range res.Clusters {
		byType[resource.ClusterType] = append(byType[resource.ClusterType], r)
	}
	for _, r := range res.Endpoints {
		byType[resource.EndpointType] = append(byType[resource.EndpointType], r)
	}
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(version, 10), byType)
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("inconsistent: %w", err)
	}
	return snap, nil
}

func parseVersion(v string) uint64 {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

func slogAdapter(l *slog.Logger) cplog.Logger {
	logAt := func(level slog.Level) func(string, ...any) {
		return func(f string, a ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, fmt.Sprintf(f, a...))
			}
		}
	}
	// The cache's Info records are per-request chatter: Debug for us.
	return cplog.LoggerFuncs{
		DebugFunc: logAt(slog.LevelDebug),
		InfoFunc:  logAt(slog.LevelDebug),
		WarnFunc:  logAt(slog.LevelWarn),
		ErrorFunc: logAt(slog.LevelError),
	}
}
