package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"path/filepath"
	"strconv"
	"strings"
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
	// XDSTLS is the client TLS towards the control plane: the gateway's
	// certificate and the cluster CA (pki.ClientTLS). Nil dials plain
	// TCP, which Berth's control plane refuses; tests of the gateway
	// alone use it against their own xDS server.
	XDSTLS *tls.Config
	// NodeID identifies this gateway to the control plane.
	NodeID string
	// ListenerName is the Listener whose routes this gateway serves.
	ListenerName string
	// XDSProtocol is the ADS variant the gateway speaks: XDSDelta
	// (incremental; only changed resources are sent and compiled) or
	// XDSStateOfTheWorld (every resource of a type on each change).
	// Empty means XDSDelta.
	XDSProtocol string
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
	// UpstreamUserTimeout is how long bytes sent to an upstream may stay
	// unacknowledged by its kernel before the connection is given up
	// (TCP_USER_TIMEOUT, Linux). It bounds a request on a kept-alive
	// connection to a host whose link was cut (no RST ever comes); an
	// idempotent request none of whose bytes were acknowledged is retried
	// on another endpoint like a connect failure (a POST is not: the host
	// may have received it and lost only its acknowledgement). Negative:
	// not set.
	UpstreamUserTimeout time.Duration
	// MaxIdleConnsPerEndpoint is the keep-alive pool size per upstream.
	MaxIdleConnsPerEndpoint int
	// BackoffMin and BackoffMax bound the ADS reconnect backoff (jittered;
	// a connection that comes back sooner is used at once).
	BackoffMin, BackoffMax time.Duration
	// StateDir, when set, is where the gateway keeps the last
	// configuration it accepted (StateFileName, written at most once a
	// second and at shutdown). At start it serves that file, marked stale
	// (Stale, berth_gateway_config_stale), until the control plane has
	// confirmed or replaced it, so a gateway restarted while the control
	// plane is away does not answer 503. A file that fails the checks a
	// control plane's configuration would is refused (logged) and the
	// gateway starts empty. Empty: nothing is kept.
	StateDir string
	// StateMaxAge: a saved configuration older than this is refused at
	// start (its addresses may belong to other services by then); 0: any
	// age is served.
	StateMaxAge time.Duration

	// IdleTimeout closes a client keep-alive connection that has been
	// idle this long between requests (nginx: keepalive_timeout 75 s).
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request head, from its first
	// byte to its empty line (slowloris), and the TLS handshake; when it
	// passes, the client gets 408 and the connection closes (nginx:
	// client_header_timeout 60 s).
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds the wait for each piece of a request body (nginx:
	// client_body_timeout 60 s), and the whole of a small body (up to
	// 4 KiB on the fast path, 64 KiB on the general path), which is read
	// before an upstream is chosen, so a client that trickles its body
	// never holds an upstream connection. 408 and close when it passes.
	BodyTimeout time.Duration
	// SendTimeout closes a client connection that has not taken any of
	// the bytes written to it for this long (nginx: send_timeout 60 s).
	SendTimeout time.Duration
	// TunnelIdleTimeout closes an upgraded connection (WebSocket) with no
	// bytes either way for this long (Envoy: stream_idle_timeout 5 m).
	// Until the upgrade succeeds, the route's timeout applies.
	TunnelIdleTimeout time.Duration
	// UpstreamIdleTimeout drops pooled upstream connections idle this long.
	UpstreamIdleTimeout time.Duration
	// MaxConnections caps concurrent client connections; at the cap the
	// gateway stops accepting until one closes (the kernel's backlog holds
	// the rest). 0 derives it from the process's open-file limit, which
	// the gateway shares with its upstream connections and, in berth dev,
	// with everything else: (RLIMIT_NOFILE - 1024) / 2, at least 256 (see
	// DefaultMaxConnections). Negative: no cap.
	MaxConnections int
	// MaxHeaderBytes caps a request head (request line, header lines and
	// the empty line, with their CRLFs): a head of exactly this size is
	// served, one byte more gets 431 and the connection is closed.
	MaxHeaderBytes int
	// MaxHeaderCount caps the header field lines of a request (nginx and
	// Envoy: 100); more get 431 and the connection is closed.
	MaxHeaderCount int
	// TrustRequestID keeps a client's X-Request-Id (up to 128 bytes) when
	// the gateway is an inner hop behind a proxy that sets it; otherwise
	// the gateway always makes its own, so clients cannot choose the id
	// that logs and upstreams correlate by.
	TrustRequestID bool
	// AccessLog, when set, gets one JSON object per request (time,
	// request_id, method, host, path, status, route, cluster, upstream,
	// client, duration_ms, error). Without it, access records go to Logger
	// at Debug level.
	AccessLog io.Writer
	// TLSListenAddr, when set, serves HTTPS there: ALPN h2 or http/1.1,
	// the certificate chosen by SNI from Certificates.
	TLSListenAddr string
	// Certificates for TLSListenAddr. A client's SNI picks the entry that
	// lists it (exact, then "*.suffix"); without a match, the first.
	Certificates []Certificate
	// LoadReporting sends per-cluster load reports over LRS to the
	// control plane at XDSAddr, as often as it asks.
	LoadReporting bool
}

// XDSProtocol values.
const (
	XDSDelta           = "delta"
	XDSStateOfTheWorld = "sotw"
)

// Certificate is one certificate and key (PEM files) and the hosts it
// serves.
type Certificate struct {
	Hosts             []string
	CertFile, KeyFile string
}

// DefaultConfig returns the settings Berth runs with.
func DefaultConfig() Config {
	return Config{
		ListenAddr:              "127.0.0.1:0",
		ListenerName:            "berth_http",
		XDSProtocol:             XDSDelta,
		ShutdownTimeout:         10 * time.Second,
		DialTimeout:             2 * time.Second,
		UpstreamUserTimeout:     2 * time.Second,
		MaxIdleConnsPerEndpoint: 256,
		BackoffMin:              100 * time.Millisecond,
		BackoffMax:              2 * time.Second,
		IdleTimeout:             60 * time.Second,
		ReadHeaderTimeout:       10 * time.Second,
		BodyTimeout:             60 * time.Second,
		SendTimeout:             60 * time.Second,
		TunnelIdleTimeout:       5 * time.Minute,
		UpstreamIdleTimeout:     90 * time.Second,
		MaxHeaderBytes:          60 << 10, // Envoy's default max_request_headers_kb
		MaxHeaderCount:          100,      // nginx's and Envoy's default
		LoadReporting:           true,
		StateMaxAge:             DefaultStateMaxAge,
	}
}

// DefaultStateMaxAge is how old a saved configuration may be to be served
// at start: a weekend without a control plane.
const DefaultStateMaxAge = 72 * time.Hour

// Gateway proxies HTTP by the routes it receives over xDS.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	lis     net.Listener
	tlsLis  net.Listener // nil without TLSListenAddr
	tlsConf *tls.Config
	metrics *metrics
	fwd     *forwarder
	table   atomic.Pointer[table]
	// stale is set while the table comes from the state file (saved.go).
	stale atomic.Bool

	// noRoute counts requests that matched nothing.
	noRoute *routeStats

	reg          *registry
	dialer       *net.Dialer
	general      *handoffListener // connections for the net/http path
	conns        connTracker      // fast-path connections
	shuttingDown atomic.Bool
	slots        chan struct{} // MaxConnections tokens; nil = no cap
	headLimits   headLimits
	accessLog    *slog.Logger
	accessLevel  slog.Level

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
	switch cfg.XDSProtocol {
	case "":
		cfg.XDSProtocol = def.XDSProtocol
	case XDSDelta, XDSStateOfTheWorld:
	default:
		return nil, fmt.Errorf("gateway: xds protocol %q: want %q or %q", cfg.XDSProtocol, XDSDelta, XDSStateOfTheWorld)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = def.ShutdownTimeout
	}
	if cfg.UpstreamUserTimeout == 0 {
		cfg.UpstreamUserTimeout = def.UpstreamUserTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = def.DialTimeout
	}
	if cfg.MaxIdleConnsPerEndpoint <= 0 {
		cfg.MaxIdleConnsPerEndpoint = def.MaxIdleConnsPerEndpoint
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = def.ReadHeaderTimeout
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = def.BodyTimeout
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = def.SendTimeout
	}
	if cfg.TunnelIdleTimeout <= 0 {
		cfg.TunnelIdleTimeout = def.TunnelIdleTimeout
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections()
	}
	if cfg.UpstreamIdleTimeout <= 0 {
		cfg.UpstreamIdleTimeout = def.UpstreamIdleTimeout
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = def.MaxHeaderBytes
	}
	if cfg.MaxHeaderCount <= 0 {
		cfg.MaxHeaderCount = def.MaxHeaderCount
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
	var tlsConf *tls.Config
	if cfg.TLSListenAddr != "" {
		if tlsConf, err = loadCertificates(cfg.Certificates); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("gateway: listen %s: %w", cfg.ListenAddr, err)
	}
	var tlsLis net.Listener
	if tlsConf != nil {
		if tlsLis, err = net.Listen("tcp", cfg.TLSListenAddr); err != nil {
			lis.Close()
			return nil, fmt.Errorf("gateway: listen %s: %w", cfg.TLSListenAddr, err)
		}
	}
	g := &Gateway{
		cfg:     cfg,
		log:     logger.With("component", "gateway", "node", cfg.NodeID),
		lis:     lis,
		tlsLis:  tlsLis,
		tlsConf: tlsConf,
		metrics: m,
		fwd: newForwarder(forwarderConfig{
			dialTimeout:         cfg.DialTimeout,
			userTimeout:         cfg.UpstreamUserTimeout,
			maxIdleConnsPerHost: cfg.MaxIdleConnsPerEndpoint,
			idleConnTimeout:     cfg.UpstreamIdleTimeout,
			tunnelIdle:          cfg.TunnelIdleTimeout,
			onTunnelIdle:        func() { m.closedBy(closedTunnelIdle) },
		}),
		noRoute: m.stats("", ""),
		dialer:  &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second, Control: userTimeoutControl(cfg.UpstreamUserTimeout)},
		general: newHandoffListener(lis.Addr()),
		reg:     newRegistry(cfg.MaxIdleConnsPerEndpoint),
	}
	g.conns.m = map[*serverConn]struct{}{}
	g.headLimits = headLimits{maxBytes: cfg.MaxHeaderBytes, maxFields: cfg.MaxHeaderCount}
	if cfg.MaxConnections > 0 {
		g.slots = make(chan struct{}, cfg.MaxConnections)
	}
	if cfg.AccessLog != nil {
		g.accessLog, g.accessLevel = slog.New(slog.NewJSONHandler(cfg.AccessLog, nil)), slog.LevelInfo
	} else {
		g.accessLog, g.accessLevel = g.log, slog.LevelDebug
	}
	return g, nil
}

// Addr is the address the gateway serves HTTP on.
func (g *Gateway) Addr() string { return g.lis.Addr().String() }

// TLSAddr is the address the gateway serves HTTPS on, "" without TLS.
func (g *Gateway) TLSAddr() string {
	if g.tlsLis == nil {
		return ""
	}
	return g.tlsLis.Addr().String()
}

func (g *Gateway) closeListeners() {
	g.lis.Close()
	if g.tlsLis != nil {
		g.tlsLis.Close()
	}
}

// Version is the version_info (delta: system_version_info) of the last
// xDS response the gateway accepted, "" before the first.
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

// Stale reports whether the gateway serves the configuration it saved in
// an earlier run (Config.StateDir) which the control plane has not yet
// confirmed or replaced.
func (g *Gateway) Stale() bool { return g.stale.Load() }

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
		g.closeListeners()
		return err
	}
	// The saved configuration is served from the first connection, before
	// the control plane says anything.
	saverDone := make(chan struct{})
	stopSaver := func() {}
	if g.cfg.StateDir != "" {
		path := filepath.Join(g.cfg.StateDir, StateFileName)
		ads.saver = newConfigSaver(path, g.cfg.NodeID, g.log, g.metrics.stateWrites)
		ads.restoreFile(path)
		var saverCtx context.Context
		saverCtx, stopSaver = context.WithCancel(context.WithoutCancel(ctx))
		go func() {
			defer close(saverDone)
			ads.saver.run(saverCtx)
		}()
	} else {
		close(saverDone)
	}
	adsCtx, stopADS := context.WithCancel(ctx)
	adsDone := make(chan struct{})
	go func() {
		defer close(adsDone)
		ads.run(adsCtx)
	}()
	lrsDone := make(chan struct{})
	if g.cfg.LoadReporting {
		lrs := &loadReporter{g: g, conn: ads.conn, node: ads.node}
		go func() {
			defer close(lrsDone)
			lrs.run(adsCtx)
		}()
	} else {
		close(lrsDone)
	}

	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: g.cfg.ReadHeaderTimeout,
		IdleTimeout:       g.cfg.IdleTimeout,
		MaxHeaderBytes:    g.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		ConnContext:       h2ConnContext,
		Protocols:         new(http.Protocols),
		HTTP2:             h2Config(),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge
	srv.Protocols.SetHTTP2(true)            // TLS connections that chose h2
	generalErr := make(chan error, 1)
	h2l := &h2Listener{Listener: g.general, maxHeaderListSize: h2MaxHeaderListSize(g.cfg.MaxHeaderBytes), log: g.log}
	go func() { generalErr <- srv.Serve(h2l) }()
	serveErr := make(chan error, 1)
	go func() { serveErr <- g.accept(g.lis, false) }()
	tlsErr := make(chan error, 1)
	if g.tlsLis != nil {
		go func() { tlsErr <- g.accept(g.tlsLis, true) }()
	} else {
		tlsErr <- nil
	}
	g.log.Info("serving", "addr", g.Addr(), "xds", g.cfg.XDSAddr)

	var runErr error
	select {
	case err := <-serveErr:
		runErr = fmt.Errorf("gateway: serve: %w", err)
		g.shuttingDown.Store(true)
		g.closeListeners()
		<-tlsErr
		srv.Close()
		g.conns.closeAll()
	case <-ctx.Done():
		// Stop accepting, let in-flight requests finish, close idle
		// connections; after ShutdownTimeout, cut what is left.
		g.shuttingDown.Store(true)
		g.closeListeners()
		<-serveErr
		<-tlsErr
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ShutdownTimeout)
		fastDone := make(chan struct{})
		go func() { g.conns.drain(shutdownCtx); close(fastDone) }()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			g.log.Warn("in-flight requests cut at shutdown", "error", err)
			srv.Close()
		}
		<-fastDone
		cancel()
	}
	<-generalErr
	stopADS()
	<-adsDone
	<-lrsDone
	stopSaver() // the last configuration accepted is written now
	<-saverDone
	ads.close()
	g.reg.closeAll()
	g.fwd.close()
	return runErr
}

// ServeHTTP routes and proxies one request. It is the general path:
// HTTP/2, upgrades (WebSocket), chunked request bodies, HTTP/1.0 and
// whatever else the fast path (fastpath.go) hands over once it has
// checked the request's framing (h1request.go). An HTTP/1.x connection
// reaches net/http only through that hand-off, and serves that one
// request here: the answer says Connection: close, so net/http never
// frames a later request on the connection by its own, laxer rules.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	abortMalformedH2(r)
	start := time.Now()
	reqID := ""
	if g.cfg.TrustRequestID {
		reqID = r.Header.Get("X-Request-Id")
	}
	if reqID == "" || len(reqID) > 128 {
		reqID = newRequestID()
	}
	w.Header()["X-Request-Id"] = []string{reqID}
	if r.ProtoMajor == 1 {
		w.Header()["Connection"] = []string{"close"}
	}

	t := g.table.Load()
	if t == nil || !t.hasListener {
		g.finish(r, start, reqID, g.noRoute, "", "", "", plainError(w, http.StatusServiceUnavailable, "berth: gateway has no configuration yet\n"), nil)
		return
	}
	vh := t.matchHost(requestHost(r.Host))
	var re *routeEntry
	if vh != nil {
		re = vh.matchPath(requestPath(r), httpHeaders(r.Header))
	}
	if re == nil {
		g.finish(r, start, reqID, g.noRoute, "", "", "", plainError(w, http.StatusNotFound, "berth: no route\n"), nil)
		return
	}
	if re.direct != nil {
		g.finish(r, start, reqID, re.directStats, re.name, "", "", plainError(w, re.direct.status, re.direct.body), nil)
		return
	}
	wc, cohort, derived := re.pickFor(httpHeaders(r.Header))
	fr := r // the request as forwarded
	if derived {
		// The cohort goes upstream in place of any the client sent.
		fr = r.WithContext(r.Context())
		fr.Header = r.Header.Clone()
		fr.Header[re.sticky.header] = []string{strconv.FormatUint(cohort, 10)}
	}
	c := wc.cluster
	if c == nil || len(c.endpoints) == 0 {
		g.finish(r, start, reqID, wc.stats, re.name, wc.name, "", plainError(w, http.StatusServiceUnavailable, "berth: no healthy upstream\n"), nil)
		return
	}
	ctx := r.Context()
	upgrade := r.Header.Get("Upgrade") != ""
	var upgraded func() // stops the route's timeout once a 101 arrived
	switch {
	case re.timeout > 0 && !upgrade:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, re.timeout)
		defer cancel()
	case re.timeout > 0:
		// The route's timeout applies until the upgrade succeeds; then
		// the tunnel's idle timeout takes over.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		timer := time.AfterFunc(re.timeout, func() { cancel(context.DeadlineExceeded) })
		upgraded = func() { timer.Stop() }
		defer timer.Stop()
	}
	// A small body is read whole before an upstream is chosen (so a
	// client that trickles it holds no upstream connection, and the
	// request can be retried); a larger one streams, each read bounded
	// by BodyTimeout.
	var bodyBuf []byte
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && !upgrade {
		body := &deadlineBody{r: r.Body, rc: http.NewResponseController(w), timeout: g.cfg.BodyTimeout}
		buf, whole, err := readUpTo(body, maxBufferedBody)
		if err != nil {
			status, msg := g.clientBodyAnswer(err)
			w.Header()["Connection"] = []string{"close"}
			g.finish(r, start, reqID, wc.stats, re.name, wc.name, "", plainError(w, status, msg), err)
			return
		}
		fr = fr.WithContext(fr.Context())
		if whole {
			bodyBuf = buf
			fr.ContentLength = int64(len(buf))
		} else {
			fr.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(buf), body), r.Body}
		}
	}
	st := c.state
	st.issued.Add(1)
	st.active.Add(1)
	defer st.active.Add(-1)
	sent := time.Now()
	// Only requests without a body are retried here (their request can be
	// sent again as it is); the fast path also retries small bodies.
	replayable := (r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || bodyBuf != nil) && !upgrade
	var ep *endpoint
	// The endpoints tried so far (a retry goes elsewhere); on the stack.
	var triedBuf [4]*endpoint
	tried := triedBuf[:0]
	var status int
	var headAt time.Time
	var fail failure
	var err error
	for attempt := 0; ; attempt++ {
		ep = c.pickEndpoint(tried)
		mayRetry := replayable && re.retry != nil && attempt < re.retry.numRetries && re.retry.allowsMethod(r.Method) && c.retries.allows(st) && ctx.Err() == nil
		ep.active.Add(1)
		var retry bool
		if bodyBuf != nil {
			fr.Body = io.NopCloser(bytes.NewReader(bodyBuf))
		}
		status, headAt, retry, fail, err = g.fwd.forward(w, fr.WithContext(ctx), ep.addr, reqID, upgraded, func(code int, local, connectFailed bool) bool {
			if !mayRetry || !re.retry.retriable(code, connectFailed) {
				return false
			}
			return code != 0 && idempotentMethod(r.Method) || code == 0 && (connectFailed || idempotentMethod(r.Method))
		})
		ep.active.Add(-1)
		c.observe(ep, status, fail)
		if !retry {
			break
		}
		st.activeRetries.Add(1)
		backoff(re.retry, attempt)
		st.activeRetries.Add(-1)
		if len(tried) < cap(tried) {
			tried = append(tried, ep)
		}
	}
	if headAt.IsZero() { // the gateway answers itself
		headAt = time.Now()
	}
	reported := status
	switch {
	case fail == failClientGone:
		reported = StatusClientClosed
	case fail == failClientBody:
		var body string
		reported, body = g.clientBodyAnswer(err)
		w.Header()["Connection"] = []string{"close"}
		plainError(w, reported, body)
	case status == 0 && fail == failUpstreamTimeout:
		reported = plainError(w, http.StatusGatewayTimeout, "berth: upstream request timeout\n")
	case status == 0 && fail.upstreamFault():
		reported = plainError(w, http.StatusBadGateway, "berth: upstream error\n")
	}
	st.finish(reported, fail, sent.UnixNano(), headAt.UnixNano())
	g.finish(r, start, reqID, wc.stats, re.name, wc.name, ep.addr, reported, err)
	if status != 0 && status != http.StatusSwitchingProtocols && fail == failUpstream {
		// The upstream broke mid-body: abort the client connection so
		// it sees a truncated response, not a silently short one.
		panic(http.ErrAbortHandler)
	}
}

// maxBufferedBody is the largest request body the general path reads
// whole before choosing an upstream.
const maxBufferedBody = 64 << 10

// readUpTo reads r until EOF or max bytes; whole reports EOF was reached.
func readUpTo(r io.Reader, max int) (buf []byte, whole bool, err error) {
	buf = make([]byte, 0, 4096)
	for len(buf) < max {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), max)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, true, nil
		}
		if err != nil {
			return buf, false, err
		}
	}
	return buf, false, nil
}

// deadlineBody bounds each read of a request body by timeout.
type deadlineBody struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	return b.r.Read(p)
}

// requestPath is the request target's path as sent (not decoded), as
// Envoy matches it.
func requestPath(r *http.Request) string {
	if u := r.RequestURI; len(u) > 0 && u[0] == '/' {
		for i := 0; i < len(u); i++ {
			if u[i] == '?' {
				return u[:i]
			}
		}
		return u
	}
	return r.URL.EscapedPath()
}

// httpHeaders is a headerSource over net/http's headers; matcher names
// are canonical already.
type httpHeaders http.Header

func (h httpHeaders) headerValue(name string) (string, bool) {
	vs, ok := h[name]
	if !ok {
		vs, ok = h[textproto.CanonicalMIMEHeaderKey(name)]
	}
	switch {
	case !ok:
		return "", false
	case len(vs) == 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

// headerAt implements cohortHeaders; names are canonical already.
func (h httpHeaders) headerAt(name string, i int) (string, bool) {
	vs, ok := h[name]
	if !ok {
		vs = h[textproto.CanonicalMIMEHeaderKey(name)]
	}
	if i >= len(vs) {
		return "", false
	}
	return vs[i], true
}

func (g *Gateway) finish(r *http.Request, start time.Time, reqID string, stats *routeStats, route, cluster, upstream string, status int, err error) {
	d := time.Since(start)
	stats.observe(status, d)
	if !g.accessLogEnabled() {
		return
	}
	g.writeAccess(reqID, r.Method, r.Host, requestPath(r), clientIP(r.RemoteAddr), route, cluster, upstream, status, d, err)
}

func clientIP(remote string) string {
	if ip, _, err := net.SplitHostPort(remote); err == nil {
		return ip
	}
	return remote
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
