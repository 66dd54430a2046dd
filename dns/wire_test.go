package dns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/berth-dev/berth/discovery"
)

// paths are the two ways a query can be answered; table tests run on both.
var paths = []string{"general", "fast"}

// answerOn answers req on the given path. On "fast" it packs req, runs the
// wire path and unpacks its reply; when the fast path declines it falls
// back to Answer, as the handler does, and fast is false.
func answerOn(t testing.TB, path string, tab *Table, req *dns.Msg, client netip.Addr) (resp *dns.Msg, action Action, fast bool) {
	t.Helper()
	if path == "fast" {
		b, err := req.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out, _, _, ok := tab.answerWire(b, client, false, make([]byte, 0, dns.MaxMsgSize))
		if ok {
			r := new(dns.Msg)
			if err := r.Unpack(out); err != nil {
				t.Fatalf("fast reply does not parse: %v\n% x", err, out)
			}
			return r, Reply, true
		}
	}
	resp, action = tab.Answer(req, client)
	return resp, action, false
}

// generalReply is what the general path sends for b, packed and parsed.
func generalReply(t testing.TB, tab *Table, b []byte, client netip.Addr, udp bool) *dns.Msg {
	t.Helper()
	req := new(dns.Msg)
	if err := req.Unpack(b); err != nil {
		t.Fatal(err)
	}
	resp, action := tab.Answer(req, client)
	if action != Reply {
		t.Fatalf("general path: %v", action)
	}
	fit(resp, req, udp)
	out, err := resp.Pack()
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatal(err)
	}
	return r
}

// sameReply reports how a and b differ as DNS messages, ignoring the order
// of records within a section (rotation) and name case outside the
// question.
func sameReply(a, b *dns.Msg) error {
	if a.MsgHdr != b.MsgHdr {
		return fmt.Errorf("header %+v != %+v", a.MsgHdr, b.MsgHdr)
	}
	if !slices.Equal(a.Question, b.Question) {
		return fmt.Errorf("question %v != %v", a.Question, b.Question)
	}
	sec := func(rrs []dns.RR) []string {
		var out []string
		for _, rr := range rrs {
			out = append(out, strings.ToLower(rr.String()))
		}
		slices.Sort(out)
		return out
	}
	for _, s := range []struct {
		name string
		x, y []dns.RR
	}{{"answer", a.Answer, b.Answer}, {"authority", a.Ns, b.Ns}, {"additional", a.Extra, b.Extra}} {
		if x, y := sec(s.x), sec(s.y); !slices.Equal(x, y) {
			return fmt.Errorf("%s %q != %q", s.name, x, y)
		}
	}
	return nil
}

func packed(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWireMatchesGeneral asks the same questions on both paths, with the
// variations the fast path patches in (id, case, RD/CD, EDNS, client), and
// wants the same replies.
func TestWireMatchesGeneral(t *testing.T) {
	tab := testTable(withUpstreams)
	names := []string{
		"web.default.svc.berth.internal.", "WEB.Default.Svc.Berth.Internal.",
		"web-a.web.default.svc.berth.internal.", "web-c.web.default.svc.berth.internal.",
		"_http._tcp.web.default.svc.berth.internal.", "_tcp.web.default.svc.berth.internal.",
		"empty.default.svc.berth.internal.", "nope.default.svc.berth.internal.",
		"berth.internal.", "BERTH.internal.", "svc.berth.internal.", "x.y.z.nope.berth.internal.",
		"1.0.1.10.in-addr.arpa.", "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.D.F.ip6.arpa.",
	}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypePTR, dns.TypeSOA, dns.TypeNS, dns.TypeMX, dns.TypeTXT, 65280}
	var fastCount int
	for _, name := range names {
		for _, qtype := range types {
			for _, client := range []netip.Addr{loopback, outsider} {
				for _, v := range []int{0, 1, 2, 3} {
					q := query(name, qtype)
					q.Id = uint16(7 + v)
					q.RecursionDesired = v&1 == 0
					q.CheckingDisabled = v == 3
					if v >= 2 {
						q.SetEdns0(uint16(600*v), v == 3)
					}
					b := packed(t, q)
					out, _, _, ok := tab.answerWire(b, client, true, make([]byte, 0, MaxUDPSize))
					if !ok {
						continue
					}
					fastCount++
					fast := new(dns.Msg)
					if err := fast.Unpack(out); err != nil {
						t.Fatalf("%s %s: fast reply does not parse: %v", name, dns.TypeToString[qtype], err)
					}
					if err := sameReply(fast, generalReply(t, tab, b, client, true)); err != nil {
						t.Errorf("%s %s client %v variant %d: %v", name, dns.TypeToString[qtype], client, v, err)
					}
				}
			}
		}
	}
	if fastCount < 300 {
		t.Errorf("only %d queries took the fast path", fastCount)
	}
}

func TestWireDeclines(t *testing.T) {
	tab := testTable(withUpstreams)
	base := func() *dns.Msg { return query("web.default.svc.berth.internal.", dns.TypeA) }
	cases := map[string]func() []byte{
		"ANY":       func() []byte { return packed(t, query("web.default.svc.berth.internal.", dns.TypeANY)) },
		"AXFR":      func() []byte { return packed(t, query("berth.internal.", dns.TypeAXFR)) },
		"outside":   func() []byte { return packed(t, query("example.com.", dns.TypeA)) },
		"class CH":  func() []byte { m := base(); m.Question[0].Qclass = dns.ClassCHAOS; return packed(t, m) },
		"class ANY": func() []byte { m := base(); m.Question[0].Qclass = dns.ClassANY; return packed(t, m) },
		"notify":    func() []byte { m := base(); m.Opcode = dns.OpcodeNotify; return packed(t, m) },
		"EDNS v1":   func() []byte { m := base(); m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1); return packed(t, m) },
		"trailing":  func() []byte { return append(packed(t, base()), 0) },
		"truncated": func() []byte { b := packed(t, base()); return b[:len(b)-1] },
		"two questions": func() []byte {
			m := base()
			m.Question = append(m.Question, m.Question[0])
			return packed(t, m)
		},
		"EDNS client subnet": func() []byte {
			m := base()
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{192, 0, 2, 0}})
			return packed(t, m)
		},
		"PTR of an unknown address": func() []byte { return packed(t, query("9.9.9.10.in-addr.arpa.", dns.TypePTR)) },
		"A at an endpoint's reverse name": func() []byte {
			return packed(t, query("1.0.1.10.in-addr.arpa.", dns.TypeA))
		},
		"compressed question": func() []byte {
			// The question name as a pointer to itself: never valid.
			b := packed(t, base())
			return append(b[:12], 0xC0, 12, 0, 1, 0, 1)
		},
	}
	for name, mk := range cases {
		if _, _, _, ok := tab.answerWire(mk(), loopback, true, make([]byte, 0, MaxUDPSize)); ok {
			t.Errorf("%s: answered on the fast path", name)
		}
	}
	// Not ready: SERVFAIL comes from the general path.
	notReady := newTable(nil, DefaultConfig().normalize(), false)
	if _, _, _, ok := notReady.answerWire(packed(t, base()), loopback, true, make([]byte, 0, MaxUDPSize)); ok {
		t.Error("table without a snapshot answered on the fast path")
	}
	// Too big for the client's buffer: the general path truncates.
	big := NewTable(bigSnapshot(60, 1), DefaultConfig())
	if _, _, _, ok := big.answerWire(packed(t, query("big.default.svc.berth.internal.", dns.TypeA)), loopback, true, make([]byte, 0, MaxUDPSize)); ok {
		t.Error("a reply over 512 bytes went out on the fast path to a client without EDNS")
	}
	q := query("big.default.svc.berth.internal.", dns.TypeA)
	q.SetEdns0(4096, false)
	if _, _, _, ok := big.answerWire(packed(t, q), loopback, true, make([]byte, 0, MaxUDPSize)); !ok {
		t.Error("a reply that fits the client's EDNS buffer did not take the fast path")
	}
}

func TestWireEchoesQuestionAndCookie(t *testing.T) {
	tab := testTable()
	q := query("wEb.DEFAULT.svc.berth.INTERNAL.", dns.TypeA)
	q.SetEdns0(1232, false)
	q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	out, _, _, ok := tab.answerWire(packed(t, q), loopback, true, make([]byte, 0, MaxUDPSize))
	if !ok {
		t.Fatal("query with a client cookie declined")
	}
	var r dns.Msg
	if err := r.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if r.Question[0].Name != "wEb.DEFAULT.svc.berth.INTERNAL." || r.Id != q.Id || len(r.Answer) != 3 {
		t.Errorf("reply = %v", &r)
	}
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != MaxUDPSize || len(opt.Option) != 0 {
		t.Errorf("OPT = %v", opt)
	}
}

func TestTablePTR(t *testing.T) {
	tab := testTable(withUpstreams)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		client netip.Addr
		action Action
		rcode  int
		ptr    []string
	}{
		{"endpoint address", "1.0.1.10.in-addr.arpa.", dns.TypePTR, outsider, Reply, dns.RcodeSuccess,
			[]string{"web-a.web.default.svc.berth.internal."}},
		{"upper case", "1.0.1.10.IN-ADDR.ARPA.", dns.TypePTR, podClient, Reply, dns.RcodeSuccess,
			[]string{"web-a.web.default.svc.berth.internal."}},
		{"unready endpoint's address", "3.0.1.10.in-addr.arpa.", dns.TypePTR, loopback, Reply, dns.RcodeSuccess,
			[]string{"web-c.web.default.svc.berth.internal."}},
		{"IPv6 endpoint", "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", dns.TypePTR, loopback, Reply, dns.RcodeSuccess,
			[]string{"web-f.web.default.svc.berth.internal."}},
		{"unknown address, pod client: forwarded", "9.9.9.10.in-addr.arpa.", dns.TypePTR, podClient, Forward, 0, nil},
		{"unknown address, outsider: refused", "9.9.9.10.in-addr.arpa.", dns.TypePTR, outsider, Reply, dns.RcodeRefused, nil},
		{"other type at an endpoint's name: forwarded", "1.0.1.10.in-addr.arpa.", dns.TypeTXT, loopback, Forward, 0, nil},
	}
	for _, path := range paths {
		for _, tt := range tests {
			t.Run(path+"/"+tt.name, func(t *testing.T) {
				resp, action, _ := answerOn(t, path, tab, query(tt.qname, tt.qtype), tt.client)
				if action != tt.action {
					t.Fatalf("action = %v, want %v", action, tt.action)
				}
				if action == Forward {
					return
				}
				if resp.Rcode != tt.rcode {
					t.Fatalf("rcode = %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				var got []string
				for _, rr := range resp.Answer {
					got = append(got, rr.(*dns.PTR).Ptr)
				}
				if !slices.Equal(got, tt.ptr) {
					t.Errorf("PTR = %q, want %q", got, tt.ptr)
				}
				if tt.rcode == dns.RcodeSuccess && (!resp.Authoritative || resp.RecursionAvailable != tab.MayRecurse(tt.client)) {
					t.Errorf("AA %v RA %v", resp.Authoritative, resp.RecursionAvailable)
				}
			})
		}
	}
}

func TestTableSRVAdditional(t *testing.T) {
	for _, path := range paths {
		tab := testTable()
		resp, _, _ := answerOn(t, path, tab, query("_http._tcp.web.default.svc.berth.internal.", dns.TypeSRV), loopback)
		var extra []string
		for _, rr := range resp.Extra {
			extra = append(extra, rr.String())
		}
		slices.Sort(extra)
		want := []string{
			"web-a.web.default.svc.berth.internal.\t5\tIN\tA\t10.1.0.1",
			"web-b.web.default.svc.berth.internal.\t5\tIN\tA\t10.1.0.2",
			"web-e.web.default.svc.berth.internal.\t5\tIN\tA\t10.1.0.5",
			"web-f.web.default.svc.berth.internal.\t5\tIN\tAAAA\tfd00::5",
		}
		if !slices.Equal(extra, want) {
			t.Errorf("%s: additional = %q, want %q", path, extra, want)
		}
	}
}

// canarySnapshot: default/app with revision 1 (weight w1, n1 endpoints in
// 10.1.0.x) and revision 2 (100-w1, n2 endpoints in 10.2.0.x).
func canarySnapshot(w1 uint32, n1, n2 int) *discovery.Snapshot {
	rev := func(number int64, w uint32, n int) discovery.Revision {
		r := discovery.Revision{Number: number, Weight: w}
		for i := range n {
			r.Endpoints = append(r.Endpoints, discovery.Endpoint{
				Instance: fmt.Sprintf("app-%d-%d", number, i), Node: "n1",
				IP: fmt.Sprintf("10.%d.0.%d", number, i+1), Ready: true,
			})
		}
		return r
	}
	return &discovery.Snapshot{Version: 7, Services: []discovery.Service{{
		Namespace: "default", Name: "app",
		Ports:     []discovery.Port{{Name: "http", Port: 80, Protocol: "http"}},
		Revisions: []discovery.Revision{rev(1, w1, n1), rev(2, 100-w1, n2)},
	}}}
}

// TestCanaryWeights: over 10,000 answers the first address comes from each
// revision in proportion to its weight (within 2 points), on both paths,
// and within a revision every endpoint takes its turn.
func TestCanaryWeights(t *testing.T) {
	const queries = 10000
	for _, c := range []struct{ w1, n1, n2 int }{{90, 3, 1}, {70, 2, 3}, {50, 1, 1}, {1, 4, 4}, {99, 1, 7}, {100, 3, 3}} {
		for _, path := range paths {
			t.Run(fmt.Sprintf("%s/%d-%d/%dx%d", path, c.w1, 100-c.w1, c.n1, c.n2), func(t *testing.T) {
				tab := NewTable(canarySnapshot(uint32(c.w1), c.n1, c.n2), DefaultConfig())
				byRev := map[byte]int{}
				byAddr := map[string]int{}
				for range queries {
					resp, _, _ := answerOn(t, path, tab, query("app.default.svc.berth.internal.", dns.TypeA), loopback)
					if c.w1 == 100 {
						if len(resp.Answer) != c.n1 {
							t.Fatalf("answer %v: revision 2 has weight 0 and must not be in it", resp.Answer)
						}
					} else if len(resp.Answer) != c.n1+c.n2 {
						t.Fatalf("answer has %d records, want %d", len(resp.Answer), c.n1+c.n2)
					}
					first := resp.Answer[0].(*dns.A).A
					byRev[first[1]]++
					byAddr[first.String()]++
				}
				share := 100 * float64(byRev[1]) / queries
				if d := share - float64(c.w1); d > 2 || d < -2 {
					t.Errorf("revision 1 first in %.2f%% of answers, want %d%% ± 2", share, c.w1)
				}
				// Within a revision, first places are spread evenly.
				for rev, n := range map[byte]int{1: c.n1, 2: c.n2} {
					if byRev[rev] == 0 {
						continue
					}
					for i := range n {
						got := byAddr[fmt.Sprintf("10.%d.0.%d", rev, i+1)]
						if want := byRev[rev] / n; got < want-1 || got > want+1 {
							t.Errorf("10.%d.0.%d first %d times, want %d", rev, i+1, got, want)
						}
					}
				}
			})
		}
	}
}

func TestCanarySRVWeights(t *testing.T) {
	tab := NewTable(canarySnapshot(90, 3, 1), DefaultConfig())
	resp, _ := tab.Answer(query("_http._tcp.app.default.svc.berth.internal.", dns.TypeSRV), loopback)
	sums := map[byte]int{}
	var total int
	for _, rr := range resp.Answer {
		srv := rr.(*dns.SRV)
		rev := srv.Target[len("app-")] - '0'
		sums[rev] += int(srv.Weight)
		total += int(srv.Weight)
	}
	if len(resp.Answer) != 4 || total == 0 {
		t.Fatalf("SRV = %v", resp.Answer)
	}
	if share := 100 * float64(sums[1]) / float64(total); share < 89.5 || share > 90.5 {
		t.Errorf("revision 1 holds %.2f%% of the SRV weight, want 90%%", share)
	}
}

func TestPickerSequence(t *testing.T) {
	// 90/10 over 3+1 records: in every 10 answers, 9 start in revision 1
	// (rotating over its 3 records) and 1 starts with the canary.
	p := newPicker([]pickGroup{{weight: 90, first: 0, n: 3}, {weight: 10, first: 3, n: 1}})
	var got []int
	for k := range uint32(20) {
		got = append(got, p.at(k))
	}
	counts := map[int]int{}
	for _, i := range got {
		counts[i]++
	}
	if counts[3] != 2 || counts[0] != 6 || counts[1] != 6 || counts[2] != 6 {
		t.Errorf("first indices over 20 answers = %v (counts %v)", got, counts)
	}
	if newPicker([]pickGroup{{weight: 100, first: 0, n: 1}}) != nil {
		t.Error("picker for a single record")
	}
}

// TestHandlerFastPathCounts: the fast path counts queries by type and
// rcode and observes latency like the general path.
func TestHandlerFastPathCounts(t *testing.T) {
	cfg := DefaultConfig().normalize()
	cfg.Logger = discardLogger()
	met, _ := newMetrics(nil)
	h := newHandler(cfg, cfg.Logger, met)
	h.update(testSnapshot())
	out := make([]byte, 0, MaxUDPSize)
	for _, name := range []string{"web.default.svc.berth.internal.", "nope.default.svc.berth.internal."} {
		if r := h.serve(context.Background(), packed(t, query(name, dns.TypeA)), loopback, true, out); r == nil {
			t.Fatal("no reply")
		}
	}
	for rcode, want := range map[string]float64{"NOERROR": 1, "NXDOMAIN": 1} {
		if got := counterValue(t, met.queries.WithLabelValues("A", rcode)); got != want {
			t.Errorf("queries{A,%s} = %v, want %v", rcode, got, want)
		}
	}
}
