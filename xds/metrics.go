package xds

import (
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connectedStreams prometheus.Gauge
	publishedVersion prometheus.Gauge
	publishErrors    prometheus.Counter
	translateSeconds prometheus.Histogram
	responses        *prometheus.CounterVec
	resourcesSent    *prometheus.CounterVec
	deltaUpdated     *prometheus.CounterVec
	deltaRemoved     *prometheus.CounterVec
	acks             *prometheus.CounterVec
	nacks            *prometheus.CounterVec
	throttled        prometheus.Counter

	lrsStreams  prometheus.Gauge
	lrsReports  prometheus.Counter
	lrsRequests *prometheus.CounterVec
	lrsUnknown  prometheus.Counter
	lrsDropped  prometheus.Counter
	// lrsImpossible counts reports whose figures cannot be true.
	lrsImpossible prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connectedStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_xds_connected_streams", Help: "ADS streams (state of the world and delta) currently open.",
		}),
		publishedVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_xds_published_version", Help: "Version of the last published snapshot.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_publish_errors_total", Help: "Snapshots refused by translation or validation.",
		}),
		translateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "berth_xds_translate_duration_seconds", Help: "Time to translate a discovery snapshot (incrementally).",
			// Round bounds from 10 us (one service changed) to 2.5 s.
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_responses_total", Help: "Discovery responses sent, by resource type and protocol (sotw, delta).",
		}, []string{"type", "protocol"}),
		resourcesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_resources_sent_total", Help: "Resources carried by discovery responses, by type and protocol.",
		}, []string{"type", "protocol"}),
		deltaUpdated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_changed_resources_total", Help: "Resources new or changed in a published snapshot, by type.",
		}, []string{"type"}),
		deltaRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_removed_resources_total", Help: "Resources removed by a published snapshot, by type.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_acks_total", Help: "ACKs received, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_nacks_total", Help: "NACKs received, by resource type.",
		}, []string{"type"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_throttled_responses_total", Help: "Large responses sent through the push throttle (at most PushConcurrency in flight).",
		}),
		lrsStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_xds_lrs_streams", Help: "Load Reporting Service streams currently open.",
		}),
		lrsReports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_lrs_reports_total", Help: "Load reports received (non-empty LoadStatsRequests).",
		}),
		lrsRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_lrs_requests_total", Help: "Upstream requests reported over LRS, by result (issued, success, error).",
		}, []string{"result"}),
		lrsUnknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_lrs_unknown_clusters_total", Help: "Cluster reports for clusters the published snapshot (or the one before) does not have: not counted.",
		}),
		lrsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_lrs_dropped_reports_total", Help: "Load reports dropped because a gateway sent more than 20 in one report interval.",
		}),
		lrsImpossible: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_lrs_impossible_reports_total",
			Help: "Load reports refused because more requests completed than were issued (analysis holds on them).",
		}),
	}
	// Every type's ACK and NACK counters exist from the start, at 0, so a
	// rate() or an alert on them has a series before the first NACK.
	for _, t := range []string{"listener", "route", "cluster", "endpoint"} {
		m.acks.WithLabelValues(t)
		m.nacks.WithLabelValues(t)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{
			m.connectedStreams, m.publishedVersion, m.publishErrors, m.translateSeconds, m.responses, m.resourcesSent,
			m.deltaUpdated, m.deltaRemoved, m.acks, m.nacks, m.throttled, m.lrsStreams, m.lrsReports, m.lrsRequests, m.lrsUnknown, m.lrsDropped, m.lrsImpossible,
		} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func typeLabel(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	}
	return "other"
}
