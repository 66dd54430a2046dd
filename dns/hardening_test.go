package dns

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Hostile and unusual clients (issue #11): each test fails on the server
// as it was before the hardening.

// TestForwardShareFlood: one client flooding names outside the zone at a
// slow upstream uses up its own share of forwarding, not everyone's.
func TestForwardShareFlood(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up.addr}; c.MaxForwards = 64 })
	flood, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s.Addr()))
	for i := range 300 {
		b, _ := query(fmt.Sprintf("slow%d.example.", i), dns.TypeA).Pack()
		flood.WriteToUDP(b, to)
	}
	// Another pod (another address) still resolves at once.
	// (It retries as stub resolvers do: the flood can overflow the
	// socket's receive buffer, which drops packets before any rule.)
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	var r *dns.Msg
	for range 3 {
		if r, _, err = c.Exchange(query("fast.example.", dns.TypeA), s.Addr()); err == nil {
			break
		}
	}
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("a second client during the flood: %v %v", r, err)
	}
	// The flood may still be being read when the other client's answer
	// comes back: give the server time to reach its share.
	for deadline := time.Now().Add(5 * time.Second); counterValue(t, s.h.met.forwarded.WithLabelValues(limitedClient)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the flooding client was never limited")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestForwardPolicy: only recursive class IN queries other than zone
// transfers go upstream.
func TestForwardPolicy(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up.addr} })
	s.Update(testSnapshot())
	ch := query("version.bind.", dns.TypeTXT)
	ch.Question[0].Qclass = dns.ClassCHAOS
	axfr := query("example.com.", dns.TypeAXFR)
	norec := query("example.com.", dns.TypeA)
	norec.RecursionDesired = false
	for name, m := range map[string]*dns.Msg{"CH version.bind": ch, "AXFR": axfr, "RD=0": norec} {
		for _, net := range []string{"udp", "tcp"} {
			if r := exchange(t, net, s.Addr(), m); r.Rcode != dns.RcodeRefused {
				t.Errorf("%s over %s: %s, want REFUSED", name, net, dns.RcodeToString[r.Rcode])
			}
		}
	}
	if n := up.queries.Load(); n != 0 {
		t.Errorf("upstream asked %d times", n)
	}
	// A normal recursive query is still forwarded.
	if r := exchange(t, "udp", s.Addr(), query("example.com.", dns.TypeA)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("forwarding: %v", r)
	}
}

// TestDOBitEchoed: the DO bit comes back as sent, on the fast path (an A
// query in the zone) and the general path (ANY, forwarded).
func TestDOBitEchoed(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up.addr} })
	s.Update(testSnapshot())
	for _, name := range []string{"web.default.svc.berth.internal.", "example.org."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeANY} {
			for _, do := range []bool{true, false} {
				m := query(name, qtype)
				m.SetEdns0(1232, do)
				r := exchange(t, "udp", s.Addr(), m)
				opt := r.IsEdns0()
				if opt == nil || opt.Do() != do {
					t.Errorf("%s %s DO=%v: reply OPT %v", name, dns.TypeToString[qtype], do, opt)
				}
			}
		}
	}
}

// TestMalformedQueriesFormerr: two OPT records (RFC 6891 §6.1.1) and a
// question without its class get FORMERR.
func TestMalformedQueriesFormerr(t *testing.T) {
	s := startServer(t)
	s.Update(testSnapshot())
	twoOPT := query("web.default.svc.berth.internal.", dns.TypeA)
	twoOPT.SetEdns0(1232, false)
	o := new(dns.OPT)
	o.Hdr.Name, o.Hdr.Rrtype = ".", dns.TypeOPT
	twoOPT.Extra = append(twoOPT.Extra, o)
	b2, err := twoOPT.Pack()
	if err != nil {
		t.Fatal(err)
	}
	full, _ := query("web.default.svc.berth.internal.", dns.TypeA).Pack()
	noClass := full[:len(full)-2]
	for name, b := range map[string][]byte{"two OPT": b2, "no class": noClass} {
		c, err := net.Dial("udp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write(b)
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || n < 12 || buf[3]&0x0f != dns.RcodeFormatError {
			t.Errorf("%s: %x %v, want FORMERR", name, buf[:n], err)
		}
	}
}

// TestTCOnlyWhenAnswersCut: dropping additional records alone does not
// set TC (RFC 2181 §9).
func TestTCOnlyWhenAnswersCut(t *testing.T) {
	req := query("x.example.", dns.TypeSRV)
	resp := new(dns.Msg)
	resp.SetReply(req)
	srv, _ := dns.NewRR("x.example. 5 IN SRV 0 0 80 a.example.")
	resp.Answer = []dns.RR{srv}
	for i := range 60 {
		rr, _ := dns.NewRR(fmt.Sprintf("glue%d.example. 5 IN A 192.0.2.%d", i, i))
		resp.Extra = append(resp.Extra, rr)
	}
	fit(resp, req, true)
	if resp.Truncated || len(resp.Answer) != 1 || len(resp.Extra) == 60 {
		t.Fatalf("glue cut: TC=%v answers %d extra %d", resp.Truncated, len(resp.Answer), len(resp.Extra))
	}
	resp.Answer, resp.Extra = nil, nil
	for i := range 60 {
		rr, _ := dns.NewRR(fmt.Sprintf("x.example. 5 IN A 192.0.2.%d", i))
		resp.Answer = append(resp.Answer, rr)
	}
	fit(resp, req, true)
	if !resp.Truncated {
		t.Fatal("answers cut without TC")
	}
}

// TestTCPAnswersOutOfOrder: an answer from the zone does not wait behind
// a slow forward on the same connection.
func TestTCPAnswersOutOfOrder(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up.addr} })
	s.Update(testSnapshot())
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &dns.Conn{Conn: conn}
	slow := query("slow.example.", dns.TypeA)
	slow.Id = 1
	fast := query("web.default.svc.berth.internal.", dns.TypeA)
	fast.Id = 2
	c.WriteMsg(slow)
	c.WriteMsg(fast)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var order []uint16
	for range 2 {
		r, err := c.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, r.Id)
	}
	if order[0] != 2 || order[1] != 1 {
		t.Fatalf("answers in order %v: the zone answer waited for the forward", order)
	}
}

// TestTCPPerClientCap: one client cannot hold every TCP connection.
func TestTCPPerClientCap(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxTCPConnsPerClient = 2 })
	s.Update(testSnapshot())
	dial := func(ip net.IP) *dns.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
		conn, err := d.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return &dns.Conn{Conn: conn}
	}
	ask := func(c *dns.Conn) error {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if err := c.WriteMsg(query("web.default.svc.berth.internal.", dns.TypeA)); err != nil {
			return err
		}
		_, err := c.ReadMsg()
		return err
	}
	a, b := dial(net.IPv4(127, 0, 0, 1)), dial(net.IPv4(127, 0, 0, 1))
	for _, c := range []*dns.Conn{a, b} {
		if err := ask(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := ask(dial(net.IPv4(127, 0, 0, 1))); err == nil {
		t.Error("a third connection from one client was served")
	}
	if err := ask(dial(net.IPv4(127, 0, 0, 3))); err != nil {
		t.Errorf("another client: %v", err)
	}
}

// TestCacheKeysOnDOAndCD: a DO or CD query is not answered from the cache
// entry of a plain one.
func TestCacheKeysOnDOAndCD(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up.addr} })
	plain := query("cached.example.", dns.TypeA)
	withDO := query("cached.example.", dns.TypeA)
	withDO.SetEdns0(1232, true)
	withCD := query("cached.example.", dns.TypeA)
	withCD.CheckingDisabled = true
	for _, m := range []*dns.Msg{plain, withDO, withCD, plain, withDO, withCD} {
		exchange(t, "udp", s.Addr(), m)
	}
	if n := up.queries.Load(); n != 3 {
		t.Errorf("upstream asked %d times, want 3 (one per DO/CD variant)", n)
	}
}

func TestCacheBoundedByBytes(t *testing.T) {
	c := newCache(1000, 2000, time.Minute)
	now := time.Unix(1000, 0)
	for i := range 200 {
		m := new(dns.Msg)
		m.SetReply(query(fmt.Sprintf("n%d.example.", i), dns.TypeA))
		rr, _ := dns.NewRR(fmt.Sprintf("n%d.example. 60 IN A 192.0.2.1", i))
		m.Answer = []dns.RR{rr}
		c.put(keyOf(query(fmt.Sprintf("n%d.example.", i), dns.TypeA)), m, now)
		if c.bytes > 2000 {
			t.Fatalf("cache holds %d bytes after %d puts, limit 2000", c.bytes, i+1)
		}
	}
	if c.len() == 0 {
		t.Fatal("cache empty")
	}
}

// TestResponseRateLimit: past its rate a client prefix gets drops and
// truncated replies over UDP; TCP still answers.
func TestResponseRateLimit(t *testing.T) {
	s := startServer(t, func(c *Config) { c.RateLimit = 10 })
	s.Update(testSnapshot())
	c, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := query("web.default.svc.berth.internal.", dns.TypeA).Pack()
	for range 100 {
		c.Write(b)
	}
	full, truncated := 0, 0
	buf := make([]byte, 1500)
	for {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		switch {
		case buf[2]&0x02 != 0 && binary.BigEndian.Uint16(buf[6:]) == 0:
			truncated++
		case n > 12:
			full++
		}
	}
	if full == 0 || full > 30 || truncated == 0 || full+truncated >= 100 {
		t.Fatalf("100 queries at 10/s: %d full answers, %d truncated", full, truncated)
	}
	if r := exchange(t, "tcp", s.Addr(), query("web.default.svc.berth.internal.", dns.TypeA)); len(r.Answer) == 0 {
		t.Fatal("TCP answer limited too")
	}
}
