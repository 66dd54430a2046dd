package nodeagent

import (
	"sync/atomic"

	"github.com/berth-dev/berth/api"
	"github.com/prometheus/client_golang/prometheus"
)

// containerStates are the values of berth_agent_container_state's state
// label: each instance has a series for every one, 1 for its phase.
var containerStates = [...]string{api.PhasePending, api.PhasePulling, api.PhaseStarting, api.PhaseRunning, api.PhaseBackoff, api.PhaseStopped}

// instanceMetric is what the agent exports about one instance.
type instanceMetric struct {
	id, namespace, service string
	phase                  string
	ready                  bool
	restarts               int32
	readinessFailures      uint64
	livenessFailures       uint64
}

// instanceCollector exports the loop's instances, labelled by namespace,
// service and instance, from the list the loop last published: an
// instance the node no longer holds has no series from the next scrape
// on.
type instanceCollector struct {
	published atomic.Pointer[[]instanceMetric]

	state, ready, restarts, probeFailures *prometheus.Desc
}

func newInstanceCollector(node string) *instanceCollector {
	// instance_id, not instance: Prometheus sets instance (and job) on
	// every series of a target, and renames a scraped label of the same
	// name to exported_instance, so alerts and queries naming
	// {{ $labels.instance }} got the agent's address instead.
	labels := []string{"namespace", "service", "instance_id"}
	constLabels := prometheus.Labels{"node": node}
	return &instanceCollector{
		state: prometheus.NewDesc("berth_agent_container_state",
			"Each instance's phase on this node: 1 for the current one (Pending, Pulling, Starting, Running, Backoff, Stopped), 0 for the others.",
			append(labels, "state"), constLabels),
		ready: prometheus.NewDesc("berth_agent_container_ready",
			"1 while an instance's readiness probe passes (or it has none and runs).", labels, constLabels),
		restarts: prometheus.NewDesc("berth_agent_container_restarts_total",
			"Times an instance's container was restarted after it exited (the count the control plane keeps, carried over agent restarts).", labels, constLabels),
		probeFailures: prometheus.NewDesc("berth_agent_probe_failures_total",
			"Probes of an instance that failed since this agent started, by probe (readiness, liveness).", append(labels, "probe"), constLabels),
	}
}

func (c *instanceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.ready
	ch <- c.restarts
	ch <- c.probeFailures
}

func (c *instanceCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.published.Load()
	if p == nil {
		return
	}
	for _, m := range *p {
		for _, st := range containerStates {
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, b2f(m.phase == st), m.namespace, m.service, m.id, st)
		}
		ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, b2f(m.ready), m.namespace, m.service, m.id)
		ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(m.restarts), m.namespace, m.service, m.id)
		ch <- prometheus.MustNewConstMetric(c.probeFailures, prometheus.CounterValue, float64(m.readinessFailures), m.namespace, m.service, m.id, "readiness")
		ch <- prometheus.MustNewConstMetric(c.probeFailures, prometheus.CounterValue, float64(m.livenessFailures), m.namespace, m.service, m.id, "liveness")
	}
}

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// metricOf is what the collector exports about it; ok is false for an
// item no assignment has named yet (an adopted container: its service is
// not known).
func metricOf(id string, it *item) (instanceMetric, bool) {
	if it.inst.ID == "" {
		return instanceMetric{}, false
	}
	return instanceMetric{
		id: id, namespace: it.inst.Namespace, service: it.inst.Service,
		phase: it.st.Phase, ready: it.st.Ready, restarts: it.st.Restarts,
		readinessFailures: it.readinessFailures, livenessFailures: it.livenessFailures,
	}, true
}

// publishMetrics hands the collector the instances as they are now, when
// anything it exports changed since the last time (the loop runs every
// 100 ms: an unchanged table allocates nothing).
func (l *loop) publishMetrics() {
	if l.a.instances == nil {
		return
	}
	changed, n := false, 0
	for id, it := range l.items {
		m, ok := metricOf(id, it)
		if !ok {
			continue
		}
		n++
		if old, seen := l.exported[id]; !seen || old != m {
			changed = true
			break
		}
	}
	if !changed && n == len(l.exported) {
		return
	}
	list := make([]instanceMetric, 0, len(l.items))
	l.exported = make(map[string]instanceMetric, len(l.items))
	for id, it := range l.items {
		if m, ok := metricOf(id, it); ok {
			list = append(list, m)
			l.exported[id] = m
		}
	}
	l.a.instances.published.Store(&list)
}
