// Package ui serves Berth's web dashboard: the embedded pages (assets/,
// written by the frontend), a login that turns a Berth API token into a
// session cookie, JSON endpoints that answer through the replica's own
// gRPC API with the logged-in user's token (so the API's authorisation
// decides what a user sees and may do), and a server-sent event stream of
// changes and of live rollout points (from controlplane/rollouthistory).
//
// It owns the HTTP edge and its defences (Host check against DNS
// rebinding, CSRF token and same-origin check on state changes, session
// cookies, login rate limit, stream bounds, security headers). It
// decides nothing about the cluster and reads no state the API would not
// give the same user, besides what is already cluster-wide and public to
// any logged-in user's calls (the change notifications, which carry no
// data). The contract with the pages is ui/CONTRACT.md.
package ui

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/rollouthistory"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
	"github.com/prometheus/client_golang/prometheus"
)

//go:embed assets
var assetsFS embed.FS

// HistorySource is the rollout recorder (rollouthistory.Recorder).
type HistorySource interface {
	History(namespace, service string) (rollouthistory.History, bool)
	Live() []rollouthistory.Live
}

// Views tells the stream when the cluster changed (store.Cache).
type Views interface {
	View() *store.View
	Subscribe() (<-chan struct{}, func())
}

// Config configures the dashboard's server.
type Config struct {
	// Addr is where it listens ("127.0.0.1:7420"; port 0 picks one).
	Addr string
	// TLS, if set, serves HTTPS (cookies are then Secure).
	TLS *tls.Config
	// API is the replica's own API, on a connection with no client
	// certificate: every call carries the session's token.
	API pb.BerthClient
	// Views wakes the stream's change events (nil: none).
	Views Views
	// Discovery is the replica's latest discovery snapshot: what its DNS
	// answers (nil: the DNS endpoint answers nothing).
	Discovery func() *discovery.Snapshot
	// History is the rollout recorder (nil: no plots).
	History HistorySource
	// Replica and Version are shown by /api/whoami.
	Replica, Version string
	// SessionTTL bounds a session's life (default 12h).
	SessionTTL time.Duration
	// MaxSessions bounds the sessions kept (default 1,000; the oldest goes).
	MaxSessions int
	// StreamsPerSession bounds a session's open event streams (default 4).
	StreamsPerSession int
	// LoginBurst and LoginEvery: each client address may try LoginBurst
	// logins at once, then one every LoginEvery (default 10, 2s).
	LoginBurst int
	LoginEvery time.Duration
	// Heartbeat is the interval of the stream's comment lines (default
	// 15s); PointEvery of its points (default 1s); ChangeEvery the
	// shortest interval between change events (default 500ms).
	Heartbeat, PointEvery, ChangeEvery time.Duration
	Logger                             *slog.Logger
	Registerer                         prometheus.Registerer
}

// DefaultConfig returns the defaults of `berth server` and `berth dev`.
func DefaultConfig() Config {
	return Config{
		Addr:              DefaultAddr,
		SessionTTL:        12 * time.Hour,
		MaxSessions:       1000,
		StreamsPerSession: 4,
		LoginBurst:        10,
		LoginEvery:        2 * time.Second,
		Heartbeat:         15 * time.Second,
		PointEvery:        time.Second,
		ChangeEvery:       500 * time.Millisecond,
	}
}

// DefaultAddr is the dashboard's default address.
const DefaultAddr = "127.0.0.1:7420"

// Server is the dashboard's HTTP server.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	lis      net.Listener
	srv      *http.Server
	sessions *sessions
	logins   *loginLimiter
	hub      *hub
	assets   fs.FS
	metrics  *metrics
}

// New binds the listener and builds the handlers; Run serves.
func New(cfg Config) (*Server, error) {
	d := DefaultConfig()
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = d.SessionTTL
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = d.MaxSessions
	}
	if cfg.StreamsPerSession <= 0 {
		cfg.StreamsPerSession = d.StreamsPerSession
	}
	if cfg.LoginBurst <= 0 {
		cfg.LoginBurst = d.LoginBurst
	}
	if cfg.LoginEvery <= 0 {
		cfg.LoginEvery = d.LoginEvery
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = d.Heartbeat
	}
	if cfg.PointEvery <= 0 {
		cfg.PointEvery = d.PointEvery
	}
	if cfg.ChangeEvery <= 0 {
		cfg.ChangeEvery = d.ChangeEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.API == nil {
		return nil, errors.New("ui: config: API is required")
	}
	assets, err := fs.Sub(assetsFS, "assets")
	if err != nil {
		return nil, fmt.Errorf("ui: assets: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ui: listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{
		cfg:      cfg,
		logger:   cfg.Logger.With("component", "ui"),
		lis:      lis,
		sessions: newSessions(cfg.SessionTTL, cfg.MaxSessions),
		logins:   newLoginLimiter(cfg.LoginBurst, cfg.LoginEvery),
		assets:   assets,
		metrics:  newMetrics(cfg.Registerer),
	}
	s.hub = newHub(cfg, s.metrics)
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A client that does not read an answer holds its handler at
		// most this long (the stream sets a deadline per write instead).
		WriteTimeout:   60 * time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		TLSConfig:      cfg.TLS,
		ErrorLog:       slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Addr is the address the dashboard listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// URL is the dashboard's address as a browser opens it.
func (s *Server) URL() string {
	scheme := "http"
	if s.cfg.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + browserHost(s.Addr())
}

// browserHost makes an unspecified listen address (0.0.0.0, ::)
// something a browser on this machine can open.
func browserHost(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	hubCtx, stopHub := context.WithCancel(ctx)
	defer stopHub()
	go s.hub.run(hubCtx)
	// Requests (the streams above all) end with the server.
	s.srv.BaseContext = func(net.Listener) context.Context { return hubCtx }
	go s.sessionSweeper(hubCtx)
	errc := make(chan error, 1)
	go func() {
		var err error
		if s.cfg.TLS != nil {
			err = s.srv.ServeTLS(s.lis, "", "")
		} else {
			err = s.srv.Serve(s.lis)
		}
		errc <- err
	}()
	s.logger.Info("dashboard serving", "addr", s.URL())
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	// Streams never end on their own: close them after a short grace.
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	stopHub()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	<-errc
	return nil
}

func (s *Server) sessionSweeper(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.sessions.sweep(now)
			s.metrics.sessions.Set(float64(s.sessions.len()))
		}
	}
}

// handler is the whole route table, each route behind the defences it
// needs (guard: Host, headers, metrics; then page, api or action).
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(s.assets)))
	mux.HandleFunc("GET /{$}", s.page(s.index))
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.loginPost)
	mux.HandleFunc("POST /logout", s.action(s.logout))

	mux.HandleFunc("GET /api/whoami", s.api(s.whoami))
	mux.HandleFunc("GET /api/services", s.api(s.listServices))
	mux.HandleFunc("GET /api/services/{ns}/{name}", s.api(s.getService))
	mux.HandleFunc("GET /api/services/{ns}/{name}/instances", s.api(s.listInstances))
	mux.HandleFunc("GET /api/services/{ns}/{name}/dns", s.api(s.serviceDNS))
	mux.HandleFunc("GET /api/services/{ns}/{name}/events", s.api(s.serviceEvents))
	mux.HandleFunc("GET /api/events", s.api(s.listEvents))
	mux.HandleFunc("GET /api/nodes", s.api(s.listNodes))
	mux.HandleFunc("GET /api/gateways", s.api(s.listGateways))
	mux.HandleFunc("GET /api/rollouts/{ns}/{name}", s.api(s.rolloutStatus))
	mux.HandleFunc("GET /api/rollouts/{ns}/{name}/history", s.api(s.rolloutHistory))
	mux.HandleFunc("POST /api/rollouts/{ns}/{name}/{action}", s.action(s.rolloutAction))
	mux.HandleFunc("GET /api/stream", s.api(s.stream))
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return s.guard(mux)
}

// statusRecorder remembers the status a handler wrote, for metrics and
// the log; Flush passes through for the stream.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// guard runs in front of every route: the Host check (DNS rebinding),
// the security headers, then the route; and counts the request by the
// route's pattern and status. The log line never has the query string
// (a login link carries a token).
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if s.cfg.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		rec := &statusRecorder{ResponseWriter: w}
		pattern := "refused"
		if !s.hostAllowed(r.Host) {
			s.logger.Warn("request refused: Host is not this dashboard's address (DNS rebinding?)", "host", r.Host, "from", r.RemoteAddr, "path", r.URL.Path)
			writeError(rec, http.StatusMisdirectedRequest, "PermissionDenied", "the Host header does not name this dashboard")
		} else {
			next.ServeHTTP(rec, r)
			pattern = r.Pattern
			if pattern == "" {
				pattern = "unmatched"
			}
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(pattern, strconv.Itoa(code)).Inc()
		s.logger.Debug("request", "method", r.Method, "path", r.URL.Path, "code", code, "took", time.Since(start).Round(time.Microsecond), "from", r.RemoteAddr)
	})
}

// contentSecurityPolicy: everything from this origin only, no inline
// script or style, no framing.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

func (s *Server) index(w http.ResponseWriter, r *http.Request, _ *session) {
	w.Header().Set("Cache-Control", "no-store")
	http.ServeFileFS(w, r, s.assets, "index.html")
}
