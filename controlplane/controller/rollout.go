package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

// LoadReader reports a revision's requests and errors over a window, from
// the gateways' load reports (the xDS server's LRS implements it).
type LoadReader interface {
	RevisionLoad(namespace, service string, revision int64, window time.Duration) (requests, errors int64)
}

// RolloutInputs is what one rollout decision reads.
type RolloutInputs struct {
	Now      time.Time
	Spec     api.RolloutSpec
	Replicas int
	// CanaryReady counts the canary revision's ready replicas.
	CanaryReady int
	// Acked: every gateway and every node's DNS runs a snapshot carrying
	// the current weight; otherwise Waiting names who is behind.
	Acked   bool
	Waiting string
	// Canary requests and errors since the step's weight took effect.
	CanaryRequests, CanaryErrors int64
}

// RolloutDecision is what DecideRollout returns: the next state, whether
// it differs, and whether to roll back.
type RolloutDecision struct {
	Next     api.Rollout
	Changed  bool
	RollBack bool
	// Event is a user-facing line for a change worth recording.
	Event string
}

// Default analysis settings.
const (
	DefaultMaxErrorRate = 0.05
	DefaultMinRequests  = 20
)

// DecideRollout is the canary state machine, a pure function. A step is:
// scale the canary for the step's weight -> set the weight -> wait until
// every gateway has ACKed it -> pause (a duration, or until promoted) ->
// analysis -> next step. A failed analysis, at any point of a step, rolls
// back at once: all traffic to stable in one move.
func DecideRollout(r api.Rollout, in RolloutInputs) RolloutDecision {
	d := RolloutDecision{Next: r}
	set := func(msg string) {
		if d.Next.Message != msg {
			d.Next.Message, d.Changed = msg, true
		}
	}
	steps := in.Spec.Steps
	if !r.Active() {
		return d
	}
	if r.PromoteFull || r.Step >= len(steps) {
		d.Next.Phase, d.Next.Weight, d.Next.Promote, d.Next.PromoteFull = api.RolloutSucceeded, 100, false, false
		d.Changed, d.Event = true, fmt.Sprintf("canary revision %d promoted to 100%%", r.Revision)
		d.Next.Message = d.Event
		return d
	}
	step := steps[r.Step]
	maxRate, minReq := DefaultMaxErrorRate, int64(DefaultMinRequests)
	if a := in.Spec.Analysis; a != nil {
		if a.MaxErrorRate > 0 {
			maxRate = a.MaxErrorRate
		}
		if a.MinRequests > 0 {
			minReq = a.MinRequests
		}
	}
	// A failing canary rolls back whatever the step is doing, paused
	// included: all traffic to stable in one move.
	if in.Spec.Analysis != nil && r.Weight > 0 && in.CanaryRequests >= minReq {
		if rate := float64(in.CanaryErrors) / float64(in.CanaryRequests); rate > maxRate {
			d.RollBack, d.Changed = true, true
			d.Next.Phase, d.Next.Weight, d.Next.Promote = api.RolloutRolledBack, 0, false
			d.Event = fmt.Sprintf("analysis failed at step %d: canary error rate %.1f%% (%d/%d) above %.1f%%; rolled back to revision %d",
				r.Step+1, 100*rate, in.CanaryErrors, in.CanaryRequests, 100*maxRate, r.Stable)
			d.Next.Message = d.Event
			return d
		}
	}
	if r.Phase == api.RolloutPaused && !r.Promote {
		return d
	}
	if r.Phase == api.RolloutPaused && r.Promote {
		d.Next.Phase, d.Changed = api.RolloutProgressing, true
	}
	if r.Weight != step.Weight {
		need := CanaryReplicas(in.Replicas, step.Weight)
		if n := in.Spec.CanaryReplicas; n != nil {
			need = int(*n)
		}
		if in.CanaryReady < need {
			set(fmt.Sprintf("step %d/%d: waiting for %d/%d canary replicas to be ready", r.Step+1, len(steps), in.CanaryReady, need))
			return d
		}
		d.Next.Weight, d.Next.StepStartedAt, d.Next.WeightRevision, d.Changed = step.Weight, in.Now, 0, true
		d.Event = fmt.Sprintf("step %d/%d: canary revision %d at %d%% of traffic", r.Step+1, len(steps), r.Revision, step.Weight)
		d.Next.Message = d.Event
		return d
	}
	if !in.Acked {
		who := in.Waiting
		if who == "" {
			who = "every gateway and node DNS"
		}
		set(fmt.Sprintf("step %d/%d: waiting for %s to apply %d%%", r.Step+1, len(steps), who, step.Weight))
		return d
	}
	switch {
	case step.Pause == api.PauseUntilPromoted && !r.Promote:
		if r.Phase != api.RolloutPaused {
			d.Next.Phase, d.Changed = api.RolloutPaused, true
		}
		set(fmt.Sprintf("step %d/%d: at %d%%, waiting for `berth rollout promote`", r.Step+1, len(steps), step.Weight))
		return d
	case step.Pause != "" && step.Pause != api.PauseUntilPromoted:
		pause, _ := time.ParseDuration(step.Pause)
		if left := r.StepStartedAt.Add(pause).Sub(in.Now); left > 0 {
			set(fmt.Sprintf("step %d/%d: at %d%%, pausing", r.Step+1, len(steps), step.Weight))
			return d
		}
	}
	if in.Spec.Analysis != nil && in.CanaryRequests < minReq {
		set(fmt.Sprintf("step %d/%d: analysis waits for traffic (%d/%d requests)", r.Step+1, len(steps), in.CanaryRequests, minReq))
		return d
	}
	d.Next.Step, d.Next.Promote, d.Changed = r.Step+1, false, true
	if d.Next.Step >= len(steps) {
		d.Next.Phase, d.Next.Weight = api.RolloutSucceeded, 100
		d.Event = fmt.Sprintf("canary revision %d promoted to 100%%", r.Revision)
		d.Next.Message = d.Event
	}
	return d
}

// reconcileRollouts starts canaries for new revisions and steps active ones.
func (c *Controller) reconcileRollouts(ctx context.Context, v *store.View) error {
	for i := range v.Services {
		svc := &v.Services[i]
		spec := svc.Spec.Rollout
		if spec == nil || spec.Strategy != api.StrategyCanary || len(spec.Steps) == 0 {
			continue
		}
		vr, has := v.Rollouts[svc.Key()]
		if !has || vr.Rollout.Revision != svc.Status.Revision {
			if has && vr.Rollout.Stable == svc.Status.Revision && !vr.Rollout.Active() {
				continue // rolled back: the stable revision is current again
			}
			stable := c.stableRevision(v, svc)
			if stable == 0 {
				continue // first deploy: nothing to compare with
			}
			r := api.Rollout{Namespace: svc.Metadata.Namespace, Service: svc.Metadata.Name, Revision: svc.Status.Revision,
				Stable: stable, Phase: api.RolloutProgressing, Message: "canary started"}
			if _, err := c.store.PutRollout(ctx, r, vr.ModRevision); err != nil {
				return fmt.Errorf("controller: start canary of %s: %w", svc.Key(), err)
			}
			c.event(ctx, r.Namespace, "service/"+r.Service, "CanaryStarted", "Normal", "canary revision %d against stable revision %d", r.Revision, stable)
			continue
		}
		r := vr.Rollout
		if !r.Active() {
			continue
		}
		in := RolloutInputs{Now: c.now().UTC(), Spec: *spec, Replicas: int(svc.Spec.ReplicaCount())}
		for _, vi := range v.Instances {
			st, ok := v.Statuses[vi.Instance.ID]
			if vi.Instance.ServiceKey() == svc.Key() && vi.Instance.Revision == r.Revision && ok && st.Ready && !vi.Instance.Draining {
				in.CanaryReady++
			}
		}
		if r.WeightRevision == 0 && r.Weight > 0 {
			// First sight of the weight write: remember its revision (the
			// rollout's later writes only change its message).
			r.WeightRevision = vr.ModRevision
			if _, err := c.store.PutRollout(ctx, r, vr.ModRevision); err != nil {
				return fmt.Errorf("controller: rollout of %s: %w", svc.Key(), err)
			}
			continue
		}
		in.Acked = true
		if r.WeightRevision != 0 {
			in.Acked, in.Waiting = c.acked(ctx, v, r.WeightRevision)
		}
		if c.loads != nil && !r.StepStartedAt.IsZero() {
			window := max(in.Now.Sub(r.StepStartedAt), time.Second)
			in.CanaryRequests, in.CanaryErrors = c.loads.RevisionLoad(r.Namespace, r.Service, r.Revision, window)
		}
		d := DecideRollout(r, in)
		if !d.Changed {
			continue
		}
		var err error
		if d.RollBack {
			err = c.store.RollBack(ctx, d.Next, vr.ModRevision)
		} else {
			_, err = c.store.PutRollout(ctx, d.Next, vr.ModRevision)
		}
		if err != nil {
			return fmt.Errorf("controller: rollout of %s: %w", svc.Key(), err)
		}
		if d.Event != "" {
			typ, reason := "Normal", "Rollout"
			if d.RollBack {
				typ, reason = "Warning", "RolledBack"
			}
			c.event(ctx, r.Namespace, "service/"+r.Service, reason, typ, "%s", d.Event)
		}
	}
	return nil
}

// stableRevision is the revision other than the current one with the most
// ready replicas: the one a canary is compared with and falls back to.
func (c *Controller) stableRevision(v *store.View, svc *api.Service) int64 {
	ready := map[int64]int{}
	for _, vi := range v.Instances {
		in := vi.Instance
		if in.ServiceKey() != svc.Key() || in.Revision == svc.Status.Revision || in.Draining || in.Desired != api.DesiredRunning {
			continue
		}
		if st, ok := v.Statuses[in.ID]; ok && st.Ready {
			ready[in.Revision]++
		}
	}
	best, most := int64(0), 0
	for rev, n := range ready {
		if n > most || (n == most && rev > best) {
			best, most = rev, n
		}
	}
	return best
}
