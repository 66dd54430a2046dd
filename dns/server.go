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
	"strconv"
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
	rrl     *rateLimiter // nil: no response rate limiting
	log     *slog.Logger
	udp     []*net.UDPConn // one per core with SO_REUSEPORT (Linux), else one
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
	udp, tcp, err := bind(cfg)
	if err != nil {
		return nil, err
	}
	closeAll := func() {
		for _, u := range udp {
			u.Close()
		}
		tcp.Close()
	}
	local := udp[0].LocalAddr().(*net.UDPAddr).AddrPort()
	cfg.nsAddr = local.Addr().Unmap()
	if cfg.Upstreams, err = checkUpstreams(cfg, local, log); err != nil {
		closeAll()
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		closeAll()
		return nil, err
	}
	h := newHandler(cfg, log, met)
	var rrl *rateLimiter
	if cfg.RateLimit > 0 {
		rrl = newRateLimiter(cfg.RateLimit, max(cfg.RateLimitSlip, 0))
	}
	return &Server{
		h:       h,
		rrl:     rrl,
		log:     log,
		udp:     udp,
		tcp:     tcp,
		addr:    local.String(),
		tcpMax:  cfg.MaxTCPConns,
		tcpIdle: cfg.TCPIdleTimeout,
	}, nil
}

// bind opens cfg.UDPSockets UDP sockets on cfg.Addr (SO_REUSEPORT when
// more than one) and TCP on the same ip and port. With port 0 the TCP port
// is the one UDP got; if another socket holds it, try again. The TCP
// listener, bound without SO_REUSEPORT, also keeps a second server from
// sharing the UDP port by chance: a port-0 bind may hand out a port whose
// UDP side another SO_REUSEPORT socket of the same user holds, but never
// one whose TCP side is taken.
func bind(cfg Config) ([]*net.UDPConn, *net.TCPListener, error) {
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen address %q: %w", cfg.Addr, err)
	}
	n := cfg.UDPSockets
	if !reusePortSupported {
		n = 1
	}
	lcUDP, err := listenConfig(cfg.FreeBind, n > 1)
	if err != nil {
		return nil, nil, err
	}
	lcTCP, err := listenConfig(cfg.FreeBind, false)
	if err != nil {
		return nil, nil, err
	}
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		pc, err := lcUDP.ListenPacket(ctx, "udp", cfg.Addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp %s: %w", cfg.Addr, err)
		}
		udp := []*net.UDPConn{pc.(*net.UDPConn)}
		got := net.JoinHostPort(host, fmt.Sprint(udp[0].LocalAddr().(*net.UDPAddr).Port))
		ln, err := lcTCP.Listen(ctx, "tcp", got)
		if err != nil {
			udp[0].Close()
			if port != "0" || attempt == 10 || !errors.Is(err, syscall.EADDRINUSE) {
				return nil, nil, fmt.Errorf("dns: listen tcp %s: %w", got, err)
			}
			continue
		}
		for len(udp) < n {
			pc, err := lcUDP.ListenPacket(ctx, "udp", got)
			if err != nil {
				for _, u := range udp {
					u.Close()
				}
				ln.Close()
				return nil, nil, fmt.Errorf("dns: listen udp %s (socket %d of %d): %w", got, len(udp)+1, n, err)
			}
			udp = append(udp, pc.(*net.UDPConn))
		}
		return udp, ln.(*net.TCPListener), nil
	}
}

// checkUpstreams resolves the upstreams given by host name (once, at
// start) and refuses any that would loop: the server itself (its address,
// or any local address when it is bound to the wildcard) or one of
// cfg.NoForwardTo.
func checkUpstreams(cfg Config, self netip.AddrPort, log *slog.Logger) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []string
	for _, u := range cfg.Upstreams {
		host, port, err := net.SplitHostPort(u)
		if err != nil {
			return nil, fmt.Errorf("dns: upstream %q: %w", u, err)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("dns: upstream %q: bad port", u)
		}
		var addrs []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			addrs = []netip.Addr{ip}
		} else if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, fmt.Errorf("dns: upstream %q: %w", u, err)
		}
		for _, ip := range addrs {
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(p))
			if err := loops(cfg, ap, self); err != nil {
				if cfg.UpstreamsFromSystem {
					log.Warn("ignoring an upstream from resolv.conf", "upstream", u, "err", err)
					continue
				}
				return nil, fmt.Errorf("dns: upstream %q: %w", u, err)
			}
			out = append(out, ap.String())
		}
	}
	return out, nil
}

// loops says why forwarding to ap could loop, or nil.
func loops(cfg Config, ap, self netip.AddrPort) error {
	if isSelf(ap, self) {
		return fmt.Errorf("%s is this server: forwarding would loop; give another --dns-upstream", ap)
	}
	for _, n := range cfg.NoForwardTo {
		if n.Contains(ap.Addr()) {
			return fmt.Errorf("%s is in %s, where other Berth DNS servers listen: forwarding could loop", ap, n)
		}
	}
	for _, a := range cfg.NoForwardToAddrs {
		if a.Addr().Unmap() == ap.Addr() && a.Port() == ap.Port() {
			return fmt.Errorf("%s is another Berth DNS server: forwarding could loop", ap)
		}
	}
	return nil
}

// isSelf: ap is the server's own address, or, for a wildcard bind, one
// of this host's addresses on the server's port.
func isSelf(ap, self netip.AddrPort) bool {
	if ap.Port() != self.Port() {
		return false
	}
	if !self.Addr().IsUnspecified() {
		return ap.Addr() == self.Addr().Unmap()
	}
	if ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() {
		return true
	}
	ifaddrs, _ := net.InterfaceAddrs()
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ap.Addr() {
			return true
		}
	}
	return false
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
	// One reader per socket; a single socket (no SO_REUSEPORT) gets a
	// reader per core.
	readers := 1
	if len(s.udp) == 1 {
		readers = runtime.GOMAXPROCS(0)
	}
	for _, conn := range s.udp {
		for range readers {
			wg.Go(func() { s.serveUDP(ctx, &wg, conn) })
		}
	}
	conns := &connSet{m: make(map[net.Conn]netip.Addr), perClient: make(map[netip.Addr]int), maxPer: s.h.cfg.MaxTCPConnsPerClient}
	wg.Go(func() { s.serveTCP(ctx, &wg, conns) })

	<-ctx.Done()
	for _, u := range s.udp {
		u.Close()
	}
	s.tcp.Close()
	conns.closeAll()
	wg.Wait()
	s.log.Info("dns server stopped", "addr", s.addr)
	return nil
}

func (s *Server) serveUDP(ctx context.Context, wg *sync.WaitGroup, conn *net.UDPConn) {
	buf := make([]byte, dns.MaxMsgSize)
	reply := make([]byte, MaxUDPSize) // the fast path's replies are written here
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			s.log.Debug("udp read", "err", err)
			continue
		}
		client := from.Addr().Unmap()
		out, fq := s.h.handle(buf[:n], client, true, reply)
		if fq != nil {
			out = s.h.startForward(ctx, wg, fq, func(out []byte) {
				if out != nil {
					conn.WriteToUDPAddrPort(out, from)
				}
			})
			if out == nil {
				continue
			}
		}
		if out != nil && s.rrl != nil {
			switch s.rrl.check(client, time.Now()) {
			case rrlDrop:
				s.h.met.rateLimited.WithLabelValues("dropped").Inc()
				continue
			case rrlSlip:
				s.h.met.rateLimited.WithLabelValues("truncated").Inc()
				out = truncatedReply(out)
			}
		}
		if out != nil {
			if _, err := conn.WriteToUDPAddrPort(out, from); err != nil && ctx.Err() == nil {
				s.log.Debug("udp write", "client", from, "err", err)
			}
		}
	}
}

type connSet struct {
	mu        sync.Mutex
	m         map[net.Conn]netip.Addr
	perClient map[netip.Addr]int
	maxPer    int
	closed    bool
}

// add records conn from client; it fails when the set is closed or the
// client already has maxPer connections.
func (c *connSet) add(conn net.Conn, client netip.Addr) (ok, clientFull bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, false
	}
	if c.perClient[client] >= c.maxPer {
		return false, true
	}
	c.m[conn] = client
	c.perClient[client]++
	return true, false
}

func (c *connSet) remove(conn net.Conn) {
	c.mu.Lock()
	if client, ok := c.m[conn]; ok {
		if c.perClient[client]--; c.perClient[client] <= 0 {
			delete(c.perClient, client)
		}
	}
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
		ok, clientFull := conns.add(conn, conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
		if !ok {
			conn.Close()
			<-slots
			if clientFull {
				s.h.met.dropped.Inc()
				continue // one client may not take every connection
			}
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

// tcpPipeline is how many forwarded queries one TCP connection may have
// in flight while its later queries are answered.
const tcpPipeline = 16

// serveConn answers the length-prefixed queries on one TCP connection
// until the client closes it, goes idle or sends garbage. Answers from the
// zone are written at once; a forwarded query is answered when its
// upstream replies, so a slow forward never holds back the answers behind
// it (out of order, RFC 7766 §6.2.1.1: the ids tell them apart).
func (s *Server) serveConn(ctx context.Context, conn *net.TCPConn) {
	client := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	var lenBuf [2]byte
	buf := make([]byte, 0, 512)
	// Replies go out with their length prefix; the fast path writes into
	// reply[2:], larger replies are allocated.
	reply := make([]byte, 2+4096)
	var wmu sync.Mutex
	write := func(out []byte, inPlace bool) bool {
		var msg []byte
		if inPlace {
			msg = reply[:2+len(out)]
		} else {
			msg = make([]byte, 2+len(out))
			copy(msg[2:], out)
		}
		binary.BigEndian.PutUint16(msg, uint16(len(out)))
		wmu.Lock()
		defer wmu.Unlock()
		conn.SetWriteDeadline(time.Now().Add(s.tcpIdle))
		_, err := conn.Write(msg)
		return err == nil
	}
	var forwards sync.WaitGroup
	defer forwards.Wait()
	pipeline := make(chan struct{}, tcpPipeline)
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
		out, p := s.h.handle(buf, client, false, reply[2:2:len(reply)])
		if p != nil {
			select {
			case pipeline <- struct{}{}:
			case <-ctx.Done():
				return
			}
			out = s.h.startForward(ctx, &forwards, p, func(out []byte) {
				defer func() { <-pipeline }()
				if out != nil && !write(out, false) {
					conn.Close()
				}
			})
			if out == nil {
				continue
			}
			<-pipeline // answered at once: no forward holds the place
		}
		if out == nil {
			return
		}
		if !write(out, len(out) <= len(reply)-2 && &out[0] == &reply[2]) {
			return
		}
	}
}

// Records returns what the server answers now, one record per line in
// presentation format, sorted (see Table.Records); for `berth get dns`
// style debugging, not for the query path.
func (s *Server) Records() []string { return s.h.table.Load().Records() }
