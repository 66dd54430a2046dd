package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// accept runs an accept loop until the listener closes.
func (g *Gateway) accept(lis net.Listener, isTLS bool) error {
	var tempDelay time.Duration
	for {
		if g.slots != nil {
			g.slots <- struct{}{}
		}
		c, err := lis.Accept()
		if err != nil {
			if g.slots != nil {
				<-g.slots
			}
			if g.shuttingDown.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				g.log.Warn("accept failed; retrying", "error", err, "in", tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}
		tempDelay = 0
		go g.handleConn(c, isTLS)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (g *Gateway) handleConn(c net.Conn, isTLS bool) {
	c = &clientConn{Conn: c, timeout: g.cfg.SendTimeout, onLimit: g.metrics.closedBy}
	if g.slots != nil {
		c = &slotConn{Conn: c, release: func() { <-g.slots }}
	}
	if isTLS {
		tc := tls.Server(c, g.tlsConf)
		tc.SetDeadline(time.Now().Add(g.cfg.ReadHeaderTimeout))
		if err := tc.Handshake(); err != nil {
			g.log.Debug("tls handshake failed", "client", c.RemoteAddr().String(), "error", err)
			tc.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			g.general.push(tc) // net/http sees a *tls.Conn: h2 by ALPN
			return
		}
		g.serveConn(tc, true)
		return
	}
	g.serveConn(c, false)
}

// loadCertificates reads the certificate files and picks one by SNI.
func loadCertificates(certs []Certificate) (*tls.Config, error) {
	if len(certs) == 0 {
		return nil, errors.New("TLS listener without certificates")
	}
	exact := map[string]*tls.Certificate{}
	var suffixes []string
	bySuffix := map[string]*tls.Certificate{}
	var first *tls.Certificate
	for _, c := range certs {
		kp, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", c.CertFile, err)
		}
		cert := &kp
		if first == nil {
			first = cert
		}
		for _, h := range c.Hosts {
			h = strings.ToLower(h)
			if strings.HasPrefix(h, "*.") {
				suffixes = append(suffixes, h[1:])
				bySuffix[h[1:]] = cert
			} else {
				exact[h] = cert
			}
		}
	}
	slices.SortFunc(suffixes, func(a, b string) int { return len(b) - len(a) })
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := strings.ToLower(hello.ServerName)
			if c, ok := exact[name]; ok {
				return c, nil
			}
			for _, s := range suffixes {
				if strings.HasSuffix(name, s) {
					return bySuffix[s], nil
				}
			}
			return first, nil
		},
	}, nil
}

// slotConn gives back its MaxConnections slot when it closes, whichever
// path closes it.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// CloseWrite half-closes the connection underneath.
func (c *slotConn) CloseWrite() error { return closeWrite(c.Conn) }

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// connTracker knows the fast path's connections, for shutdown.
type connTracker struct {
	mu sync.Mutex
	m  map[*serverConn]struct{}
	wg sync.WaitGroup
}

func (t *connTracker) add(sc *serverConn) {
	t.mu.Lock()
	t.m[sc] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
}

func (t *connTracker) remove(sc *serverConn) {
	t.mu.Lock()
	delete(t.m, sc)
	t.mu.Unlock()
	t.wg.Done()
}

// drain wakes idle connections (they see the shutdown flag and close),
// lets busy ones finish their request, and closes what is left when ctx
// ends.
func (t *connTracker) drain(ctx context.Context) {
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		t.mu.Lock()
		for sc := range t.m {
			if sc.state.Load() == connIdle {
				sc.c.SetReadDeadline(time.Now())
			}
		}
		t.mu.Unlock()
		select {
		case <-done:
			return
		case <-ctx.Done():
			t.closeAll()
			<-done
			return
		case <-tick.C:
		}
	}
}

func (t *connTracker) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for sc := range t.m {
		sc.c.Close()
	}
}

// handoffListener feeds connections to the net/http server.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

type tlsConnKey struct{}

// connContext marks requests of TLS connections that reached net/http
// wrapped (so the request's TLS field is nil).
func connContext(ctx context.Context, c net.Conn) context.Context {
	if rc, ok := c.(*replayConn); ok && rc.isTLS {
		return context.WithValue(ctx, tlsConnKey{}, true)
	}
	return ctx
}

func (g *Gateway) accessLogEnabled() bool {
	return g.accessLog.Enabled(context.Background(), g.accessLevel)
}

// logAccess records one fast-path request; call it before the request
// head leaves the client buffer.
func (sc *serverConn) logAccess(start time.Time, re *routeEntry, wc *weightedCluster, ep *endpoint, status int, err error) {
	if !sc.g.accessLogEnabled() {
		return
	}
	r := &sc.req
	sc.g.logAccessFields(sc, string(r.method), string(r.target), string(r.host), start, re, wc, ep, status, err)
}

func (g *Gateway) logAccessFields(sc *serverConn, method, target, host string, start time.Time, re *routeEntry, wc *weightedCluster, ep *endpoint, status int, err error) {
	var route, cluster, upstream string
	if re != nil {
		route = re.name
	}
	if wc != nil {
		cluster = wc.name
	}
	if ep != nil {
		upstream = ep.addr
	}
	path := target
	for i := 0; i < len(path); i++ {
		if path[i] == '?' {
			path = path[:i]
			break
		}
	}
	g.writeAccess(string(sc.req.reqID), method, host, path, string(sc.remote), route, cluster, upstream, status, time.Since(start), err)
}

func (g *Gateway) writeAccess(reqID, method, host, path, client, route, cluster, upstream string, status int, d time.Duration, err error) {
	attrs := []slog.Attr{
		slog.String("request_id", reqID),
		slog.String("method", method),
		slog.String("host", host),
		slog.String("path", path),
		slog.Int("status", status),
		slog.String("route", route),
		slog.String("cluster", cluster),
		slog.String("upstream", upstream),
		slog.String("client", client),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	g.accessLog.LogAttrs(context.Background(), g.accessLevel, "access", attrs...)
}
