package xds

import (
	"github.com/prometheus/client_golang/prometheus"
)

// gatewayStates are the values of berth_xds_gateway_state's state label,
// every one exported for each gateway (1 for its state, 0 for the others)
// so an alert can say `== 1` without knowing the series exist.
var gatewayStates = [...]string{StateSynced, StateSyncing, StateStale, StateNacked}

// gatewayCollector exports each connected client's state, version and
// lag from Gateways() at scrape time: a gateway that disconnects has no
// series from the next scrape on, with nothing to delete.
type gatewayCollector struct {
	s                   *Server
	state, version, lag *prometheus.Desc
}

func newGatewayCollector(s *Server) *gatewayCollector {
	labels := []string{"gateway"}
	return &gatewayCollector{
		s: s,
		state: prometheus.NewDesc("berth_xds_gateway_state",
			"State of each connected xDS client (gateway node id) as seen by this replica: 1 for its state (SYNCED, SYNCING, STALE, NACKED), 0 for the others.",
			append(labels, "state"), nil),
		version: prometheus.NewDesc("berth_xds_gateway_version",
			"Discovery snapshot version each connected xDS client runs for every type it subscribed to (0: none yet).", labels, nil),
		lag: prometheus.NewDesc("berth_xds_gateway_lag_seconds",
			"How long ago the oldest version a connected xDS client does not run was published (0 when synced).", labels, nil),
	}
}

func (c *gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.version
	ch <- c.lag
}

func (c *gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	// A node id with two streams (a reconnect overlapping the old stream's
	// end) is exported once, from its newest stream.
	latest := map[string]GatewayStatus{}
	for _, g := range c.s.Gateways() {
		if old, ok := latest[g.NodeID]; !ok || g.ConnectedAt.After(old.ConnectedAt) {
			latest[g.NodeID] = g
		}
	}
	for id, g := range latest {
		for _, st := range gatewayStates {
			v := 0.0
			if g.State == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, id, st)
		}
		ch <- prometheus.MustNewConstMetric(c.version, prometheus.GaugeValue, float64(g.Version), id)
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, g.Lag.Seconds(), id)
	}
}
