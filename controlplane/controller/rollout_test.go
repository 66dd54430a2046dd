package controller

import (
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

var t0 = time.Unix(1_700_000_000, 0).UTC()

func canarySpec(analysis bool) api.RolloutSpec {
	s := api.RolloutSpec{Strategy: api.StrategyCanary, Steps: []api.CanaryStep{{Weight: 10, Pause: "1m"}, {Weight: 50, Pause: api.PauseUntilPromoted}, {Weight: 100}}}
	if analysis {
		s.Analysis = &api.Analysis{MaxErrorRate: 0.05, MinRequests: 100}
	}
	return s
}

func TestDecideRolloutSteps(t *testing.T) {
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing}
	in := RolloutInputs{Now: t0, Spec: canarySpec(false), Replicas: 10}

	// Step 1 needs one ready canary replica before the weight moves.
	d := DecideRollout(r, in)
	if d.Next.Weight != 0 || !d.Changed || d.Next.Message == "" {
		t.Fatalf("no canary ready: %+v", d)
	}
	in.CanaryReady = 1
	d = DecideRollout(r, in)
	if d.Next.Weight != 10 || !d.Next.StepStartedAt.Equal(t0) || d.Event == "" {
		t.Fatalf("weight 10: %+v", d)
	}
	r = d.Next
	// Gateways have not applied it: wait.
	if d = DecideRollout(r, in); d.Next.Step != 0 {
		t.Fatalf("moved before the ACKs: %+v", d)
	}
	in.Acked = true
	// The 1m pause holds the step.
	in.Now = t0.Add(30 * time.Second)
	if d = DecideRollout(r, in); d.Next.Step != 0 {
		t.Fatalf("moved during the pause: %+v", d)
	}
	in.Now = t0.Add(61 * time.Second)
	d = DecideRollout(r, in)
	if d.Next.Step != 1 || d.Next.Weight != 10 {
		t.Fatalf("after the pause: %+v", d)
	}
	r = d.Next
	// Step 2 (50%) needs 5 ready canary replicas, then pauses for promote.
	in.CanaryReady = 5
	r = DecideRollout(r, in).Next
	if r.Weight != 50 {
		t.Fatalf("weight 50: %+v", r)
	}
	r = DecideRollout(r, in).Next
	if r.Phase != api.RolloutPaused || r.Step != 1 {
		t.Fatalf("promote pause: %+v", r)
	}
	if d := DecideRollout(r, in); d.Changed {
		t.Fatalf("paused rollout moved on its own: %+v", d)
	}
	r.Promote = true
	r = DecideRollout(r, in).Next
	if r.Phase != api.RolloutProgressing || r.Step != 2 || r.Promote {
		t.Fatalf("after promote: %+v", r)
	}
	in.CanaryReady = 10
	r = DecideRollout(r, in).Next // weight 100
	r = DecideRollout(r, in).Next // no pause: past the last step
	if r.Phase != api.RolloutSucceeded || r.Weight != 100 {
		t.Fatalf("end: %+v", r)
	}
	if d := DecideRollout(r, in); d.Changed {
		t.Fatalf("a finished rollout changed: %+v", d)
	}
}

func TestDecideRolloutAnalysis(t *testing.T) {
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10, StepStartedAt: t0}
	in := RolloutInputs{Now: t0.Add(2 * time.Minute), Spec: canarySpec(true), Replicas: 10, CanaryReady: 1, Acked: true}
	// Too little traffic: wait, do not pass.
	in.CanaryRequests, in.CanaryErrors = 50, 0
	if d := DecideRollout(r, in); d.Next.Step != 0 || d.RollBack {
		t.Fatalf("judged on 50 requests: %+v", d)
	}
	// Healthy: next step.
	in.CanaryRequests, in.CanaryErrors = 200, 4
	if d := DecideRollout(r, in); d.Next.Step != 1 || d.RollBack {
		t.Fatalf("2%% errors: %+v", d)
	}
	// Failing, even in the middle of the pause: roll back at once.
	in.Now = t0.Add(10 * time.Second)
	in.CanaryRequests, in.CanaryErrors = 200, 100
	d := DecideRollout(r, in)
	if !d.RollBack || d.Next.Phase != api.RolloutRolledBack || d.Next.Weight != 0 || d.Event == "" {
		t.Fatalf("50%% errors: %+v", d)
	}
}

func TestDecideRolloutPromoteFull(t *testing.T) {
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutPaused, Weight: 10, PromoteFull: true}
	d := DecideRollout(r, RolloutInputs{Spec: canarySpec(false), Replicas: 4})
	if d.Next.Phase != api.RolloutSucceeded || d.Next.Weight != 100 {
		t.Fatalf("%+v", d)
	}
}

func TestCanaryReplicas(t *testing.T) {
	for _, c := range []struct {
		want   int
		weight uint32
		n      int
	}{{10, 10, 1}, {10, 25, 3}, {4, 1, 1}, {4, 50, 2}, {4, 100, 4}, {3, 90, 3}} {
		if got := CanaryReplicas(c.want, c.weight); got != c.n {
			t.Errorf("CanaryReplicas(%d, %d) = %d, want %d", c.want, c.weight, got, c.n)
		}
	}
}
