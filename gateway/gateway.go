package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Gateway.
type Config struct {
	// ListenAddr is where the gateway serves HTTP, e.g. "127.0.0.1:0".
	// The Listener resource's own port is ignored (it is Envoy's).
	ListenAddr string
	// XDSAddr is the control plane's ADS address ("host:port").
	XDSAddr string
	// NodeID identifies this gateway to the control plane.
	NodeID string
	// ListenerName is the Listener whose routes this gateway serves.
	ListenerName string
	// Logger gets component logs and, at Debug, one access record per
	// request. nil discards.
	Logger *slog.Logger
	// Registerer receives the berth_gateway_ metrics; nil registers nowhere.
	Registerer prometheus.Registerer

	// ShutdownTimeout bounds how long Run waits for in-flight requests
	// once its context ends; then connections are closed.
	ShutdownTimeout time.Duration
	// DialTimeout bounds an upstream connect.
	DialTimeout time.Duration
	// MaxIdleConnsPerEndpoint is the keep-alive pool size per upstream.
	MaxIdleConnsPerEndpoint int
	// BackoffMin and BackoffMax bound the ADS reconnect backoff.
	BackoffMin, BackoffMax time.Duration
}

// DefaultConfig returns the settings Berth runs with.
func DefaultConfig() Config {
	return Config{
		ListenAddr:              "127.0.0.1:0",
		ListenerName:            "berth_http",
		ShutdownTimeout:         10 * time.Second,
		DialTimeout:             2 * time.Second,
		MaxIdleConnsPerEndpoint: 256,
		BackoffMin:              100 * time.Millisecond,
		BackoffMax:              5 * time.Second,
	}
}

// Gateway proxies HTTP by the routes it receives over xDS.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	lis     net.Listener
	metrics *metrics
	fwd     *forwarder
	table   atomic.Pointer[table]

	// noRoute counts requests that matched nothing.
	noRoute *routeStats

	runOnce sync.Once
}

// New binds cfg.ListenAddr. Nothing is served until Run.
func New(cfg Config) (*Gateway, error) {
	def := DefaultConfig()
	if cfg.XDSAddr == "" {
		return nil, errors.New("gateway: XDSAddr is required")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("gateway: NodeID is required")
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = def.ListenAddr
	}
	if cfg.ListenerName == "" {
		cfg.ListenerName = def.ListenerName
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = def.ShutdownTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = def.DialTimeout
	}
	if cfg.MaxIdleConnsPerEndpoint <= 0 {
		cfg.MaxIdleConnsPerEndpoint = def.MaxIdleConnsPerEndpoint
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = def.BackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(def.BackoffMax, cfg.BackoffMin)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("gateway: metrics: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("gateway: listen %s: %w", cfg.ListenAddr, err)
	}
	return &Gateway{
		cfg:     cfg,
		log:     logger.With("component", "gateway", "node", cfg.NodeID),
		lis:     lis,
		metrics: m,
		fwd: newForwarder(forwarderConfig{
			dialTimeout:         cfg.DialTimeout,
			maxIdleConnsPerHost: cfg.MaxIdleConnsPerEndpoint,
			idleConnTimeout:     90 * time.Second,
		}),
		noRoute: m.stats("", ""),
	}, nil
}

// Addr is the address the gateway serves HTTP on.
func (g *Gateway) Addr() string { return g.lis.Addr().String() }

// Version is the version_info of the last xDS response the gateway
// accepted, "" before the first.
func (g *Gateway) Version() string {
	if t := g.table.Load(); t != nil {
		return t.version
	}
	return ""
}

// Versions maps each type URL to the version the gateway runs.
func (g *Gateway) Versions() map[string]string {
	if t := g.table.Load(); t != nil {
		return maps.Clone(t.versions)
	}
	return map[string]string{}
}

// Run serves HTTP and follows the control plane until ctx ends; then it
// stops accepting, lets in-flight requests finish (up to ShutdownTimeout)
// and returns. It may be called once.
func (g *Gateway) Run(ctx context.Context) error {
	err := errors.New("gateway: Run called twice")
	g.runOnce.Do(func() { err = g.run(ctx) })
	return err
}

func (g *Gateway) run(ctx context.Context) error {
	ads, err := newADSClient(g)
	if err != nil {
		g.lis.Close()
		return err
	}
	adsCtx, stopADS := context.WithCancel(ctx)
	adsDone := make(chan struct{})
	go func() {
		defer close(adsDone)
		ads.run(adsCtx)
	}()

	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(g.lis) }()
	g.log.Info("serving", "addr", g.Addr(), "xds", g.cfg.XDSAddr)

	var runErr error
	select {
	case err := <-serveErr:
		runErr = fmt.Errorf("gateway: serve: %w", err)
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ShutdownTimeout)
		if err := srv.Shutdown(shutdownCtx); err != nil {
			g.log.Warn("in-flight requests cut at shutdown", "error", err)
			srv.Close()
		}
		cancel()
		<-serveErr
	}
	stopADS()
	<-adsDone
	ads.close()
	g.fwd.close()
	return runErr
}

// ServeHTTP routes and proxies one request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := r.Header.Get("X-Request-Id")
	if reqID == "" || len(reqID) > 128 {
		reqID = newRequestID()
	}
	w.Header()["X-Request-Id"] = []string{reqID}

	t := g.table.Load()
	if t == nil || !t.hasListener {
		g.finish(r, start, reqID, g.noRoute, "", "", "", plainError(w, http.StatusServiceUnavailable, "berth: gateway has no configuration yet\n"), nil)
		return
	}
	vh := t.matchHost(requestHost(r.Host))
	var re *routeEntry
	if vh != nil {
		re = vh.matchPath(r.URL.Path)
	}
	if re == nil {
		g.finish(r, start, reqID, g.noRoute, "", "", "", plainError(w, http.StatusNotFound, "berth: no route\n"), nil)
		return
	}
	if re.direct != nil {
		g.finish(r, start, reqID, re.directStats, re.name, "", "", plainError(w, re.direct.status, re.direct.body), nil)
		return
	}
	wc := re.pick()
	addr := wc.cluster.endpoint()
	if addr == "" {
		g.finish(r, start, reqID, wc.stats, re.name, wc.name, "", plainError(w, http.StatusServiceUnavailable, "berth: no healthy upstream\n"), nil)
		return
	}
	status, err := g.fwd.forward(w, r, addr, reqID)
	if errors.Is(err, errUpstream) {
		if r.Context().Err() != nil {
			status = 499 // the client left first
		} else {
			status = plainError(w, http.StatusBadGateway, "berth: upstream error\n")
		}
	}
	g.finish(r, start, reqID, wc.stats, re.name, wc.name, addr, status, err)
}

func (g *Gateway) finish(r *http.Request, start time.Time, reqID string, stats *routeStats, route, cluster, upstream string, status int, err error) {
	d := time.Since(start)
	stats.observe(status, d)
	if !g.log.Enabled(r.Context(), slog.LevelDebug) {
		return
	}
	attrs := []slog.Attr{
		slog.String("request_id", reqID),
		slog.String("method", r.Method),
		slog.String("host", r.Host),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.String("route", route),
		slog.String("cluster", cluster),
		slog.String("upstream", upstream),
		slog.String("client", r.RemoteAddr),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	g.log.LogAttrs(r.Context(), slog.LevelDebug, "access", attrs...)
}

func plainError(w http.ResponseWriter, status int, body string) int {
	h := w.Header()
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
	return status
}

// requestHost lowercases host and drops its port.
func requestHost(host string) string {
	if i := lastColon(host); i >= 0 {
		host = host[:i]
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return toLower(host)
		}
	}
	return host
}

// lastColon finds the port separator, skipping IPv6 literals' colons.
func lastColon(host string) int {
	for i := len(host) - 1; i >= 0; i-- {
		switch host[i] {
		case ':':
			return i
		case ']':
			return -1
		}
	}
	return -1
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

const hexDigits = "0123456789abcdef"

// newRequestID returns 32 random hex digits.
func newRequestID() string {
	var b [32]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := 0; i < 16; i++ {
		b[i] = hexDigits[hi>>(60-4*i)&0xf]
		b[16+i] = hexDigits[lo>>(60-4*i)&0xf]
	}
	return string(b[:])
}
