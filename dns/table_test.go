package dns

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/manifests"
)

var (
	loopback  = netip.MustParseAddr("127.0.0.1")
	podClient = netip.MustParseAddr("10.88.0.7")
	outsider  = netip.MustParseAddr("192.0.2.1") // TEST-NET-1: only a value, nothing is sent
)

// testSnapshot: web has 3 ready endpoints (one IPv6) plus an unready and a
// draining one; empty has only an unready endpoint.
func testSnapshot() *discovery.Snapshot {
	return &discovery.Snapshot{
		Version: 1<<32 + 42,
		Services: []discovery.Service{
			{Namespace: "default", Name: "empty", Revisions: []discovery.Revision{{
				Number: 1, Weight: 100,
				Endpoints: []discovery.Endpoint{{Instance: "empty-a", Node: "n1", IP: "10.1.1.1", Ready: false}},
			}}},
			{Namespace: "default", Name: "web", Ports: []discovery.Port{
				{Name: "http", Port: 8080, Protocol: "http"},
				{Name: "syslog", Port: 514, Protocol: "udp"},
				{Name: "Bad Port", Port: 1, Protocol: "tcp"},
			}, Revisions: []discovery.Revision{
				{Number: 1, Weight: 50, Endpoints: []discovery.Endpoint{
					{Instance: "web-a", Node: "n1", IP: "10.1.0.1", Ready: true},
					{Instance: "web-b", Node: "n2", IP: "10.1.0.2", Ready: true},
					{Instance: "web-c", Node: "n1", IP: "10.1.0.3", Ready: false},
					{Instance: "web-d", Node: "n2", IP: "10.1.0.4", Ready: true, Draining: true},
				}},
				{Number: 2, Weight: 50, Endpoints: []discovery.Endpoint{
					{Instance: "web-e", Node: "n1", IP: "10.1.0.5", Ready: true},
					{Instance: "web-f", Node: "n2", IP: "fd00::5", Ready: true},
				}},
			}},
			{Namespace: "Bad Namespace", Name: "x", Revisions: []discovery.Revision{{
				Endpoints: []discovery.Endpoint{{Instance: "x-1", IP: "10.9.9.9", Ready: true}},
			}}},
		},
	}
}

type tableOption func(*Config)

func testTable(opts ...tableOption) *Table {
	cfg := DefaultConfig()
	cfg.AllowRecursion = []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16")}
	for _, o := range opts {
		o(&cfg)
	}
	return NewTable(testSnapshot(), cfg)
}

func withUpstreams(cfg *Config) { cfg.Upstreams = []string{"127.0.0.1:5300"} }

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// rdata returns the answer records' data, sorted, for comparison.
func rdata(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		s := rr.String()
		out = append(out, s[len(rr.Header().String()):])
	}
	slices.Sort(out)
	return out
}

func TestTableAnswers(t *testing.T) {
	tab := testTable()
	tests := []struct {
		name     string
		qname    string
		qtype    uint16
		rcode    int
		answers  []string // rdata, sorted
		soa      bool     // SOA in authority
		noAuthor bool     // AA clear
	}{
		{name: "service A: ready only", qname: "web.default.svc.berth.internal.", qtype: dns.TypeA,
			answers: []string{"10.1.0.1", "10.1.0.2", "10.1.0.5"}},
		{name: "service AAAA", qname: "web.default.svc.berth.internal.", qtype: dns.TypeAAAA,
			answers: []string{"fd00::5"}},
		{name: "instance A", qname: "web-b.web.default.svc.berth.internal.", qtype: dns.TypeA,
			answers: []string{"10.1.0.2"}},
		{name: "unready instance exists without address", qname: "web-c.web.default.svc.berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "draining instance exists without address", qname: "web-d.web.default.svc.berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "service with zero ready endpoints: NODATA", qname: "empty.default.svc.berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "unknown service: NXDOMAIN", qname: "nope.default.svc.berth.internal.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, soa: true},
		{name: "below an endpoint: NXDOMAIN", qname: "x.web-a.web.default.svc.berth.internal.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, soa: true},
		{name: "invalid namespace left out", qname: "x.bad namespace.svc.berth.internal.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, soa: true},
		{name: "apex SOA", qname: "berth.internal.", qtype: dns.TypeSOA,
			answers: []string{"ns.dns.berth.internal. hostmaster.berth.internal. 42 60 30 3600 2"}},
		{name: "apex NS", qname: "berth.internal.", qtype: dns.TypeNS, answers: []string{"ns.dns.berth.internal."}},
		{name: "apex A: NODATA", qname: "berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "svc is an empty non-terminal", qname: "svc.berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "namespace is an empty non-terminal", qname: "default.svc.berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "unknown namespace: NXDOMAIN", qname: "other.svc.berth.internal.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, soa: true},
		{name: "unknown type on a service: NODATA", qname: "web.default.svc.berth.internal.", qtype: dns.TypeMX, soa: true},
		{name: "TXT on an instance: NODATA", qname: "web-a.web.default.svc.berth.internal.", qtype: dns.TypeTXT, soa: true},
		{name: "ANY gets the A records only", qname: "web.default.svc.berth.internal.", qtype: dns.TypeANY,
			answers: []string{"10.1.0.1", "10.1.0.2", "10.1.0.5"}},
		{name: "ANY at the apex gets the SOA", qname: "berth.internal.", qtype: dns.TypeANY,
			answers: []string{"ns.dns.berth.internal. hostmaster.berth.internal. 42 60 30 3600 2"}},
		{name: "case-insensitive", qname: "WeB.DeFault.SVC.Berth.Internal.", qtype: dns.TypeA,
			answers: []string{"10.1.0.1", "10.1.0.2", "10.1.0.5"}},
		{name: "SRV: serving endpoints, weight spread per revision", qname: "_http._tcp.web.default.svc.berth.internal.", qtype: dns.TypeSRV,
			answers: []string{
				"0 15000 8080 web-a.web.default.svc.berth.internal.", "0 15000 8080 web-b.web.default.svc.berth.internal.",
				"0 15000 8080 web-e.web.default.svc.berth.internal.", "0 15000 8080 web-f.web.default.svc.berth.internal.",
			}},
		{name: "SRV of a UDP port", qname: "_syslog._udp.web.default.svc.berth.internal.", qtype: dns.TypeSRV,
			answers: []string{
				"0 15000 514 web-a.web.default.svc.berth.internal.", "0 15000 514 web-b.web.default.svc.berth.internal.",
				"0 15000 514 web-e.web.default.svc.berth.internal.", "0 15000 514 web-f.web.default.svc.berth.internal.",
			}},
		{name: "SRV of a port under the wrong protocol: NXDOMAIN", qname: "_syslog._tcp.web.default.svc.berth.internal.", qtype: dns.TypeSRV,
			rcode: dns.RcodeNameError, soa: true},
		{name: "SRV name asked for A: NODATA", qname: "_http._tcp.web.default.svc.berth.internal.", qtype: dns.TypeA, soa: true},
		{name: "_tcp is an empty non-terminal", qname: "_tcp.web.default.svc.berth.internal.", qtype: dns.TypeSRV, soa: true},
		{name: "service without ports has no SRV names", qname: "_http._tcp.empty.default.svc.berth.internal.", qtype: dns.TypeSRV,
			rcode: dns.RcodeNameError, soa: true},
		{name: "AXFR refused", qname: "berth.internal.", qtype: dns.TypeAXFR, rcode: dns.RcodeRefused, noAuthor: true},
		{name: "outside the zone without upstreams: REFUSED", qname: "example.com.", qtype: dns.TypeA,
			rcode: dns.RcodeRefused, noAuthor: true},
		{name: "suffix that is not a label boundary: outside", qname: "notberth.internal.", qtype: dns.TypeA,
			rcode: dns.RcodeRefused, noAuthor: true},
	}
	for _, path := range paths {
		for _, tt := range tests {
			t.Run(path+"/"+tt.name, func(t *testing.T) {
				req := query(tt.qname, tt.qtype)
				resp, action, fast := answerOn(t, path, tab, req, loopback)
				if action != Reply {
					t.Fatalf("action = %v, want reply", action)
				}
				// The fast path takes every plain query for a name in the
				// zone; ANY, AXFR and names outside go the general way.
				wantFast := path == "fast" && tt.qtype != dns.TypeANY && tt.qtype != dns.TypeAXFR && tt.rcode != dns.RcodeRefused
				if fast != wantFast {
					t.Errorf("answered on the fast path: %v, want %v", fast, wantFast)
				}
				if resp.Rcode != tt.rcode {
					t.Fatalf("rcode = %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				if resp.Id != req.Id || !resp.Response {
					t.Errorf("id/QR not set from the request: %v", resp.MsgHdr)
				}
				if resp.Authoritative == tt.noAuthor {
					t.Errorf("AA = %v", resp.Authoritative)
				}
				if got := rdata(resp.Answer); !slices.Equal(got, tt.answers) {
					t.Errorf("answers = %q, want %q", got, tt.answers)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Ttl != 5 {
						t.Errorf("TTL of %v = %d, want 5", rr, rr.Header().Ttl)
					}
				}
				gotSOA := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == dns.TypeSOA
				if gotSOA != tt.soa || (!tt.soa && len(resp.Ns) != 0) {
					t.Fatalf("authority = %v, want SOA: %v", resp.Ns, tt.soa)
				}
				if tt.soa {
					soa := resp.Ns[0].(*dns.SOA)
					// Negative TTL = min(SOA TTL, SOA minimum) = 2s.
					if soa.Hdr.Ttl != 2 || soa.Minttl != 2 || soa.Serial != 42 {
						t.Errorf("SOA = %v, want TTL 2, minimum 2, serial 42", soa)
					}
					if soa.Hdr.Name != "berth.internal." && soa.Hdr.Name != "Berth.Internal." {
						t.Errorf("SOA owner = %q, want the zone", soa.Hdr.Name)
					}
				}
			})
		}
	}
}

func TestTableEchoesQuestionCase(t *testing.T) {
	tab := testTable()
	req := query("wEb.DEFAULT.svc.berth.INTERNAL.", dns.TypeA)
	resp, _ := tab.Answer(req, loopback)
	if got := resp.Question[0].Name; got != "wEb.DEFAULT.svc.berth.INTERNAL." {
		t.Errorf("question = %q, want the case as sent", got)
	}
	if len(resp.Answer) != 3 {
		t.Errorf("answers = %v", resp.Answer)
	}
}

func TestTableRotatesAddresses(t *testing.T) {
	tab := testTable()
	firsts := map[string]bool{}
	for range 3 {
		resp, _ := tab.Answer(query("web.default.svc.berth.internal.", dns.TypeA), loopback)
		firsts[resp.Answer[0].(*dns.A).A.String()] = true
		if len(resp.Answer) != 3 {
			t.Fatalf("answers = %v", resp.Answer)
		}
	}
	if len(firsts) != 3 {
		t.Errorf("first addresses over 3 queries = %v, want all 3 in turn", firsts)
	}
}

func TestTableRecursionPolicy(t *testing.T) {
	tab := testTable(withUpstreams)
	tests := []struct {
		name   string
		client netip.Addr
		action Action
	}{
		{"loopback", loopback, Forward},
		{"IPv6 loopback", netip.IPv6Loopback(), Forward},
		{"pod network", podClient, Forward},
		{"IPv4-mapped pod address", netip.AddrFrom16(podClient.As16()), Forward},
		{"outsider", outsider, Reply},
		{"unknown client", netip.Addr{}, Reply},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, action := tab.Answer(query("example.com.", dns.TypeA), tt.client)
			if action != tt.action {
				t.Fatalf("action = %v, want %v", action, tt.action)
			}
			if action == Forward {
				if resp != nil {
					t.Errorf("forward came with a reply: %v", resp)
				}
				return
			}
			if resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 || resp.RecursionAvailable {
				t.Errorf("reply = %v, want REFUSED without RA", resp)
			}
		})
	}
	// In-zone names are answered for everyone, and RA tells who may recurse.
	for _, c := range []struct {
		client netip.Addr
		ra     bool
	}{{outsider, false}, {podClient, true}} {
		resp, action := tab.Answer(query("web.default.svc.berth.internal.", dns.TypeA), c.client)
		if action != Reply || len(resp.Answer) != 3 || resp.RecursionAvailable != c.ra {
			t.Errorf("client %v: %v %v, want 3 answers, RA %v", c.client, action, resp, c.ra)
		}
	}
}

func TestTableProtocolErrors(t *testing.T) {
	tab := testTable()
	notify := query("berth.internal.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	update := query("berth.internal.", dns.TypeSOA)
	update.Opcode = dns.OpcodeUpdate
	two := query("web.default.svc.berth.internal.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	none := query("web.default.svc.berth.internal.", dns.TypeA)
	none.Question = nil
	badvers := query("web.default.svc.berth.internal.", dns.TypeA)
	badvers.SetEdns0(1232, false)
	badvers.IsEdns0().SetVersion(1)
	chaos := query("version.berth.internal.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	tests := []struct {
		name  string
		req   *dns.Msg
		rcode int
	}{
		{"NOTIFY", notify, dns.RcodeNotImplemented},
		{"UPDATE", update, dns.RcodeNotImplemented},
		{"two questions", two, dns.RcodeFormatError},
		{"no question", none, dns.RcodeFormatError},
		{"EDNS version 1", badvers, dns.RcodeBadVers},
		{"CHAOS class", chaos, dns.RcodeRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, action := tab.Answer(tt.req, loopback)
			if action != Reply || resp.Rcode != tt.rcode {
				t.Fatalf("got %v rcode %s, want %s", action, dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
			}
			if len(resp.Answer) != 0 {
				t.Errorf("answers = %v", resp.Answer)
			}
		})
	}
}

func TestTableNotReadyIsServfail(t *testing.T) {
	tab := newTable(nil, DefaultConfig().normalize(), false)
	resp, _ := tab.Answer(query("web.default.svc.berth.internal.", dns.TypeA), loopback)
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s before the first snapshot, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	// An empty snapshot, once given, is an answer: NXDOMAIN.
	resp, _ = NewTable(nil, DefaultConfig()).Answer(query("web.default.svc.berth.internal.", dns.TypeA), loopback)
	if resp.Rcode != dns.RcodeNameError {
		t.Errorf("rcode = %s with an empty snapshot, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
}

func TestTableCustomZoneAndTTL(t *testing.T) {
	tab := testTable(func(c *Config) {
		c.Zone = "Cluster.Example"
		c.TTL = 30e9
		c.NegativeTTL = 60e9
	})
	resp, _ := tab.Answer(query("web.default.svc.cluster.example.", dns.TypeA), loopback)
	if len(resp.Answer) != 3 || resp.Answer[0].Header().Ttl != 30 {
		t.Fatalf("answers = %v", resp.Answer)
	}
	resp, _ = tab.Answer(query("nope.cluster.example.", dns.TypeA), loopback)
	// The SOA's own TTL (30) is below its minimum (60): negative TTL 30.
	if resp.Rcode != dns.RcodeNameError || resp.Ns[0].Header().Ttl != 30 || resp.Ns[0].(*dns.SOA).Minttl != 60 {
		t.Errorf("NXDOMAIN authority = %v", resp.Ns)
	}
}

func TestTableNSAddress(t *testing.T) {
	cfg := DefaultConfig()
	cfg.nsAddr = netip.MustParseAddr("10.88.0.1")
	tab := NewTable(testSnapshot(), cfg)
	resp, _ := tab.Answer(query("berth.internal.", dns.TypeNS), loopback)
	if len(resp.Extra) != 1 || !strings.HasSuffix(resp.Extra[0].String(), "10.88.0.1") {
		t.Errorf("NS additional = %v, want the server's address", resp.Extra)
	}
	resp, _ = tab.Answer(query("ns.dns.berth.internal.", dns.TypeA), loopback)
	if len(resp.Answer) != 1 {
		t.Errorf("ns A = %v", resp.Answer)
	}
}

func TestFitTruncates(t *testing.T) {
	tab := NewTable(bigSnapshot(100, 1), DefaultConfig())
	name := "big.default.svc.berth.internal."

	// UDP without EDNS: at most 512 bytes, TC set.
	req := query(name, dns.TypeA)
	resp, _ := tab.Answer(req, loopback)
	fit(resp, req, true)
	b, err := resp.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Truncated || len(b) > 512 || resp.IsEdns0() != nil {
		t.Errorf("UDP without EDNS: TC=%v, %d bytes, OPT %v", resp.Truncated, len(b), resp.IsEdns0())
	}

	// UDP with EDNS 4096: capped at 1232, OPT in the reply.
	req = query(name, dns.TypeA)
	req.SetEdns0(4096, false)
	resp, _ = tab.Answer(req, loopback)
	fit(resp, req, true)
	b, _ = resp.Pack()
	if opt := resp.IsEdns0(); opt == nil || opt.UDPSize() != MaxUDPSize || !resp.Truncated || len(b) > MaxUDPSize {
		t.Errorf("UDP with EDNS: OPT %v, TC=%v, %d bytes", opt, resp.Truncated, len(b))
	}

	// TCP: complete.
	req = query(name, dns.TypeA)
	resp, _ = tab.Answer(req, loopback)
	fit(resp, req, false)
	if resp.Truncated || len(resp.Answer) != 100 {
		t.Errorf("TCP: TC=%v, %d answers", resp.Truncated, len(resp.Answer))
	}
}

// bigSnapshot has service default/big with n ready endpoints in 10.<gen>.x.y.
func bigSnapshot(n int, gen int) *discovery.Snapshot {
	eps := make([]discovery.Endpoint, n)
	for i := range eps {
		ip := netip.AddrFrom4([4]byte{10, byte(gen), byte(i / 250), byte(i%250 + 1)})
		eps[i] = discovery.Endpoint{Instance: "big-" + strings.ReplaceAll(ip.String(), ".", "-"), IP: ip.String(), Ready: true}
	}
	return &discovery.Snapshot{Version: uint64(gen), Services: []discovery.Service{{
		Namespace: "default", Name: "big",
		Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: eps}},
	}}}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestTableGolden pins snapshot -> DNS records in testdata/table.golden.
// Run `go test ./dns -run Golden -update` after an intended change.
func TestTableGolden(t *testing.T) {
	cfg := DefaultConfig()
	cfg.nsAddr = netip.MustParseAddr("10.88.0.1")
	got := strings.Join(NewTable(testSnapshot(), cfg).Records(), "\n") + "\n"
	path := filepath.Join("testdata", "table.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("records differ from %s (run with -update if intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestManifestGolden pins manifests -> discovery snapshot -> DNS records:
// testdata/manifest.yaml through manifests.Parse and discovery.Build, with
// instances made here (web: 2 of 3 ready on revision 2 plus a ready one on
// revision 1 about to be replaced, one draining; db: 1 ready on IPv6; new:
// none placed yet), to testdata/manifest.golden. Run with -update after an
// intended change.
func TestManifestGolden(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := manifests.Parse("manifest.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	revs := map[string]int64{"web": 2, "db": 1, "new": 1}
	for i := range svcs {
		svcs[i].Status.Revision = revs[svcs[i].Metadata.Name]
	}
	inst := func(id, svc, ns string, rev int64) api.Instance {
		return api.Instance{ID: id, Namespace: ns, Service: svc, Revision: rev, Node: "n1", Desired: api.DesiredRunning}
	}
	st := discovery.State{
		Version:  9,
		Services: svcs,
		Instances: []api.Instance{
			inst("web-1-aaaa", "web", "shop", 1), inst("web-2-bbbb", "web", "shop", 2),
			inst("web-2-cccc", "web", "shop", 2), inst("web-2-dddd", "web", "shop", 2),
			inst("web-2-eeee", "web", "shop", 2), inst("db-1-ffff", "db", "shop", 1),
			{ID: "new-1-gggg", Namespace: "default", Service: "new", Revision: 1, Desired: api.DesiredRunning},
		},
		Statuses: map[string]api.InstanceStatus{
			"web-1-aaaa": {ID: "web-1-aaaa", Node: "n1", IP: "10.213.0.10", Ready: true},
			"web-2-bbbb": {ID: "web-2-bbbb", Node: "n1", IP: "10.213.0.11", Ready: true},
			"web-2-cccc": {ID: "web-2-cccc", Node: "n1", IP: "10.213.0.12", Ready: true},
			"web-2-dddd": {ID: "web-2-dddd", Node: "n1", IP: "10.213.0.13", Ready: false},
			"web-2-eeee": {ID: "web-2-eeee", Node: "n1", IP: "10.213.0.14", Ready: true},
			"db-1-ffff":  {ID: "db-1-ffff", Node: "n1", IP: "fd00:213::20", Ready: true},
		},
	}
	st.Instances[4].Draining = true
	cfg := DefaultConfig()
	got := strings.Join(NewTable(discovery.Build(st), cfg).Records(), "\n") + "\n"
	path := filepath.Join("testdata", "manifest.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("records differ from %s (run with -update if intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}
