package dns

import (
	"fmt"
	"sync/atomic"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Where an answer came from, for the latency histogram.
const (
	sourceAuthoritative = "authoritative"
	sourceForwarded     = "forwarded"
	sourceCache         = "cache"
	sourceError         = "error" // FORMERR, NOTIMP, REFUSED, SERVFAIL made here
)

type metrics struct {
	queries   *prometheus.CounterVec   // qtype, rcode
	latency   *prometheus.HistogramVec // source
	forwarded *prometheus.CounterVec   // result
	cacheHits prometheus.Counter
	cacheMiss prometheus.Counter
	dropped   prometheus.Counter
	names     prometheus.Gauge
	// rateLimited counts UDP responses held back by response rate
	// limiting: dropped, or sent truncated.
	rateLimited *prometheus.CounterVec

	// Pre-resolved children, so the fast path counts without a label
	// lookup: the latency observer for authoritative answers, and the
	// queries counter of each (qtype < 256, rcode < 24), resolved on first
	// use (series appear only once seen, as with WithLabelValues).
	latAuthoritative prometheus.Observer
	byType           [256][24]atomic.Pointer[counterRef]
}

type counterRef struct{ prometheus.Counter }

// query returns the queries counter for qtype and rcode.
func (m *metrics) query(qtype uint16, rcode int) prometheus.Counter {
	if qtype >= 256 || rcode < 0 || rcode >= 24 {
		return m.queries.WithLabelValues(qtypeLabel(qtype), rcodeLabel(rcode))
	}
	slot := &m.byType[qtype][rcode]
	if c := slot.Load(); c != nil {
		return c.Counter
	}
	c := &counterRef{m.queries.WithLabelValues(qtypeLabel(qtype), rcodeLabel(rcode))}
	slot.CompareAndSwap(nil, c) // a racing twin resolves to the same child
	return c.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_dns_queries_total",
			Help: "DNS queries answered, by query type and response code.",
		}, []string{"qtype", "rcode"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_dns_query_duration_seconds",
			Help:    "Time from reading a query to having its answer, by where the answer came from.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"source"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_dns_forwarded_total",
			Help: "Queries for names outside the zone, by result: ok, error, limited (every slot taken), client_limited (the client used up its share), refused (not RD, not class IN, or a zone transfer).",
		}, []string{"result"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_dns_rate_limited_total",
			Help: "UDP responses held back by response rate limiting, by action (dropped, truncated).",
		}, []string{"action"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_dns_cache_hits_total",
			Help: "Forwardable queries answered from the forwarding cache.",
		}),
		cacheMiss: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_dns_cache_misses_total",
			Help: "Forwardable queries not found in the forwarding cache.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_dns_dropped_total",
			Help: "Packets dropped without an answer (too short to parse a header, or responses).",
		}),
		names: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_dns_table_names",
			Help: "Names in the current answer table.",
		}),
	}
	m.latAuthoritative = m.latency.WithLabelValues(sourceAuthoritative)
	if reg != nil {
		for _, c := range []prometheus.Collector{m.queries, m.latency, m.forwarded, m.cacheHits, m.cacheMiss, m.dropped, m.names, m.rateLimited} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("dns: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// qtypeLabel bounds the label's values to the types miekg/dns knows.
func qtypeLabel(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "other"
}

func rcodeLabel(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "other"
}
