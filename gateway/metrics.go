package gateway

import (
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
			Help: "Requests by route, cluster and status class (route and cluster are empty when nothing matched).",
		}, []string{"route", "cluster", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_gateway_request_duration_seconds",
			Help:    "Time from request to the end of the response body, by route and cluster.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
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

// routeStats are the resolved series of one (route, cluster) pair, looked
// up once per table build so a request only increments.
type routeStats struct {
	codes   [6]prometheus.Counter // by status/100; [0] for anything else
	latency prometheus.Observer
}

var codeClasses = [6]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

func (m *metrics) stats(route, cluster string) *routeStats {
	s := &routeStats{latency: m.latency.WithLabelValues(route, cluster)}
	for i, class := range codeClasses {
		s.codes[i] = m.requests.WithLabelValues(route, cluster, class)
	}
	return s
}

// forget removes a (route, cluster) pair's series.
func (m *metrics) forget(route, cluster string) {
	m.latency.DeleteLabelValues(route, cluster)
	for _, class := range codeClasses {
		m.requests.DeleteLabelValues(route, cluster, class)
	}
}

func (s *routeStats) observe(status int, d time.Duration) {
	class := status / 100
	if class < 1 || class > 5 {
		class = 0
	}
	s.codes[class].Inc()
	s.latency.Observe(d.Seconds())
}
