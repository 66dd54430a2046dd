package gateway

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	xdsUpdates  *prometheus.CounterVec
	xdsConnects prometheus.Counter
	xdsUp       prometheus.Gauge
	configStale prometheus.Gauge
	stateWrites *prometheus.CounterVec
	rejects     *prometheus.CounterVec
	closes      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_requests_total",
			Help: "Requests by route, cluster and HTTP status code (route and cluster are empty when nothing matched; code is \"other\" outside 100-599).",
		}, []string{"route", "cluster", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_gateway_request_duration_seconds",
			Help:    "Time from request to the end of the response body, by route and cluster.",
			Buckets: latencyBuckets,
		}, []string{"route", "cluster"}),
		xdsUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_xds_updates_total",
			Help: "xDS responses by type and result (ack or nack).",
		}, []string{"type", "result"}),
		xdsConnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_gateway_xds_streams_total",
			Help: "ADS streams opened, the first one included.",
		}),
		xdsUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_gateway_xds_connected",
			Help: "1 while an ADS stream is open.",
		}),
		configStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_gateway_config_stale",
			Help: "1 while the gateway serves the configuration it saved in an earlier run (Config.StateDir), until the control plane has confirmed or replaced every resource of it; 0 otherwise.",
		}),
		stateWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_state_writes_total",
			Help: "Writes of the saved configuration (Config.StateDir) by result: ok or error.",
		}, []string{"result"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_rejected_requests_total",
			Help: "Requests refused for the client's fault before reaching a route (malformed or ambiguous framing, limits), by reason; their connections were closed.",
		}, []string{"reason"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_connections_closed_total",
			Help: "Client connections closed by a limit: head_timeout, body_timeout, send_timeout, tunnel_idle.",
		}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.latency, m.xdsUpdates, m.xdsConnects, m.xdsUp, m.configStale, m.stateWrites, m.rejects, m.closes} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// rejected is the counter of requests refused for reason.
func (m *metrics) rejected(reason string) prometheus.Counter {
	return m.rejects.WithLabelValues(reason)
}

// closedBy counts a client connection closed by the limit reason.
func (m *metrics) closedBy(reason string) { m.closes.WithLabelValues(reason).Inc() }

// latencyBuckets are round bounds (Prometheus' own default set, with
// 0.5 ms and 30 s added at the ends) from a local hop to the route
// timeout's range: quantiles read from them interpolate between numbers
// an operator recognises.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// routeStats are the resolved series of one (route, cluster) pair, looked
// up once per table build so a request only increments. The status
// counters are resolved at a code's first sight, into a few slots read
// without a lock: a request with a code seen before allocates nothing.
type routeStats struct {
	route, cluster string
	requests       *prometheus.CounterVec
	latency        prometheus.Observer

	mu    sync.Mutex // serialises claiming a slot
	slots [codeSlots]codeSlot
	gone  bool // forgotten (under mu): a late request must not recreate its series
}

// codeSlots bounds the codes a pair resolves once: a route sees a handful
// (200, 304, 404, 502, 503...); more go through the vector's lookup.
const codeSlots = 12

type codeSlot struct {
	code    atomic.Int32 // 0: free; set after counter
	counter prometheus.Counter
}

func (m *metrics) stats(route, cluster string) *routeStats {
	return &routeStats{route: route, cluster: cluster, requests: m.requests, latency: m.latency.WithLabelValues(route, cluster)}
}

// forget removes a (route, cluster) pair's series, every code's. A
// request of an older table still in flight may finish on s afterwards:
// a code it has not seen before then counts into a series of its own that
// no registry holds, instead of bringing the pair's series back for good
// (nothing would forget them again).
func (m *metrics) forget(s *routeStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone = true
	m.latency.DeleteLabelValues(s.route, s.cluster)
	m.requests.DeletePartialMatch(prometheus.Labels{"route": s.route, "cluster": s.cluster})
}

// codeLabel is the code label of an HTTP status: the code itself, or
// "other" for a number that is not one.
func codeLabel(status int) string {
	if status < 100 || status > 599 {
		return "other"
	}
	return strconv.Itoa(status)
}

func (s *routeStats) observe(status int, d time.Duration) {
	s.counter(status).Inc()
	s.latency.Observe(d.Seconds())
}

// counter is the requests counter of status: from its slot, or resolved
// into a free one.
func (s *routeStats) counter(status int) prometheus.Counter {
	if status < 100 || status > 599 {
		status = 1 // "other"; 0 marks a free slot
	}
	want := int32(status)
	for i := range s.slots {
		switch s.slots[i].code.Load() {
		case want:
			return s.slots[i].counter
		case 0:
			return s.claim(want)
		}
	}
	return s.claim(want) // every slot taken: resolved under the lock each time
}

func (s *routeStats) claim(code int32) prometheus.Counter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_gateway_requests_total", Help: "a forgotten route's"})
	}
	for i := range s.slots {
		sl := &s.slots[i]
		switch sl.code.Load() {
		case code: // a racing twin claimed it
			return sl.counter
		case 0:
			sl.counter = s.requests.WithLabelValues(s.route, s.cluster, codeLabel(int(code)))
			sl.code.Store(code) // publishes counter to the lock-free readers
			return sl.counter
		}
	}
	return s.requests.WithLabelValues(s.route, s.cluster, codeLabel(int(code)))
}
