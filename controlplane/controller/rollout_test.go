package controller

import (
	"fmt"
	"strings"
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

// promote --full moves the weight to 100 only once the canary has the
// replicas to carry it: before, it reported Succeeded at 100% with one
// canary replica of four ready.
func TestDecideRolloutPromoteFull(t *testing.T) {
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutPaused, Weight: 10, PromoteFull: true, Promote: true}
	in := RolloutInputs{Now: t0, Spec: canarySpec(false), Replicas: 4, CanaryReady: 1}
	d := DecideRollout(r, in)
	if d.Next.Phase != api.RolloutProgressing || d.Next.Weight != 10 || !d.Next.PromoteFull {
		t.Fatalf("full weight on 1/4 canary replicas: %+v", d)
	}
	if !strings.Contains(d.Next.Message, "1/4 canary replicas") {
		t.Fatalf("message does not say what it waits for: %q", d.Next.Message)
	}
	in.CanaryReady = 4
	d = DecideRollout(d.Next, in)
	if d.Next.Phase != api.RolloutSucceeded || d.Next.Weight != 100 || d.Next.PromoteFull {
		t.Fatalf("4/4 ready: %+v", d)
	}
}

// Passing the last step is no different: 100% waits for full capacity.
func TestDecideRolloutLastStepWaitsForCapacity(t *testing.T) {
	spec := api.RolloutSpec{Steps: []api.CanaryStep{{Weight: 50}}}
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 50, StepStartedAt: t0, ProgressAt: t0}
	in := RolloutInputs{Now: t0.Add(time.Second), Spec: spec, Replicas: 4, CanaryReady: 2, Acked: true}
	d := DecideRollout(r, in)
	if d.Next.Phase != api.RolloutProgressing || d.Next.Weight != 50 || d.Next.Step != 1 {
		t.Fatalf("100%% on 2/4: %+v", d)
	}
	in.CanaryReady = 4
	if d = DecideRollout(d.Next, in); d.Next.Phase != api.RolloutSucceeded || d.Next.Weight != 100 {
		t.Fatalf("4/4: %+v", d)
	}
}

// While finishing, the canary revision is planned at the full count.
func TestPlanFinishingCanaryScalesToFull(t *testing.T) {
	svc := &api.Service{Metadata: api.ObjectMeta{Namespace: "default", Name: "web"}, Spec: api.ServiceSpec{Replicas: new(int32(4)), Image: "img",
		Rollout: &api.RolloutSpec{Steps: []api.CanaryStep{{Weight: 25}}}}, Status: api.ServiceStatus{Revision: 2}}
	ro := &api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 25}
	n := 0
	id := func(s string) string { n++; return fmt.Sprint(s, n) }
	if p := planReplicas(svc, ro, nil, nil, t0, id); len(p.Create) != 1 {
		t.Fatalf("at 25%%: %d created, want 1", len(p.Create))
	}
	ro.PromoteFull = true
	if p := planReplicas(svc, ro, nil, nil, t0, id); len(p.Create) != 4 {
		t.Fatalf("promoted in full: %d created, want 4", len(p.Create))
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

func TestDecideRolloutProgressDeadline(t *testing.T) {
	spec := canarySpec(true)
	spec.ProgressDeadline = api.Duration{Duration: 5 * time.Minute}
	start := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, ProgressAt: t0}

	// Waiting for canary replicas: fine within the deadline, rolled back
	// after it, with the reason.
	in := RolloutInputs{Now: t0.Add(4 * time.Minute), Spec: spec, Replicas: 10}
	if d := DecideRollout(start, in); d.RollBack {
		t.Fatalf("rolled back within the deadline: %+v", d)
	}
	in.Now = t0.Add(5*time.Minute + time.Second)
	d := DecideRollout(start, in)
	if !d.RollBack || d.Next.Phase != api.RolloutRolledBack || !strings.Contains(d.Event, "progress deadline 5m0s exceeded") ||
		!strings.Contains(d.Event, "waiting for 0/1 canary replicas") {
		t.Fatalf("replicas never ready: %+v", d)
	}

	// A timed pause does not count: the deadline runs from its end.
	spec.Steps[0].Pause = "10m"
	atStep := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10, StepStartedAt: t0, ProgressAt: t0}
	in = RolloutInputs{Now: t0.Add(14 * time.Minute), Spec: spec, Replicas: 10, CanaryReady: 1, Acked: true, CanaryRequests: 3}
	if d := DecideRollout(atStep, in); d.RollBack || !strings.Contains(d.Next.Message, "analysis waits for traffic") {
		t.Fatalf("14m into a 10m pause + 5m deadline: %+v", d)
	}
	in.Now = t0.Add(15*time.Minute + time.Second)
	if d := DecideRollout(atStep, in); !d.RollBack || !strings.Contains(d.Event, "analysis waits for traffic (3/100 requests)") {
		t.Fatalf("no traffic past the deadline: %+v", d)
	}

	// Gateways that never apply the weight fail it too.
	in = RolloutInputs{Now: t0.Add(16 * time.Minute), Spec: spec, Replicas: 10, CanaryReady: 1, Waiting: "DNS on node b"}
	if d := DecideRollout(atStep, in); !d.RollBack || !strings.Contains(d.Event, "waiting for DNS on node b to apply 10%") {
		t.Fatalf("weight never applied: %+v", d)
	}

	// A user's pause stops the clock; promote restarts it.
	paused := atStep
	paused.Phase = api.RolloutPaused
	in = RolloutInputs{Now: t0.Add(time.Hour), Spec: spec, Replicas: 10, CanaryReady: 1}
	if d := DecideRollout(paused, in); d.RollBack || d.Changed {
		t.Fatalf("paused for an hour: %+v", d)
	}
	paused.Promote = true
	d = DecideRollout(paused, in)
	if d.RollBack || d.Next.Phase != api.RolloutProgressing || !d.Next.ProgressAt.Equal(in.Now) {
		t.Fatalf("promoted after an hour: %+v", d)
	}
}

func TestDecideRolloutComparesWithStableAndLatency(t *testing.T) {
	spec := canarySpec(true)
	spec.Analysis.MaxErrorRate = 0.10
	spec.Analysis.MaxErrorRateIncrease = 0.02
	spec.Analysis.MaxLatency = api.Duration{Duration: 200 * time.Millisecond}
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10, StepStartedAt: t0, ProgressAt: t0}
	base := RolloutInputs{Now: t0.Add(2 * time.Minute), Spec: spec, Replicas: 10, CanaryReady: 1, Acked: true,
		CanaryRequests: 200, CanaryErrors: 10, StableRequests: 2000, StableErrors: 60}
	// 5% against stable's 3%: under both the threshold and the increase.
	if d := DecideRollout(r, base); d.RollBack || d.Next.Step != 1 {
		t.Fatalf("5%% vs 3%%: %+v", d)
	}
	in := base
	in.StableErrors = 20 // stable 1%: the canary is 4 points worse
	if d := DecideRollout(r, in); !d.RollBack || !strings.Contains(d.Event, "exceeds the stable revision's 1.0%") {
		t.Fatalf("5%% vs 1%%: %+v", d)
	}
	in = base
	in.StableRequests = 50 // too little stable traffic to compare with
	in.StableErrors = 0
	if d := DecideRollout(r, in); d.RollBack {
		t.Fatalf("compared with 50 stable requests: %+v", d)
	}
	in = base
	in.CanaryP99, in.CanaryLatencySamples = 450*time.Millisecond, 200
	if d := DecideRollout(r, in); !d.RollBack || !strings.Contains(d.Event, "p99 latency 450ms (200 requests) above 200ms") {
		t.Fatalf("slow canary: %+v", d)
	}
	in.CanaryLatencySamples = 20 // too few samples to judge latency
	if d := DecideRollout(r, in); d.RollBack {
		t.Fatalf("latency judged on 20 samples: %+v", d)
	}
}

func TestDecideRolling(t *testing.T) {
	r := api.Rollout{Strategy: api.StrategyRolling, Revision: 3, Stable: 2, Phase: api.RolloutProgressing, ProgressAt: t0}
	in := RollingInputs{Now: t0.Add(time.Minute), Deadline: 2 * time.Minute, Replicas: 4, Available: 1, OldLive: 3}
	d := DecideRolling(r, in)
	if d.RollBack || d.Next.Available != 1 || !d.Next.ProgressAt.Equal(in.Now) || d.Next.Message != "1/4 new replicas available, 3 old replicas left" {
		t.Fatalf("first available: %+v", d)
	}
	r = d.Next
	// No new replica for longer than the deadline: roll back.
	in.Now = t0.Add(3*time.Minute + time.Second)
	d = DecideRolling(r, in)
	if !d.RollBack || d.Next.Phase != api.RolloutRolledBack || !strings.Contains(d.Event, "progress deadline 2m0s exceeded (1/4 new replicas available, 3 old replicas left); rolled back to revision 2") {
		t.Fatalf("stalled: %+v", d)
	}
	// Progress just in time resets the clock.
	in.Available, in.OldLive = 2, 2
	if d = DecideRolling(r, in); d.RollBack || !d.Next.ProgressAt.Equal(in.Now) {
		t.Fatalf("progress at the deadline: %+v", d)
	}
	r = d.Next
	// All new replicas available but an old one still draining: not done.
	in.Available, in.OldLive = 4, 1
	r = DecideRolling(r, in).Next
	if r.Phase != api.RolloutProgressing {
		t.Fatalf("done with an old replica left: %+v", r)
	}
	in.OldLive = 0
	d = DecideRolling(r, in)
	if d.Next.Phase != api.RolloutSucceeded || !strings.Contains(d.Event, "rolling update to revision 3 complete") {
		t.Fatalf("complete: %+v", d)
	}
	if d := DecideRolling(d.Next, in); d.Changed {
		t.Fatalf("a finished rolling update changed: %+v", d)
	}
}

// Load reports that cannot be true (more requests completed than were
// issued) hold the analysis: no promotion and no rollback on them, and
// the progress deadline still applies.
func TestDecideRolloutHoldsOnImpossibleData(t *testing.T) {
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10, StepStartedAt: t0, ProgressAt: t0}
	spec := canarySpec(true)
	spec.ProgressDeadline = api.Duration{Duration: 10 * time.Minute}
	in := RolloutInputs{Now: t0.Add(2 * time.Minute), Spec: spec, Replicas: 10, CanaryReady: 1, Acked: true,
		CanaryRequests: 500, CanaryErrors: 0, ImpossibleReports: 3}
	d := DecideRollout(r, in)
	if d.Next.Step != 0 || d.RollBack || !strings.Contains(d.Next.Message, "analysis holds: 3 load reports") {
		t.Fatalf("a perfect canary with impossible reports in the step: %+v", d)
	}
	in.CanaryErrors = 500 // and a failing one
	if d := DecideRollout(r, in); d.RollBack || d.Next.Step != 0 {
		t.Fatalf("rolled back on a step with impossible reports: %+v", d)
	}
	in.Now = t0.Add(15 * time.Minute) // the deadline (10m) plus the step's 1m pause, passed
	if d := DecideRollout(r, in); !d.RollBack || !strings.Contains(d.Event, "progress deadline") {
		t.Fatalf("held past the progress deadline: %+v", d)
	}
	in.Now, in.ImpossibleReports, in.CanaryErrors = t0.Add(2*time.Minute), 0, 0
	if d := DecideRollout(r, in); d.Next.Step != 1 {
		t.Fatalf("consistent data again: %+v", d)
	}
}

// An abort the user asked for rolls back at once, paused or not, canary
// or rolling.
func TestDecideAbort(t *testing.T) {
	for _, r := range []api.Rollout{
		{Revision: 2, Stable: 1, Phase: api.RolloutPaused, Weight: 50, Abort: true, Promote: true},
		{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Strategy: api.StrategyRolling, Abort: true},
	} {
		var d RolloutDecision
		if r.Strategy == api.StrategyRolling {
			d = DecideRolling(r, RollingInputs{Now: t0, Replicas: 3})
		} else {
			d = DecideRollout(r, RolloutInputs{Now: t0, Spec: canarySpec(true), Replicas: 4})
		}
		if !d.RollBack || d.Next.Phase != api.RolloutAborted || d.Next.Weight != 0 || d.Next.Abort || d.Next.Promote || !strings.Contains(d.Event, "aborted by the user; rolled back to revision 1") {
			t.Fatalf("abort of %+v: %+v", r, d)
		}
	}
	done := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutSucceeded, Abort: true}
	if d := DecideRollout(done, RolloutInputs{Spec: canarySpec(false)}); d.Changed {
		t.Fatalf("abort of a finished rollout changed it: %+v", d)
	}
}

// The user's pause holds a canary where it is (a promote pending is
// dropped); resume goes on with a fresh progress clock.
func TestDecidePauseResume(t *testing.T) {
	r := api.Rollout{Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10, StepStartedAt: t0, ProgressAt: t0, Pause: true, Promote: true}
	in := RolloutInputs{Now: t0.Add(time.Minute), Spec: canarySpec(false), Replicas: 4, CanaryReady: 4, Acked: true}
	d := DecideRollout(r, in)
	if d.Next.Phase != api.RolloutPaused || d.Next.Pause || d.Next.Promote || d.Next.Weight != 10 || d.Event != "paused by the user" {
		t.Fatalf("pause: %+v", d)
	}
	if again := DecideRollout(d.Next, in); again.Changed {
		t.Fatalf("a paused canary moved on its own: %+v", again)
	}
	p := d.Next
	p.Resume = true
	d = DecideRollout(p, in)
	if d.Next.Phase != api.RolloutProgressing || d.Next.Resume || !d.Next.ProgressAt.Equal(in.Now) || d.Event != "resumed by the user" {
		t.Fatalf("resume: %+v", d)
	}
}
