package dns

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer runs a server on 127.0.0.1:0 until the test ends.
func startServer(t *testing.T, opts ...func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Logger = discardLogger()
	cfg.UpstreamTimeout = 10 * time.Second // generous: CI machines are loaded
	cfg.Registerer = prometheus.NewRegistry()
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

func exchange(t *testing.T, net, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s exchange %s: %v", net, m.Question[0].Name, err)
	}
	return r
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestServerAnswersOverUDPAndTCP(t *testing.T) {
	s := startServer(t)
	s.Update(testSnapshot())
	for _, netw := range []string{"udp", "tcp"} {
		r := exchange(t, netw, s.Addr(), query("Web.Default.svc.berth.internal.", dns.TypeA))
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative {
			t.Fatalf("%s: %v", netw, r)
		}
		if got := rdata(r.Answer); !slices.Equal(got, []string{"10.1.0.1", "10.1.0.2", "10.1.0.5"}) {
			t.Errorf("%s: answers = %q", netw, got)
		}
		if r.Question[0].Name != "Web.Default.svc.berth.internal." {
			t.Errorf("%s: question case not echoed: %q", netw, r.Question[0].Name)
		}
		if r.IsEdns0() != nil {
			t.Errorf("%s: OPT in the reply to a query without one", netw)
		}
		r = exchange(t, netw, s.Addr(), query("nope.default.svc.berth.internal.", dns.TypeA))
		if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
			t.Errorf("%s: NXDOMAIN: %v", netw, r)
		}
	}
	if got := counterValue(t, s.h.met.queries.WithLabelValues("A", "NOERROR")); got != 2 {
		t.Errorf("berth_dns_queries_total{A,NOERROR} = %v, want 2", got)
	}
}

func TestServerServfailBeforeFirstUpdate(t *testing.T) {
	s := startServer(t)
	r := exchange(t, "udp", s.Addr(), query("web.default.svc.berth.internal.", dns.TypeA))
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL before the first snapshot", dns.RcodeToString[r.Rcode])
	}
}

func TestServerTruncatesOverUDPAndCompletesOverTCP(t *testing.T) {
	s := startServer(t)
	s.Update(bigSnapshot(100, 1))
	name := "big.default.svc.berth.internal."

	r := exchange(t, "udp", s.Addr(), query(name, dns.TypeA))
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Errorf("UDP without EDNS: TC=%v with %d answers, want TC and fewer than 100", r.Truncated, len(r.Answer))
	}
	r = exchange(t, "tcp", s.Addr(), query(name, dns.TypeA))
	if r.Truncated || len(r.Answer) != 100 {
		t.Errorf("TCP: TC=%v with %d answers, want all 100", r.Truncated, len(r.Answer))
	}
}

func TestServerEDNS(t *testing.T) {
	s := startServer(t)
	s.Update(bigSnapshot(60, 1)) // ~1 KB: too big for 512, fits 1232
	name := "big.default.svc.berth.internal."

	r := exchange(t, "udp", s.Addr(), query(name, dns.TypeA))
	if !r.Truncated {
		t.Errorf("without EDNS: 60 answers were not truncated")
	}
	q := query(name, dns.TypeA)
	q.SetEdns0(4096, false)
	c := &dns.Client{Net: "udp", UDPSize: 4096, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(q, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	opt := r.IsEdns0()
	if opt == nil {
		t.Fatal("no OPT in the reply to an EDNS query")
	}
	if opt.UDPSize() != MaxUDPSize {
		t.Errorf("OPT UDP size = %d, want %d", opt.UDPSize(), MaxUDPSize)
	}
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("with EDNS: TC=%v, %d answers, want all 60", r.Truncated, len(r.Answer))
	}
}

func TestServerFormerrAndDrops(t *testing.T) {
	s := startServer(t)
	s.Update(testSnapshot())
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A header claiming one question, and no question: FORMERR.
	if _, err := conn.Write([]byte{0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'a'}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var r dns.Msg
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if r.Id != 0xbeef || !r.Response || r.Rcode != dns.RcodeFormatError || !r.RecursionDesired {
		t.Errorf("reply = %v, want FORMERR for id 0xbeef", &r)
	}
	// Too short for a header: dropped, and the server still answers.
	conn.Write([]byte{1, 2, 3})
	if r := exchange(t, "udp", s.Addr(), query("web.default.svc.berth.internal.", dns.TypeA)); len(r.Answer) != 3 {
		t.Errorf("after a runt packet: %v", r)
	}
}

// stubUpstream is a DNS server on 127.0.0.1:0 (UDP and TCP) that answers
// every A query with 192.0.2.10, TTL 60; over UDP it truncates names
// starting with "tc.".
type stubUpstream struct {
	addr    string
	queries atomic.Int64
}

func startUpstream(t *testing.T) *stubUpstream {
	t.Helper()
	u := &stubUpstream{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.queries.Add(1)
		if strings.HasPrefix(req.Question[0].Name, "slow") {
			time.Sleep(time.Second) // an upstream that takes its time
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		q := req.Question[0]
		if q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Name + " 60 IN A 192.0.2.10")
			m.Answer = append(m.Answer, rr)
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp && len(q.Name) > 3 && q.Name[:3] == "tc." {
			m.Answer = nil
			m.Truncated = true
		}
		w.WriteMsg(m)
	})
	// UDP on a free port, then TCP on the same one; another test may hold
	// that TCP port, so try again with a new one.
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if attempt == 20 {
			t.Fatal(err)
		}
	}
	u.addr = pc.LocalAddr().String()
	var wg sync.WaitGroup
	// Runs after the Shutdowns below (cleanups are LIFO). miekg/dns's
	// Shutdown has been seen not to stop a busy UDP reader, so the sockets
	// are closed too and the wait is bounded.
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("stub upstream did not stop within 10s")
		}
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { srv.ActivateAndServe() })
		<-started
		t.Cleanup(func() {
			srv.Shutdown()
			pc.Close()
			ln.Close()
		})
	}
	return u
}

func TestServerForwardsAndCaches(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up.addr} })
	s.Update(testSnapshot())

	for i := range 2 {
		r := exchange(t, "udp", s.Addr(), query("Example.COM.", dns.TypeA))
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Authoritative || !r.RecursionAvailable {
			t.Fatalf("query %d: %v", i, r)
		}
		if a := r.Answer[0].(*dns.A); a.A.String() != "192.0.2.10" || a.Hdr.Ttl > 60 || a.Hdr.Ttl < 58 {
			t.Errorf("query %d: answer %v", i, a)
		}
		if r.Question[0].Name != "Example.COM." {
			t.Errorf("query %d: question %q, want the case as sent", i, r.Question[0].Name)
		}
	}
	if got := up.queries.Load(); got != 1 {
		t.Errorf("upstream saw %d queries, want 1 (second from cache)", got)
	}
	if got := counterValue(t, s.h.met.cacheHits); got != 1 {
		t.Errorf("cache hits = %v, want 1", got)
	}
	// In-zone names are still answered here, not forwarded.
	if r := exchange(t, "udp", s.Addr(), query("web.default.svc.berth.internal.", dns.TypeA)); len(r.Answer) != 3 {
		t.Errorf("in-zone: %v", r)
	}
	// Truncated upstream UDP answers are retried over TCP.
	r := exchange(t, "tcp", s.Addr(), query("tc.example.com.", dns.TypeA))
	if r.Truncated || len(r.Answer) != 1 {
		t.Errorf("TCP fallback to upstream: %v", r)
	}
}

func TestServerForwardFailureIsServfail(t *testing.T) {
	// A port nothing listens on: loopback answers with port unreachable.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()
	s := startServer(t, func(c *Config) {
		c.Upstreams = []string{dead}
		c.UpstreamTimeout = 500 * time.Millisecond
	})
	r := exchange(t, "udp", s.Addr(), query("example.com.", dns.TypeA))
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

func TestServerUpdateWhileQuerying(t *testing.T) {
	s := startServer(t)
	s.Update(bigSnapshot(3, 1))
	name := "big.default.svc.berth.internal."

	stop := make(chan struct{})
	var updater sync.WaitGroup
	updater.Go(func() {
		for gen := 2; ; gen++ {
			select {
			case <-stop:
				return
			default:
			}
			s.Update(bigSnapshot(1+gen%5, gen%200))
		}
	})

	errs := make(chan error, 4)
	var queriers sync.WaitGroup
	for w := range 4 {
		queriers.Go(func() {
			c := &dns.Client{Net: []string{"udp", "tcp"}[w%2], Timeout: 2 * time.Second}
			for range 200 {
				r, _, err := c.Exchange(query(name, dns.TypeA), s.Addr())
				if err != nil {
					errs <- err
					return
				}
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
					errs <- fmt.Errorf("reply %v", r)
					return
				}
				// Every answer comes whole from one snapshot: one generation.
				gen := r.Answer[0].(*dns.A).A[1]
				for _, rr := range r.Answer {
					if rr.(*dns.A).A[1] != gen {
						errs <- fmt.Errorf("answer mixes snapshots: %v", r.Answer)
						return
					}
				}
			}
		})
	}
	queriers.Wait()
	close(stop)
	updater.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestRunStopsAndLeaksNothing(t *testing.T) {
	up := startUpstream(t) // stopped at cleanup, after this check
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Logger = discardLogger()
	cfg.Upstreams = []string{up.addr}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Update(testSnapshot())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	exchange(t, "udp", s.Addr(), query("example.com.", dns.TypeA))
	// An idle TCP connection must not hold Run up.
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := &dns.Conn{Conn: conn}
	if err := tc.WriteMsg(query("web.default.svc.berth.internal.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	if r, err := tc.ReadMsg(); err != nil || len(r.Answer) != 3 {
		t.Fatalf("TCP: %v %v", r, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := s.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
	// The sockets are closed: the port can be bound again.
	pc, err := net.ListenPacket("udp", s.Addr())
	if err != nil {
		t.Errorf("UDP port still bound after Run: %v", err)
	} else {
		pc.Close()
	}
}

func TestNewErrors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Logger = discardLogger()
	cfg.Addr = "127.0.0.1:0"
	cfg.Upstreams = []string{"no-port"}
	if _, err := New(cfg); err == nil {
		t.Error("upstream without port accepted")
	}
	cfg.Upstreams = nil
	cfg.Addr = "nonsense"
	if _, err := New(cfg); err == nil {
		t.Error("address without port accepted")
	}
	// Metrics registered twice on one registry: the second New fails.
	reg := prometheus.NewRegistry()
	cfg.Addr = "127.0.0.1:0"
	cfg.Registerer = reg
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	defer s.Run(ctx) // closes its sockets
	if _, err := New(cfg); err == nil {
		t.Error("second New on one registry succeeded")
	}
}

func TestNewRefusesForwardingLoops(t *testing.T) {
	// A fixed address is needed (the upstream list names it); another
	// process may take a free port before New binds it, so try again.
	for _, tc := range []struct {
		name      string
		upstreams func(port string) []string
		mutate    func(*Config)
		want      string
	}{
		{"itself by address", func(p string) []string { return []string{"127.0.0.1:" + p} }, nil, "is this server"},
		{"itself by host name", func(p string) []string { return []string{"127.0.0.2:1", "localhost:" + p} }, nil, "is this server"},
		{"itself, from resolv.conf: dropped", func(p string) []string { return []string{"127.0.0.1:" + p, "127.0.0.2:1"} },
			func(c *Config) { c.UpstreamsFromSystem = true }, ""},
		{"another Berth DNS network", func(string) []string { return []string{"10.213.7.1:53"} },
			func(c *Config) { c.NoForwardTo = []netip.Prefix{netip.MustParsePrefix("10.213.0.0/16")} }, "other Berth DNS servers"},
		{"another Berth DNS server", func(string) []string { return []string{"127.0.0.1:1053"} },
			func(c *Config) { c.NoForwardToAddrs = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1053")} }, "another Berth DNS server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for attempt := 0; ; attempt++ {
				pc, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr := pc.LocalAddr().String()
				pc.Close()
				_, port, _ := net.SplitHostPort(addr)
				cfg := DefaultConfig()
				cfg.Logger = discardLogger()
				cfg.Addr = addr
				cfg.Upstreams = tc.upstreams(port)
				if tc.mutate != nil {
					tc.mutate(&cfg)
				}
				s, err := New(cfg)
				if err == nil {
					ctx, cancel := context.WithCancel(context.Background())
					cancel()
					s.Run(ctx)
					if tc.want == "" && slices.Equal(s.h.cfg.Upstreams, []string{"127.0.0.2:1"}) {
						return // the looping one dropped, the other kept
					}
					t.Fatalf("New accepted upstreams %v (kept %v)", cfg.Upstreams, s.h.cfg.Upstreams)
				}
				if strings.Contains(err.Error(), tc.want) {
					return
				}
				if attempt == 20 {
					t.Fatalf("New: %v, want an error saying %q", err, tc.want)
				}
			}
		})
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := `# generated
search example.internal
nameserver 192.0.2.53
nameserver 127.0.0.53 ; stub
nameserver fe80::1%eth0
nameserver 2001:db8::1
nameserver not-an-ip
options edns0 trust-ad
`
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := UpstreamsFromResolvConf(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.53:53", "127.0.0.53:53", "[fe80::1%eth0]:53", "[2001:db8::1]:53"}
	if !slices.Equal(got, want) {
		t.Errorf("upstreams = %q, want %q", got, want)
	}
	if _, err := UpstreamsFromResolvConf(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestServerSRVAndPTROverUDP(t *testing.T) {
	s := startServer(t)
	s.Update(testSnapshot())
	q := query("_HTTP._tcp.web.default.svc.berth.internal.", dns.TypeSRV)
	q.SetEdns0(1232, false)
	r := exchange(t, "udp", s.Addr(), q)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 4 || !r.Authoritative {
		t.Fatalf("SRV: %v", r)
	}
	if r.Question[0].Name != "_HTTP._tcp.web.default.svc.berth.internal." {
		t.Errorf("question case not echoed: %q", r.Question[0].Name)
	}
	addrs := 0
	for _, rr := range r.Extra {
		if rr.Header().Rrtype == dns.TypeA || rr.Header().Rrtype == dns.TypeAAAA {
			addrs++
		}
	}
	if addrs != 4 || r.IsEdns0() == nil {
		t.Errorf("additional = %v, want the 4 targets' addresses and the OPT", r.Extra)
	}
	r = exchange(t, "udp", s.Addr(), query("2.0.1.10.in-addr.arpa.", dns.TypePTR))
	if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "web-b.web.default.svc.berth.internal." {
		t.Errorf("PTR: %v", r)
	}
	// No upstreams: a reverse name that is not an endpoint's is refused.
	if r := exchange(t, "udp", s.Addr(), query("9.9.9.10.in-addr.arpa.", dns.TypePTR)); r.Rcode != dns.RcodeRefused {
		t.Errorf("unknown PTR: %v", r)
	}
}

// TestServerReusePortSockets: with several SO_REUSEPORT sockets every
// client is answered, whichever socket the kernel hands it to.
func TestServerReusePortSockets(t *testing.T) {
	s := startServer(t, func(c *Config) { c.UDPSockets = 4 })
	if reusePortSupported && len(s.udp) != 4 {
		t.Fatalf("%d UDP sockets, want 4", len(s.udp))
	}
	s.Update(testSnapshot())
	for i := range 16 { // 16 clients, each its own source port
		r := exchange(t, "udp", s.Addr(), query("web.default.svc.berth.internal.", dns.TypeA))
		if len(r.Answer) != 3 {
			t.Fatalf("client %d: %v", i, r)
		}
	}
}

// TestHandlerRefusesNonPodClients: recursion is refused to a client that
// is neither loopback nor on a pod network, on the packet path.
func TestHandlerRefusesNonPodClients(t *testing.T) {
	up := startUpstream(t)
	cfg := DefaultConfig().normalize()
	cfg.Logger = discardLogger()
	cfg.Upstreams = []string{up.addr}
	cfg.UpstreamTimeout = 10 * time.Second // a loaded CI machine must not turn this into SERVFAIL
	cfg.AllowRecursion = []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16")}
	met, _ := newMetrics(nil)
	h := newHandler(cfg, cfg.Logger, met)
	h.update(testSnapshot())
	b, _ := query("example.com.", dns.TypeA).Pack()
	for _, c := range []struct {
		client netip.Addr
		rcode  int
	}{{netip.MustParseAddr("192.0.2.1"), dns.RcodeRefused}, {netip.MustParseAddr("10.88.3.4"), dns.RcodeSuccess}} {
		var r dns.Msg
		if err := r.Unpack(h.serve(context.Background(), b, c.client, true, nil)); err != nil {
			t.Fatal(err)
		}
		if r.Rcode != c.rcode {
			t.Errorf("client %v: rcode %s, want %s", c.client, dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
		}
	}
	if got := up.queries.Load(); got != 1 {
		t.Errorf("upstream saw %d queries, want 1 (the pod client's)", got)
	}
}
