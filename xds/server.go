package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrsgrpc "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
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
	// StaleAfter is how long a client may stay behind the published
	// version before it is STALE: shown so, and no longer waited for by
	// drains and canary steps (one client that never ACKs must not hold
	// them all). Default 10s.
	StaleAfter time.Duration
	// LoadWindow is how much load-report history is kept per revision
	// (in one-second buckets); Load answers for windows up to it.
	LoadWindow time.Duration
	// LoadReportInterval is how often gateways are asked to send load
	// reports over LRS.
	LoadReportInterval time.Duration
	// PushConcurrency bounds the responses of PushThrottleBytes or more in
	// flight at once, each until its gateway answers it (throttle.go).
	// Defaults: 64 responses of 16 KiB (one service's hundred endpoints
	// changing is about 7 KiB: never held).
	PushConcurrency, PushThrottleBytes int
	// PushAnswerWait is how long a throttled response holds its slot
	// without its gateway's answer (one that never answers must not hold
	// the others back). Default 5s.
	PushAnswerWait time.Duration
}

// DefaultConfig returns a Config listening on an ephemeral loopback port.
func DefaultConfig() Config {
	return Config{
		Addr:               "127.0.0.1:0",
		ListenerPort:       8080,
		Translate:          DefaultTranslateOptions(),
		ShutdownGrace:      5 * time.Second,
		StaleAfter:         10 * time.Second,
		LoadWindow:         60 * time.Second,
		LoadReportInterval: time.Second,
		PushConcurrency:    64,
		PushThrottleBytes:  16 << 10,
		PushAnswerWait:     5 * time.Second,
	}
}

// TypeURLs are the resource types Berth serves, in the order Envoy wants
// them applied over ADS (clusters before their endpoints, listeners before
// their routes).
var TypeURLs = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// ErrNacked is returned by WaitForAck when a gateway rejected the version
// waited for (or a later one).
var ErrNacked = errors.New("xds: gateway rejected the configuration")

// Server serves published resources over ADS, state of the world and
// incremental (delta), records what each client ACKed, and receives load
// reports. It is safe for concurrent use.
//
// Two caches hold the same resource pointers: a go-control-plane
// SnapshotCache answers state-of-the-world streams (one snapshot per view,
// each type versioned by the last snapshot that changed it, so a type that
// did not change is not re-sent), and one deltaCache per type (a change
// log, deltacache.go) answers delta streams -- Berth's gateways use delta
// by default -- with only the resources that changed.
type Server struct {
	cfg   Config
	log   *slog.Logger
	lis   net.Listener
	auth  *Auth
	slots streamSlots
	// knownClusters and prevClusters are the cluster names of the
	// current and the previous published version (noteClusters).
	knownClusters, prevClusters atomic.Pointer[map[string]bool]
	sotw                        cachev3.SnapshotCache
	delta                       map[string]*deltaCache // gateway view, by type URL
	metrics                     *metrics
	loads                       *loadStore

	runOnce sync.Once
	// pushSlots: one token per large response in flight (throttle.go).
	pushSlots chan struct{}

	// pubMu orders publishes against delta watch creation, so that a
	// watch opened with nothing to send proves its client holds exactly
	// the published version.
	pubMu        sync.RWMutex
	current      *translation                // under pubMu
	typeVersions [numViews]map[string]uint64 // under pubMu: last version that changed each type
	items        [numSets]map[string]types.ResourceWithTTL

	mu        sync.Mutex
	published uint64
	publishes []publishRecord               // recent publishes, oldest first
	history   [numViews]map[string][]uint64 // versions that changed each type, bounded
	streams   map[streamKey]*streamState
	deltaReqs map[*discoverygrpc.DeltaDiscoveryRequest]streamKey
	changed   chan struct{} // closed and replaced whenever ACK state moves
}

// streamKey names a stream: go-control-plane numbers state-of-the-world
// and delta streams separately.
type streamKey struct {
	delta bool
	id    int64
}

// historyLimit bounds the per-type change history and the publish log.
const historyLimit = 1024

type publishRecord struct {
	version uint64
	at      time.Time
}

// streamState is what one ADS stream (one connected client) did.
type streamState struct {
	nodeID      string
	address     string
	delta       bool
	view        view
	connectedAt time.Time
	types       map[string]*typeState
	lastNack    *NackStatus
	pendingReq  *discoverygrpc.DeltaDiscoveryRequest
}

// typeState is one subscribed type on one stream.
type typeState struct {
	sent sentState
	nack *NackStatus // the last NACK of this type; history

	// state of the world: the version_info last ACKed.
	acked string

	// delta: applied is the snapshot version whose resources of this type
	// the client is known to hold; blocked is set by a NACK until the next
	// ACK; current says the request being handled proves the client has
	// seen every response sent; watch is the open watch, if any.
	applied   uint64
	blocked   bool
	nackNonce string // the response a delta NACK rejected
	current   bool
	watch     *deltaWatch
}

func (st *streamState) typeState(t string) *typeState {
	ts := st.types[t]
	if ts == nil {
		ts = &typeState{}
		st.types[t] = ts
	}
	return ts
}

type sentState struct {
	nonce   string
	version string // snapshot version (SotW: the type's version_info)
}

// NackStatus is one rejected response.
type NackStatus struct {
	TypeURL string
	// Version is the snapshot version the gateway rejected.
	Version string
	Error   string
	At      time.Time
}

// Gateway sync states, as `berth get gateways` shows them.
const (
	StateSynced  = "SYNCED"  // runs the last published version
	StateSyncing = "SYNCING" // behind for less than StaleAfter, nothing rejected
	StateStale   = "STALE"   // behind for StaleAfter or longer: not waited for
	StateNacked  = "NACKED"  // rejected a version it has not since replaced
)

// GatewayStatus is one connected xDS stream as seen by the server.
type GatewayStatus struct {
	NodeID   string
	StreamID int64
	// Address is the client's address as the gRPC server saw it.
	Address     string
	ConnectedAt time.Time
	// Delta is true for an incremental (delta) stream, false for state of
	// the world.
	Delta bool
	// Proxyless is true for a proxyless gRPC client (served API listeners).
	Proxyless bool
	// Acked maps each subscribed type URL to the snapshot version the
	// client is known to run for that type ("" if none yet). A client
	// that ACKed the current resources of a type runs the published
	// version even if that version did not change the type.
	Acked map[string]string
	// Version is the snapshot version the client runs for every type it
	// subscribed to (the least of Acked), 0 if none yet.
	Version uint64
	// State is StateSynced, StateStale or StateNacked.
	State string
	// Lag is how long ago the oldest published version the client does not
	// run was published; 0 when synced.
	Lag time.Duration
	// LastNack is the most recent rejection on this stream, if any. It stays
	// after later ACKs: it is history, not state.
	LastNack *NackStatus
}

// Snapshot keys of the state-of-the-world cache, one per view.
var viewKeys = [numViews]string{viewGateway: "berth", viewProxyless: "berth-proxyless"}

// nodeView tells a proxyless gRPC client (grpc-go, -java, C++ all name
// themselves "gRPC ..." in user_agent_name) from a proxy.
func nodeView(n *core.Node) view {
	if strings.HasPrefix(n.GetUserAgentName(), "gRPC") {
		return viewProxyless
	}
	return viewGateway
}

type viewHash struct{}

func (viewHash) ID(n *core.Node) string { return viewKeys[nodeView(n)] }

// New binds cfg.Addr and prepares the caches. Serving starts with Run.
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
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = def.StaleAfter
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = def.ShutdownGrace
	}
	if cfg.LoadWindow <= 0 {
		cfg.LoadWindow = def.LoadWindow
	}
	if cfg.LoadReportInterval <= 0 {
		cfg.LoadReportInterval = def.LoadReportInterval
	}
	if cfg.PushConcurrency <= 0 {
		cfg.PushConcurrency = def.PushConcurrency
	}
	if cfg.PushThrottleBytes <= 0 {
		cfg.PushThrottleBytes = def.PushThrottleBytes
	}
	if cfg.PushAnswerWait <= 0 {
		cfg.PushAnswerWait = def.PushAnswerWait
	}
	if err := cfg.Translate.check(); err != nil {
		return nil, err
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
	cpLog := slogAdapter(logger)
	s := &Server{
		cfg:       cfg,
		log:       logger,
		lis:       lis,
		metrics:   m,
		loads:     newLoadStore(cfg.LoadWindow, time.Second),
		sotw:      cachev3.NewSnapshotCache(true, viewHash{}, cpLog),
		delta:     map[string]*deltaCache{},
		streams:   map[streamKey]*streamState{},
		deltaReqs: map[*discoverygrpc.DeltaDiscoveryRequest]streamKey{},
		changed:   make(chan struct{}),
		pushSlots: make(chan struct{}, cfg.PushConcurrency),
	}
	for _, t := range TypeURLs {
		s.delta[t] = newDeltaCache(t)
	}
	for v := range s.typeVersions {
		s.typeVersions[v] = map[string]uint64{}
		s.history[v] = map[string][]uint64{}
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newGatewayCollector(s)); err != nil {
			lis.Close()
			return nil, fmt.Errorf("xds: metrics: %w", err)
		}
	}
	return s, nil
}

// Addr is the address the ADS server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Update translates snap and publishes it under its version. Only the
// services that differ from the last published snapshot are translated
// again, and only the resources that changed are validated and sent.
func (s *Server) Update(snap *discovery.Snapshot) error {
	if snap == nil {
		s.metrics.publishErrors.Inc()
		return errors.New("xds: update: nil snapshot")
	}
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	start := time.Now()
	next, err := translateNext(s.current, snap, s.cfg.Translate)
	s.metrics.translateSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.publishErrors.Inc()
		return err
	}
	if err := s.publishLocked(next); err != nil {
		s.metrics.publishErrors.Inc()
		return err
	}
	return nil
}

// Publish offers res to every client as version. Every new or changed
// resource must pass ValidateAll and the whole set must be consistent, or
// nothing is published. Versions must grow; publishing the current
// version again is a no-op. Publish takes resources from anywhere (Update
// uses Translate); tests use it to hand gateways something Translate would
// never produce.
func (s *Server) Publish(version uint64, res *Resources) error {
	if res == nil {
		s.metrics.publishErrors.Inc()
		return fmt.Errorf("xds: publish version %d: nil resources", version)
	}
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	if err := s.publishLocked(translationFromResources(version, res, s.current)); err != nil {
		s.metrics.publishErrors.Inc()
		return err
	}
	return nil
}

// publishLocked checks next against the current translation and hands what
// changed to both caches. The caller holds pubMu.
func (s *Server) publishLocked(next *translation) error {
	version := next.version
	s.mu.Lock()
	published := s.published
	s.mu.Unlock()
	switch {
	case version == published && s.current != nil:
		return nil
	case version < published:
		return fmt.Errorf("xds: publish version %d: older than published version %d", version, published)
	}
	ch := diff(s.current, next)
	if err := validateChanged(&ch); err != nil {
		return fmt.Errorf("xds: publish version %d: %w", version, err)
	}
	if err := checkConsistent(next, &ch); err != nil {
		return fmt.Errorf("xds: publish version %d: %w", version, err)
	}
	s.noteClusters(next)
	first := s.current == nil
	for _, w := range next.warningsIfNew(s.current) {
		s.log.Warn("snapshot part left out", "version", version, "warning", w)
	}

	// State of the world: one snapshot per view; a type keeps its version
	// (and is not re-sent) unless it changed.
	var changedTypes [numViews][]string
	for set := range ch {
		if first || !ch[set].empty() {
			s.items[set] = withTTL(next.sets[set])
		}
	}
	for v := range numViews {
		snap := &cachev3.Snapshot{}
		for t, set := range viewSets[v] {
			if first || !ch[set].empty() {
				s.typeVersions[v][t] = version
				changedTypes[v] = append(changedTypes[v], t)
			}
			snap.Resources[cachev3.GetResponseType(t)] = cachev3.Resources{
				Version: strconv.FormatUint(s.typeVersions[v][t], 10),
				Items:   s.items[set],
			}
		}
		if err := s.sotw.SetSnapshot(context.Background(), viewKeys[v], snap); err != nil {
			return fmt.Errorf("xds: publish version %d: %w", version, err)
		}
	}

	// Delta: only what changed, gateway view. Watches a change does not
	// concern stay open: their clients already run this version.
	var answered, open []*deltaWatch
	// In Envoy's order (clusters, endpoints, listeners, routes): the
	// responses go out on each stream in the order they are made here, so
	// a route never reaches a gateway before the cluster and endpoints it
	// sends to (viewSets is a map: its order is random).
	for _, t := range TypeURLs {
		set, ok := viewSets[viewGateway][t]
		if !ok {
			continue
		}
		dc := s.delta[t]
		dc.mu.Lock()
		if first || !ch[set].empty() {
			a, o, err := dc.update(version, ch[set].updated, ch[set].removed)
			if err != nil {
				dc.mu.Unlock()
				return fmt.Errorf("xds: publish version %d: %w", version, err)
			}
			answered, open = append(answered, a...), append(open, o...)
		} else {
			open = append(open, dc.openWatches()...)
		}
		dc.mu.Unlock()
		s.metrics.deltaUpdated.WithLabelValues(typeLabel(t)).Add(float64(len(ch[set].updated)))
		s.metrics.deltaRemoved.WithLabelValues(typeLabel(t)).Add(float64(len(ch[set].removed)))
	}
	s.current = next

	s.mu.Lock()
	defer s.mu.Unlock()
	s.published = version
	s.publishes = appendBounded(s.publishes, publishRecord{version: version, at: time.Now()})
	for v := range numViews {
		for _, t := range changedTypes[v] {
			s.history[v][t] = appendBounded(s.history[v][t], version)
		}
	}
	for _, w := range answered {
		if w.ts != nil && w.ts.watch == w {
			w.ts.watch = nil
		}
	}
	for _, w := range open {
		if w.ts != nil && w.current {
			w.ts.applied = version
		}
	}
	s.metrics.publishedVersion.Set(float64(version))
	s.notifyLocked()
	s.log.Debug("published", "version", version,
		"clusters", len(next.sets[setClusters]), "endpoints", len(next.sets[setEndpoints]),
		"updated_endpoints", len(ch[setEndpoints].updated), "updated_clusters", len(ch[setClusters].updated))
	return nil
}

// warningsIfNew returns t's warnings unless prev had the same ones.
func (t *translation) warningsIfNew(prev *translation) []string {
	w := t.warnings()
	if prev != nil && slices.Equal(w, prev.warnings()) {
		return nil
	}
	return w
}

func withTTL(m map[string]types.Resource) map[string]types.ResourceWithTTL {
	out := make(map[string]types.ResourceWithTTL, len(m))
	for k, r := range m {
		out[k] = types.ResourceWithTTL{Resource: r}
	}
	return out
}

func appendBounded[T any](s []T, v T) []T {
	if len(s) >= historyLimit {
		s = slices.Delete(s, 0, len(s)-historyLimit+1)
	}
	return append(s, v)
}

// Version is the last published version, 0 before the first.
func (s *Server) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published
}

// Run serves ADS (state of the world and delta) and LRS until ctx ends,
// then stops the gRPC server. It may be called once.
func (s *Server) Run(ctx context.Context) error {
	err := errors.New("xds: Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx) })
	return err
}

func (s *Server) run(ctx context.Context) error {
	xdsServer := serverv3.NewServer(ctx, &muxCache{s: s}, s.callbacks())
	opts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Each connection holds a read buffer for its life (32 KiB by
		// default: 32 MiB at 1,000 gateways); gateways send little
		// (requests, ACKs, load reports), so 16 KiB loses nothing.
		grpc.ReadBufferSize(16 << 10),
	}
	if s.auth != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.auth.TLS)), grpc.ChainStreamInterceptor(s.streamAuth, s.streamThrottle))
	} else {
		opts = append(opts, grpc.ChainStreamInterceptor(s.streamThrottle))
	}
	gs := grpc.NewServer(opts...)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xdsServer)
	lrsgrpc.RegisterLoadReportingServiceServer(gs, &lrsServer{s: s, ctx: ctx})

	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(s.lis) }()
	s.log.Info("serving ADS and LRS", "addr", s.Addr())

	select {
	case err := <-serveErr:
		return fmt.Errorf("xds: serve: %w", err)
	case <-ctx.Done():
	}
	// The go-control-plane server and the LRS handler end their streams
	// when ctx ends, so a graceful stop normally returns at once.
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

// Gateways lists the connected xDS streams, gateways and proxyless
// clients, by node id.
func (s *Server) Gateways() []GatewayStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := make([]GatewayStatus, 0, len(s.streams))
	for key, st := range s.streams {
		g := GatewayStatus{
			NodeID: st.nodeID, StreamID: key.id, Address: st.address, ConnectedAt: st.connectedAt,
			Delta: st.delta, Proxyless: st.view == viewProxyless, Acked: map[string]string{},
			State: StateSynced,
		}
		first := true
		for t, ts := range st.types {
			v := s.runningLocked(st, t, ts)
			if v > 0 {
				g.Acked[t] = strconv.FormatUint(v, 10)
			} else {
				g.Acked[t] = ""
			}
			if first || v < g.Version {
				g.Version = v
			}
			first = false
			if v < s.published && s.nackedLocked(st, t, ts, s.published) != nil {
				g.State = StateNacked
			}
		}
		if len(st.types) == 0 || g.Version < s.published {
			g.Lag = s.lagLocked(st, g.Version, now)
			if g.State != StateNacked {
				g.State = StateSyncing
				if g.Lag >= s.cfg.StaleAfter {
					g.State = StateStale
				}
			}
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

// WaitForAck returns nil once every connected client has applied version
// (or a later one) for every type it subscribed to, or at once when no
// client is connected. It returns an error wrapping ErrNacked when a client
// rejected version or a later one for a type it has not ACKed since, and
// ctx's error when ctx ends first.
//
// "Applied version V for type T" means the client holds what snapshot V
// says about T: on a state-of-the-world stream it ACKed a version_info at
// least the last version up to V that changed T; on a delta stream it
// ACKed every response sent, and V was published when the server last
// found nothing more to send it (or published since without touching the
// resources it subscribed to).
// Changed returns a channel closed at the next change of any client's
// ACK state (a connect, an ACK, a NACK, a disconnect): watchers take a new
// one after each.
func (s *Server) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

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
		case <-time.After(s.cfg.StaleAfter / 4): // a client may turn STALE by the clock
		}
	}
}

// lagLocked is how long a stream running version has been behind: since
// the first publish it does not run, or since it connected if later.
func (s *Server) lagLocked(st *streamState, version uint64, now time.Time) time.Duration {
	lag := now.Sub(st.connectedAt)
	for _, p := range s.publishes {
		if p.version > version {
			return min(lag, now.Sub(p.at))
		}
	}
	return lag
}

// staleLocked reports whether a stream has been behind version for
// StaleAfter or longer: it is no longer waited for.
func (s *Server) staleLocked(st *streamState, version uint64, now time.Time) bool {
	running := uint64(0)
	first := true
	for t, ts := range st.types {
		if v := s.runningLocked(st, t, ts); first || v < running {
			running, first = v, false
		}
	}
	return running < version && s.lagLocked(st, running, now) >= s.cfg.StaleAfter
}

func (s *Server) ackedLocked(version uint64) (bool, error) {
	if len(s.streams) > 0 && version > s.published {
		return false, nil
	}
	now := time.Now()
streams:
	for _, st := range s.streams {
		stale := s.staleLocked(st, version, now)
		if len(st.types) == 0 {
			if stale {
				continue
			}
			return false, nil // connected, not yet subscribed
		}
		for t, ts := range st.types {
			if s.appliedLocked(st, t, ts, version) {
				continue
			}
			if n := s.nackedLocked(st, t, ts, version); n != nil {
				return false, fmt.Errorf("%w: node %q rejected %s version %s: %s", ErrNacked, st.nodeID, n.TypeURL, n.Version, n.Error)
			}
			if stale {
				continue streams // STALE: not waited for
			}
			return false, nil
		}
	}
	return true, nil
}

// appliedLocked reports whether the stream runs version for type t.
func (s *Server) appliedLocked(st *streamState, t string, ts *typeState, version uint64) bool {
	if st.delta {
		return ts.applied >= version
	}
	acked := parseVersion(ts.acked)
	return acked > 0 && acked >= s.typeVersionAtLocked(st.view, t, version)
}

// runningLocked is the latest published version the stream runs for t.
func (s *Server) runningLocked(st *streamState, t string, ts *typeState) uint64 {
	if st.delta {
		return ts.applied
	}
	acked := parseVersion(ts.acked)
	if acked > 0 && acked >= s.typeVersionAtLocked(st.view, t, s.published) {
		return s.published
	}
	return acked
}

// nackedLocked returns the NACK that keeps the stream from version for its
// type, if any: on a delta stream, a NACK not followed by an ACK; on a
// state-of-the-world stream, a rejected version_info that is still what
// version says about the type, or newer, and was not ACKed since.
func (s *Server) nackedLocked(st *streamState, t string, ts *typeState, version uint64) *NackStatus {
	n := ts.nack
	if n == nil {
		return nil
	}
	if st.delta {
		// A response sent since the NACK may yet be ACKed: wait for it.
		// So may one about to be sent: when type t changed after the
		// rejected version, up to the awaited one, a response is due.
		if ts.blocked && ts.sent.nonce == ts.nackNonce && s.typeVersionAtLocked(st.view, t, version) <= parseVersion(n.Version) {
			return n
		}
		return nil
	}
	rejected := parseVersion(n.Version)
	if rejected < s.typeVersionAtLocked(st.view, t, version) || parseVersion(ts.acked) >= rejected {
		return nil
	}
	return n
}

// typeVersionAtLocked is the version that last changed type t of view v at
// or before version (the version_info a state-of-the-world client that
// runs version holds).
func (s *Server) typeVersionAtLocked(v view, t string, version uint64) uint64 {
	h := s.history[v][t]
	i, found := slices.BinarySearch(h, version)
	switch {
	case found:
		return h[i]
	case i > 0:
		return h[i-1]
	case len(h) > 0:
		return h[0] // older than the history: ask for more, not less
	}
	return version
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// cacheSnapshot checks res (ValidateAll on each resource, consistency of
// the whole, API listeners included) and packs the gateways' part as a
// go-control-plane snapshot, every type at version.
func cacheSnapshot(version uint64, res *Resources) (*cachev3.Snapshot, error) {
	if res == nil {
		return nil, errors.New("nil resources")
	}
	if err := res.Validate(); err != nil {
		return nil, err
	}
	t := translationFromResources(version, res, nil)
	ch := diff(nil, t)
	if err := checkConsistent(t, &ch); err != nil {
		return nil, err
	}
	byType := map[resource.Type][]types.Resource{}
	for typ, set := range viewSets[viewGateway] {
		byType[typ] = sortedValues(t.sets[set])
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
	// The caches' Info records are per-request chatter: Debug for us.
	return cplog.LoggerFuncs{
		DebugFunc: logAt(slog.LevelDebug),
		InfoFunc:  logAt(slog.LevelDebug),
		WarnFunc:  logAt(slog.LevelWarn),
		ErrorFunc: logAt(slog.LevelError),
	}
}

// noteClusters remembers the clusters of the version being published and
// of the one before (reports lag a publish by up to an interval): load
// reports count only for those, so made-up cluster names cost nothing.
func (s *Server) noteClusters(next *translation) {
	known := make(map[string]bool, len(next.sets[setClusters]))
	for name := range next.sets[setClusters] {
		known[name] = true
	}
	if prev := s.knownClusters.Load(); prev != nil {
		s.prevClusters.Store(prev)
	}
	s.knownClusters.Store(&known)
}

// servesCluster reports whether name is a cluster of the current or the
// previous published version.
func (s *Server) servesCluster(name string) bool {
	for _, m := range []*map[string]bool{s.knownClusters.Load(), s.prevClusters.Load()} {
		if m != nil && (*m)[name] {
			return true
		}
	}
	return false
}
