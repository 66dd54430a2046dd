package dns

import (
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzServeDNS feeds raw packets to the packet path the UDP and TCP loops
// use. It must never panic; every reply must parse, and UDP replies must
// fit the largest UDP size the server ever sends. Whatever the fast path
// answers, the general path must answer the same. The handler has no
// upstreams, so nothing leaves the process.
func FuzzServeDNS(f *testing.F) {
	cfg := DefaultConfig().normalize()
	cfg.Logger = discardLogger()
	met, err := newMetrics(nil)
	if err != nil {
		f.Fatal(err)
	}
	h := newHandler(cfg, cfg.Logger, met)
	h.update(testSnapshot())
	big := newHandler(cfg, cfg.Logger, met)
	big.update(bigSnapshot(100, 1))

	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{
		{"web.default.svc.berth.internal.", dns.TypeA, false},
		{"WEB.default.svc.berth.internal.", dns.TypeAAAA, true},
		{"web-a.web.default.svc.berth.internal.", dns.TypeANY, false},
		{"berth.internal.", dns.TypeSOA, true},
		{"nope.berth.internal.", dns.TypeMX, false},
		{"example.com.", dns.TypeA, true},
		{"big.default.svc.berth.internal.", dns.TypeA, false},
		{"_http._tcp.web.default.svc.berth.internal.", dns.TypeSRV, true},
		{"1.0.1.10.in-addr.arpa.", dns.TypePTR, false},
		{"x.svc.berth.internal.", dns.TypeA, true},
	} {
		m := query(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(4096, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 1, 0x28, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 6, 0, 1})

	client := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, hd := range []*handler{h, big} {
			for _, udp := range []bool{true, false} {
				out := hd.serve(context.Background(), b, client, udp, nil)
				if out == nil {
					continue
				}
				var r dns.Msg
				if err := r.Unpack(out); err != nil {
					t.Fatalf("reply does not parse: %v\n% x", err, out)
				}
				if !r.Response {
					t.Fatalf("reply without QR: %v", &r)
				}
				if udp && len(out) > MaxUDPSize {
					t.Fatalf("UDP reply of %d bytes", len(out))
				}
				tab := hd.table.Load()
				fast, _, _, ok := tab.answerWire(b, client, udp, make([]byte, 0, fastReplyMax))
				if !ok {
					continue
				}
				var fr, req dns.Msg
				if err := fr.Unpack(fast); err != nil {
					t.Fatalf("fast reply does not parse: %v\n% x", err, fast)
				}
				if err := req.Unpack(b); err != nil {
					t.Fatalf("fast path answered a query the general path cannot read: %v\n% x", err, b)
				}
				gen, action := tab.Answer(&req, client)
				if action != Reply {
					t.Fatalf("fast path answered a query the general path forwards: % x", b)
				}
				fit(gen, &req, udp)
				gb, err := gen.Pack()
				if err != nil {
					t.Fatal(err)
				}
				var gr dns.Msg
				if err := gr.Unpack(gb); err != nil {
					t.Fatal(err)
				}
				if err := sameReply(&fr, &gr); err != nil {
					t.Fatalf("fast and general paths differ: %v\nquery % x", err, b)
				}
			}
		}
	})
}
