package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestForwardLimitIsServfail(t *testing.T) {
	cfg := DefaultConfig().normalize()
	cfg.Logger = discardLogger()
	cfg.Upstreams = []string{"127.0.0.1:1"} // never contacted: no slot is free
	cfg.MaxForwards = 1
	met, _ := newMetrics(nil)
	h := newHandler(cfg, cfg.Logger, met)
	other := netip.MustParseAddr("127.0.0.9")
	if why := h.fwd.tryAcquire(other); why != "" {
		t.Fatal("no slot:", why)
	}
	defer h.fwd.release(other)
	b, _ := query("example.com.", dns.TypeA).Pack()
	out := h.serve(context.Background(), b, loopback, true, nil)
	var r dns.Msg
	if err := r.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s with all forwarding slots taken, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

func TestCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(3, 1<<20, time.Minute)
	reply := func(name string, ttl uint32) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(query(name, dns.TypeA))
		rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A 192.0.2.1", name, ttl))
		m.Answer = []dns.RR{rr}
		return m
	}
	key := func(name string) cacheKey {
		return keyOf(query(name, dns.TypeA))
	}

	c.put(key("a.example."), reply("a.example.", 30), now)
	r := c.get(key("A.Example."), now.Add(10*time.Second))
	if r == nil || r.Answer[0].Header().Ttl != 20 {
		t.Fatalf("after 10s: %v, want TTL 20", r)
	}
	if c.get(key("a.example."), now.Add(30*time.Second)) != nil {
		t.Error("served after its TTL")
	}
	// The stored reply is not changed by a get.
	c.put(key("b.example."), reply("b.example.", 30), now)
	c.get(key("b.example."), now.Add(25*time.Second))
	if r := c.get(key("b.example."), now.Add(5*time.Second)); r == nil || r.Answer[0].Header().Ttl != 25 {
		t.Errorf("stored TTL changed: %v", r)
	}
	// Capped by maxTTL.
	c.put(key("long.example."), reply("long.example.", 86400), now)
	if c.get(key("long.example."), now.Add(61*time.Second)) != nil {
		t.Error("served beyond maxTTL")
	}
	// Bounded.
	for i := range 10 {
		n := fmt.Sprintf("n%d.example.", i)
		c.put(key(n), reply(n, 60), now)
	}
	if c.len() > 3 {
		t.Errorf("cache holds %d entries, bound 3", c.len())
	}
	// Negative answers: cached for min(SOA TTL, minimum); without SOA not at all.
	nx := new(dns.Msg)
	nx.SetRcode(query("nx.example.", dns.TypeA), dns.RcodeNameError)
	c.put(key("nx.example."), nx, now)
	if c.get(key("nx.example."), now) != nil {
		t.Error("NXDOMAIN without SOA cached")
	}
	soa, _ := dns.NewRR("example. 300 IN SOA ns.example. h.example. 1 2 3 4 15")
	nx.Ns = []dns.RR{soa}
	c.put(key("nx.example."), nx, now)
	if c.get(key("nx.example."), now.Add(14*time.Second)) == nil || c.get(key("nx.example."), now.Add(15*time.Second)) != nil {
		t.Error("NXDOMAIN not cached for exactly the SOA minimum (15s)")
	}
	// SERVFAIL and truncated replies are not cached.
	sf := new(dns.Msg)
	sf.SetRcode(query("sf.example.", dns.TypeA), dns.RcodeServerFailure)
	c.put(key("sf.example."), sf, now)
	tc := reply("tc.example.", 60)
	tc.Truncated = true
	c.put(key("tc.example."), tc, now)
	if c.get(key("sf.example."), now) != nil || c.get(key("tc.example."), now) != nil {
		t.Error("SERVFAIL or truncated reply cached")
	}
}

// TestFreeBind binds an address this host does not have (TEST-NET-1); no
// packet is sent to or from it.
func TestFreeBind(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("IP_FREEBIND is Linux only")
	}
	cfg := DefaultConfig()
	cfg.Logger = discardLogger()
	cfg.Addr = "192.0.2.1:0"
	if s, err := New(cfg); err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s.Run(ctx)
		t.Skip("this host has 192.0.2.1; cannot tell what FreeBind changes")
	} else if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("bind without FreeBind: %v, want EADDRNOTAVAIL", err)
	}
	cfg.FreeBind = true
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("bind with FreeBind: %v", err)
	}
	if ap := netip.MustParseAddrPort(s.Addr()); ap.Addr() != netip.MustParseAddr("192.0.2.1") || ap.Port() == 0 {
		t.Errorf("Addr = %s", s.Addr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Error(err)
	}
}
