package controller

import (
	"testing"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// value reads a counter's or gauge's value.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	if out.Gauge != nil {
		return out.Gauge.GetValue()
	}
	return out.Counter.GetValue()
}

func TestRolloutMetricsFollowTheView(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := New(Config{Registerer: reg}, nil, nil)
	view := func(rs ...api.Rollout) *store.View {
		v := &store.View{Rollouts: map[string]store.VersionedRollout{}}
		for _, r := range rs {
			v.Rollouts[r.Namespace+"/"+r.Service] = store.VersionedRollout{Rollout: r}
		}
		return v
	}
	canary := api.Rollout{Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10, Strategy: api.StrategyCanary}
	rolling := api.Rollout{Namespace: "default", Service: "api", Revision: 5, Stable: 4, Phase: api.RolloutProgressing, Strategy: api.StrategyRolling}
	// A finished rollout seen for the first time (a restarted leader) is
	// not counted.
	old := api.Rollout{Namespace: "default", Service: "old", Revision: 3, Phase: api.RolloutSucceeded}
	c.observeRollouts(view(canary, rolling, old))
	canary.Weight = 50
	c.observeRollouts(view(canary, rolling, old))
	// Aborted through the API, and the rolling update done: each counted
	// once, the weight gone.
	canary.Phase, canary.Weight = api.RolloutAborted, 0
	rolling.Phase = api.RolloutSucceeded
	for range 3 {
		c.observeRollouts(view(canary, rolling, old))
	}
	if n := value(t, c.rollouts.WithLabelValues("canary", "Aborted")); n != 1 {
		t.Errorf("aborted canaries counted %v, want 1", n)
	}
	if n := value(t, c.rollouts.WithLabelValues("rolling", "Succeeded")); n != 1 {
		t.Errorf("finished rolling updates counted %v, want 1", n)
	}
}
