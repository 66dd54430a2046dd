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
	acks             *prometheus.CounterVec
	nacks            *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connectedStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_xds_connected_streams", Help: "ADS streams currently open.",
		}),
		publishedVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_xds_published_version", Help: "Version of the last published snapshot.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_xds_publish_errors_total", Help: "Snapshots refused by translation or validation.",
		}),
		translateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "berth_xds_translate_seconds", Help: "Time to translate a discovery snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_responses_total", Help: "Discovery responses sent, by resource type.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_acks_total", Help: "ACKs received, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_xds_nacks_total", Help: "NACKs received, by resource type.",
		}, []string{"type"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connectedStreams, m.publishedVersion, m.publishErrors, m.translateSeconds, m.responses, m.acks, m.nacks} {
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
