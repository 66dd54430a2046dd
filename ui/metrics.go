package ui

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests *prometheus.CounterVec
	logins   *prometheus.CounterVec
	streams  prometheus.Gauge
	sessions prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_ui_requests_total",
			Help: "Dashboard HTTP requests by route pattern (\"refused\": a foreign Host header; \"unmatched\": no route) and status code.",
		}, []string{"pattern", "code"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_ui_logins_total",
			Help: "Dashboard login attempts by result: ok, refused (bad token), limited (rate limit), error (the API did not answer).",
		}, []string{"result"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_ui_sse_clients",
			Help: "Open dashboard event streams (server-sent events).",
		}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_ui_sessions",
			Help: "Live dashboard sessions.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.logins, m.streams, m.sessions)
	}
	return m
}
