package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/berth-dev/berth/discovery"
)

// Server serves the zone over UDP and TCP on one address. New binds the
// sockets; Run serves until its context ends. Update may be called at any
// time, before or during Run, from any goroutine (the last call wins).
type Server struct {
	h       *handler
	log     *slog.Logger
	udp     *net.UDPConn
	tcp     *net.TCPListener
	addr    string
	tcpMax  int
	tcpIdle time.Duration
	ran     atomic.Bool
}

// New validates cfg, registers the metrics and binds the UDP and TCP
// sockets, so Addr is known when it returns. Until the first Update,
// queries for names in the zone get SERVFAIL (not NXDOMAIN, which clients
// would cache); forwarding works from the start.
func New(cfg Config) (*Server, error) {
	cfg = cfg.normalize()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "dns")
	lc, err := listenConfig(cfg.FreeBind)
	if err != nil {
		return nil, err
	}
	udp, tcp, err := bind(lc, cfg.Addr)
	if err != nil {
		return nil, err
	}
	local := udp.LocalAddr().(*net.UDPAddr).AddrPort()
	cfg.nsAddr = local.Addr().Unmap()
	cfg.Upstreams = withoutSelf(cfg.Upstreams, local, log)
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		udp.Close()
		tcp.Close()
		return nil, err
	}
	h := newHandler(cfg, log, met)
	return &Server{
		h:       h,
		log:     log,
		udp:     udp,
		tcp:     tcp,
		addr:    local.String(),
		tcpMax:  cfg.MaxTCPConns,
		tcpIdle: cfg.TCPIdleTimeout,
	}, nil
}

// bind opens UDP on addr and TCP on the same ip and port. With port 0 the
// TCP port is the one UDP got; if another socket holds it, try again.
func bind(lc net.ListenConfig, addr string) (*net.UDPConn, *net.TCPListener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen address %q: %w", addr, err)
	}
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		udp := pc.(*net.UDPConn)
		got := udp.LocalAddr().(*net.UDPAddr).Port
		ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, fmt.Sprint(got)))
		if err == nil {
			return udp, ln.(*net.TCPListener), nil
		}
		udp.Close()
		if port != "0" || attempt == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("dns: listen tcp %s: %w", net.JoinHostPort(host, fmt.Sprint(got)), err)
		}
	}
}

// withoutSelf drops upstreams that are the server itself, which would
// loop every forwarded query back in.
func withoutSelf(ups []string, self netip.AddrPort, log *slog.Logger) []string {
	var out []string
	for _, u := range ups {
		ap, err := netip.ParseAddrPort(u)
		if err == nil && ap.Port() == self.Port() &&
			(ap.Addr().Unmap() == self.Addr().Unmap() || self.Addr().IsUnspecified()) {
			log.Warn("ignoring upstream that is this server", "upstream", u)
			continue
		}
		out = append(out, u)
	}
	return out
}

// Addr returns the "ip:port" the server is bound to.
func (s *Server) Addr() string { return s.addr }

// Update swaps in the answer table built from snap. Building happens in the
// caller's goroutine; queries keep using the old table until the swap and
// never wait for it.
func (s *Server) Update(snap *discovery.Snapshot) { s.h.update(snap) }

// Run serves until ctx ends, then closes the sockets, waits for the
// queries in progress (forwarded ones are cancelled) and returns nil. It
// may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("dns: server already ran")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.log.Info("dns server started", "addr", s.addr, "zone", s.h.cfg.Zone, "upstreams", s.h.cfg.Upstreams)

	var wg sync.WaitGroup
	readers := runtime.GOMAXPROCS(0)
	for range readers {
		wg.Go(func() { s.serveUDP(ctx, &wg) })
	}
	conns := &connSet{m: make(map[net.Conn]struct{})}
	wg.Go(func() { s.serveTCP(ctx, &wg, conns) })

	<-ctx.Done()
	s.udp.Close()
	s.tcp.Close()
	conns.closeAll()
	wg.Wait()
	s.log.Info("dns server stopped", "addr", s.addr)
	return nil
}

func (s *Server) serveUDP(ctx context.Context, wg *sync.WaitGroup) {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			s.log.Debug("udp read", "err", err)
			continue
		}
		client := from.Addr().Unmap()
		out, fq := s.h.handle(buf[:n], client, true)
		if fq != nil {
			if !s.h.fwd.tryAcquire() {
				out = s.h.limited(fq)
			} else {
				wg.Go(func() {
					defer s.h.fwd.release()
					if out := s.h.forward(ctx, fq); out != nil {
						s.udp.WriteToUDPAddrPort(out, from)
					}
				})
				continue
			}
		}
		if out != nil {
			if _, err := s.udp.WriteToUDPAddrPort(out, from); err != nil && ctx.Err() == nil {
				s.log.Debug("udp write", "client", from, "err", err)
			}
		}
	}
}

type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

func (c *connSet) add(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.m[conn] = struct{}{}
	return true
}

func (c *connSet) remove(conn net.Conn) {
	c.mu.Lock()
	delete(c.m, conn)
	c.mu.Unlock()
}

func (c *connSet) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for conn := range c.m {
		conn.Close()
	}
}

func (s *Server) serveTCP(ctx context.Context, wg *sync.WaitGroup, conns *connSet) {
	slots := make(chan struct{}, s.tcpMax)
	for {
		conn, err := s.tcp.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			s.log.Warn("tcp accept", "err", err)
			select { // e.g. EMFILE: do not spin
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			conn.Close() // too many connections
			continue
		}
		if !conns.add(conn) {
			conn.Close()
			<-slots
			return
		}
		wg.Go(func() {
			defer func() { <-slots }()
			defer conns.remove(conn)
			defer conn.Close()
			s.serveConn(ctx, conn)
		})
	}
}

// serveConn answers the length-prefixed queries on one TCP connection in
// order, until the client closes it, goes idle or sends garbage.
func (s *Server) serveConn(ctx context.Context, conn *net.TCPConn) {
	client := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	var lenBuf [2]byte
	buf := make([]byte, 0, 512)
	for {
		conn.SetReadDeadline(time.Now().Add(s.tcpIdle))
		if _, err := io.ReadFull(conn, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(conn, buf); err != nil {
			return
		}
		out := s.h.serve(ctx, buf, client, false)
		if out == nil {
			return
		}
		msg := make([]byte, 2+len(out))
		binary.BigEndian.PutUint16(msg, uint16(len(out)))
		copy(msg[2:], out)
		conn.SetWriteDeadline(time.Now().Add(s.tcpIdle))
		if _, err := conn.Write(msg); err != nil {
			return
		}
	}
}
