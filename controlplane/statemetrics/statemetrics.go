// Package statemetrics exports the cluster's state, as the control plane's
// cache holds it, as Prometheus gauges an operator can alert on: each
// service's desired and ready replicas and revision, each rollout's phase,
// step and canary weight, each node's status and DNS version.
//
// The gauges are computed from the cache's current view at scrape time,
// so a deleted service, rollout or node has no series from the next
// scrape on: there is nothing to delete and nothing to forget. Only the
// replica that leads exports them (every replica's cache holds the same
// state; one source keeps sums right), so a query needs no max().
//
// It reads; it never writes to etcd or changes the view.
package statemetrics

import (
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/prometheus/client_golang/prometheus"
)

// RolloutPhases are the values of berth_rollout_phase's phase label: each
// rollout has a series for every one, 1 for its phase and 0 for the
// others (a state set), so `berth_rollout_phase{phase="RolledBack"} == 1`
// works whether or not the phase was ever seen.
var RolloutPhases = [...]string{api.RolloutProgressing, api.RolloutPaused, api.RolloutSucceeded, api.RolloutRolledBack, api.RolloutAborted}

// NodeStatuses are the values of berth_node_status's status label.
var NodeStatuses = [...]string{api.NodeReady, api.NodeNotReady, api.NodeLost}

// Collector is the prometheus.Collector of the cluster state.
type Collector struct {
	view   func() *store.View
	leader func() bool

	desired, ready, live, revision *prometheus.Desc
	phase, step, weight            *prometheus.Desc
	nodeStatus, nodeDNS, cordoned  *prometheus.Desc
}

// New returns a collector of the views view returns, exporting while
// leader says true (nil: always).
func New(view func() *store.View, leader func() bool) *Collector {
	svc := []string{"namespace", "service"}
	node := []string{"node"}
	return &Collector{
		view: view, leader: leader,
		desired: prometheus.NewDesc("berth_service_replicas_desired", "Replicas a service's spec asks for.", svc, nil),
		ready: prometheus.NewDesc("berth_service_replicas_ready",
			"A service's live instances (not draining, meant to run) that are ready: their node reports them ready.", svc, nil),
		live:     prometheus.NewDesc("berth_service_instances", "A service's live instances (not draining, meant to run), ready or not; more than desired during a rollout.", svc, nil),
		revision: prometheus.NewDesc("berth_service_revision", "The revision a service currently runs (its latest applied).", svc, nil),
		phase: prometheus.NewDesc("berth_rollout_phase",
			"A service's last rollout's phase: 1 for the current one (Progressing, Paused, Succeeded, RolledBack, Aborted), 0 for the others.",
			append(svc, "strategy", "phase"), nil),
		step: prometheus.NewDesc("berth_rollout_step", "Index of the step an active canary is at in spec.rollout.steps (0-based).", svc, nil),
		weight: prometheus.NewDesc("berth_rollout_canary_weight_ratio",
			"Share of traffic an active canary gets, 0 to 1.", svc, nil),
		nodeStatus: prometheus.NewDesc("berth_node_status",
			"A node's status: 1 for the current one (Ready, NotReady, Lost), 0 for the others.", append(node, "status"), nil),
		nodeDNS: prometheus.NewDesc("berth_node_dns_version",
			"Discovery snapshot version a live node's DNS answers from (0: none yet).", node, nil),
		cordoned: prometheus.NewDesc("berth_node_cordoned", "1 while a node is cordoned (gets no new instances).", node, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.desired, c.ready, c.live, c.revision, c.phase, c.step, c.weight, c.nodeStatus, c.nodeDNS, c.cordoned} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.leader != nil && !c.leader() {
		return
	}
	v := c.view()
	if v == nil {
		return
	}
	gauge := func(d *prometheus.Desc, value float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, value, labels...)
	}
	for i := range v.Services {
		svc := &v.Services[i]
		ns, name := svc.Metadata.Namespace, svc.Metadata.Name
		live, ready := v.ServiceReplicas(svc.Key())
		gauge(c.desired, float64(svc.Spec.ReplicaCount()), ns, name)
		gauge(c.ready, float64(ready), ns, name)
		gauge(c.live, float64(live), ns, name)
		gauge(c.revision, float64(svc.Status.Revision), ns, name)
		vr, ok := v.Rollouts[svc.Key()]
		if !ok {
			continue
		}
		r := vr.Rollout
		strategy := api.StrategyCanary
		if !r.Canary() {
			strategy = api.StrategyRolling
		}
		for _, p := range RolloutPhases {
			gauge(c.phase, b(r.Phase == p), ns, name, strategy, p)
		}
		if r.Active() && r.Canary() {
			gauge(c.step, float64(r.Step), ns, name)
			gauge(c.weight, float64(r.Weight)/100, ns, name)
		}
	}
	for i := range v.Nodes {
		n := &v.Nodes[i]
		status := n.State
		if status == "" { // not yet written by the node controller
			status = api.NodeNotReady
			if v.LiveNodes[n.Name] {
				status = api.NodeReady
			}
		}
		for _, s := range NodeStatuses {
			gauge(c.nodeStatus, b(status == s), n.Name, s)
		}
		gauge(c.cordoned, b(n.Cordoned), n.Name)
		if v.LiveNodes[n.Name] {
			gauge(c.nodeDNS, float64(v.DNSVersions[n.Name]), n.Name)
		}
	}
}

func b(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
