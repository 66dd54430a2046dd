package dns

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/berth-dev/berth/discovery"
)

// manyServices is a snapshot of n services in namespace bench, each with
// eps ready endpoints; gen changes the last address byte of the first
// `changed` endpoints, so two generations differ in exactly that many.
func manyServices(n, eps, changed, gen int) *discovery.Snapshot {
	snap := &discovery.Snapshot{Version: uint64(gen + 1), Services: make([]discovery.Service, n)}
	k := 0
	for i := range snap.Services {
		s := &snap.Services[i]
		s.Namespace, s.Name = "bench", fmt.Sprintf("svc-%05d", i)
		s.Ports = []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}}
		rev := discovery.Revision{Number: 1, Weight: 100}
		for j := range eps {
			last := 1 + j
			if k < changed {
				last += 100 * (gen % 2)
			}
			k++
			rev.Endpoints = append(rev.Endpoints, discovery.Endpoint{
				Instance: fmt.Sprintf("svc-%05d-%d", i, j), Node: "n1",
				IP: fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, last), Ready: true,
			})
		}
		s.Revisions = []discovery.Revision{rev}
	}
	return snap
}

func benchHandler(b *testing.B, snap *discovery.Snapshot) *handler {
	cfg := DefaultConfig().normalize()
	cfg.Logger = discardLogger()
	met, err := newMetrics(nil)
	if err != nil {
		b.Fatal(err)
	}
	h := newHandler(cfg, cfg.Logger, met)
	h.update(snap)
	return h
}

// BenchmarkHandleFast is the authoritative UDP path as the server runs it:
// raw query in, reply written into the reader's reused buffer. It must not
// allocate.
func BenchmarkHandleFast(b *testing.B) {
	h := benchHandler(b, manyServices(10000, 3, 0, 0))
	for _, c := range []struct {
		name  string
		qname string
		qtype uint16
		edns  bool
	}{
		{"A", "svc-01234.bench.svc.berth.internal.", dns.TypeA, false},
		{"A-EDNS-0x20", "sVc-01234.BENCH.svc.berth.internal.", dns.TypeA, true},
		{"SRV", "_http._tcp.svc-01234.bench.svc.berth.internal.", dns.TypeSRV, false},
		{"NXDOMAIN", "nope.bench.svc.berth.internal.", dns.TypeA, false},
		{"PTR", "3.234.104.10.in-addr.arpa.", dns.TypePTR, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			q := query(c.qname, c.qtype)
			if c.edns {
				q.SetEdns0(1232, false)
			}
			pkt := packed(b, q)
			out := make([]byte, MaxUDPSize)
			if r, p := h.handle(pkt, loopback, true, out); r == nil || p != nil || &r[0] != &out[0] {
				b.Fatal("query did not take the fast path")
			}
			b.ReportAllocs()
			for b.Loop() {
				h.handle(pkt, loopback, true, out)
			}
		})
	}
}

// BenchmarkHandleGeneral is the same A query through the general path
// (unpack, Answer, pack), for comparison.
func BenchmarkHandleGeneral(b *testing.B) {
	h := benchHandler(b, manyServices(10000, 3, 0, 0))
	pkt := packed(b, query("svc-01234.bench.svc.berth.internal.", dns.TypeA))
	t := h.table.Load()
	b.ReportAllocs()
	for b.Loop() {
		h.general(t, pkt, loopback, true, time.Now())
	}
}

// BenchmarkNewTable builds the table of 10,000 services x 3 endpoints: the
// work of one Update, done off the query path.
func BenchmarkNewTable(b *testing.B) {
	snap := manyServices(10000, 3, 0, 0)
	cfg := DefaultConfig().normalize()
	b.ReportAllocs()
	for b.Loop() {
		newTable(snap, cfg, true)
	}
}

// TestUpdateDoesNotBlockQueries swaps in tables of 10,000 services that
// differ in 1,000 endpoints while queries run: queries keep being answered
// during every update (they never wait for the build), and each answer
// comes whole from one table.
func TestUpdateDoesNotBlockQueries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 10,000-service tables")
	}
	snaps := []*discovery.Snapshot{manyServices(10000, 3, 1000, 0), manyServices(10000, 3, 1000, 1)}
	cfg := DefaultConfig().normalize()
	cfg.Logger = discardLogger()
	met, _ := newMetrics(nil)
	h := newHandler(cfg, cfg.Logger, met)
	h.update(snaps[0])

	var answered atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			out := make([]byte, MaxUDPSize)
			pkt := packed(t, query(fmt.Sprintf("svc-%05d.bench.svc.berth.internal.", w), dns.TypeA))
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, _ := h.handle(pkt, netip.Addr{}, true, out)
				var m dns.Msg
				if err := m.Unpack(r); err != nil || len(m.Answer) != 3 {
					errs <- fmt.Errorf("reply %v: %v", &m, err)
					return
				}
				// Service 0 and 1's endpoints are among the 1,000 changed:
				// all three addresses come from one generation.
				gen := m.Answer[0].(*dns.A).A[3] > 100
				for _, rr := range m.Answer[1:] {
					if (rr.(*dns.A).A[3] > 100) != gen {
						errs <- fmt.Errorf("answer mixes snapshots: %v", m.Answer)
						return
					}
				}
				answered.Add(1)
			}
		})
	}
	const updates = 4
	var slowest time.Duration
	for i := range updates {
		before := answered.Load()
		start := time.Now()
		h.update(snaps[(i+1)%2])
		took := time.Since(start)
		slowest = max(slowest, took)
		if during := answered.Load() - before; during == 0 {
			t.Errorf("update %d (%v): no query answered while it ran", i, took)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d updates of 10,000 services (1,000 endpoints changed each), slowest %v; %d queries answered meanwhile", updates, slowest, answered.Load())
}

// BenchmarkUpdate1000 is one Update of 10,000 services in which 1,000
// endpoints changed: unchanged services' fragments are reused.
func BenchmarkUpdate1000(b *testing.B) {
	snaps := []*discovery.Snapshot{manyServices(10000, 3, 1000, 0), manyServices(10000, 3, 1000, 1)}
	h := benchHandler(b, snaps[0])
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		h.update(snaps[i%2])
	}
}
