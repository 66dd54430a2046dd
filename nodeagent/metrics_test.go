package nodeagent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/metricstest"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"github.com/prometheus/client_golang/prometheus"
)

// agentSeries gathers reg into "name{label=value,...}" -> value.
func agentSeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	return metricstest.Series(t, reg)
}

// Each instance's state (a state set), readiness, restarts and probe
// failures are labelled with its service and id; an instance the node
// stops and drops leaves no series.
func TestInstanceSeries(t *testing.T) {
	h := newHarness(t)
	reg := prometheus.NewRegistry()
	h.l.a.instances = newInstanceCollector("n1")
	reg.MustRegister(h.l.a.instances)
	a := running("a")
	a.Template.Health = &pb.Health{Tcp: &pb.TCPProbe{Port: 8080}, Interval: "10s", Timeout: "1s"}
	h.assign(a, running("b"))
	h.step()
	// a: one failed readiness probe past its start, and a restart.
	h.now = h.now.Add(11 * time.Second)
	h.l.items["a"].probing = true
	h.l.probed(probeResult{id: "a", err: errors.New("connection refused")})
	h.l.exited(runtime.Exit{InstanceID: "a", Code: 1, At: h.now})
	h.now = h.now.Add(time.Second)
	h.step()
	h.l.publishMetrics()
	got := agentSeries(t, reg)
	const a1, b1 = "instance_id=a,namespace=default,node=n1,service=web", "instance_id=b,namespace=default,node=n1,service=web"
	want := map[string]float64{
		"berth_agent_container_state{" + a1 + ",state=Running}":                                                 1,
		"berth_agent_container_state{" + a1 + ",state=Backoff}":                                                 0,
		"berth_agent_container_restarts_total{" + a1 + "}":                                                      1,
		"berth_agent_probe_failures_total{instance_id=a,namespace=default,node=n1,probe=readiness,service=web}": 1,
		"berth_agent_probe_failures_total{instance_id=a,namespace=default,node=n1,probe=liveness,service=web}":  0,
		"berth_agent_container_ready{" + a1 + "}":                                                               0, // not probed since the restart
		"berth_agent_container_state{" + b1 + ",state=Running}":                                                 1,
		"berth_agent_container_ready{" + b1 + "}":                                                               1,
		"berth_agent_container_restarts_total{" + b1 + "}":                                                      0,
	}
	for k := range got {
		for _, target := range []string{"instance=", "job="} {
			if strings.Contains(k, "{"+target) || strings.Contains(k, ","+target) {
				t.Errorf("%s has %s, a label Prometheus sets on every target (it renames this one exported_%s)", k, strings.TrimSuffix(target, "="), strings.TrimSuffix(target, "="))
			}
		}
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s = %v (exported %v), want %v", k, g, ok, w)
		}
	}

	// b is stopped, then unassigned: it leaves the table and its series go.
	stopped := running("b")
	stopped.Desired = api.DesiredStopped
	h.assign(a, stopped)
	h.step()
	h.assign(a)
	h.step()
	h.l.publishMetrics()
	for k := range agentSeries(t, reg) {
		if strings.Contains(k, "instance_id=b,") {
			t.Errorf("%s left after instance b was dropped", k)
		}
	}
	// Nothing changed: nothing is built again.
	before := h.l.a.instances.published.Load()
	h.l.publishMetrics()
	if h.l.a.instances.published.Load() != before {
		t.Error("an unchanged table was published again")
	}
}
