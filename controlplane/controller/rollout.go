package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

// RevisionLoad is what the gateways reported for one revision over a
// window.
type RevisionLoad struct {
	Requests, Errors int64
	// P99 latency, estimated from LatencySamples requests (0: none).
	P99            time.Duration
	LatencySamples int64
	// Impossible counts reports whose figures cannot be true (more
	// requests completed than issued); they are not in Requests.
	Impossible int64
}

// LoadReader reports a revision's load over a window, from the gateways'
// load reports (the xDS server's LRS implements it).
type LoadReader interface {
	RevisionLoad(namespace, service string, revision int64, window time.Duration) RevisionLoad
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
	// Canary and stable requests and errors since the step's weight took
	// effect.
	CanaryRequests, CanaryErrors int64
	StableRequests, StableErrors int64
	// CanaryP99 is the canary's p99 latency over the same window, from
	// CanaryLatencySamples requests (0: no latency reported).
	CanaryP99            time.Duration
	CanaryLatencySamples int64
	// ImpossibleReports counts load reports for either revision since the
	// step's weight took effect whose figures cannot be true: analysis
	// then neither promotes nor rolls back on the data (it holds, and the
	// progress deadline still applies).
	ImpossibleReports int64
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

// Thresholds are the limits a canary's analysis judges it by.
type Thresholds struct {
	MaxErrorRate float64
	MinRequests  int64
	// MaxLatency bounds the canary's p99 (0: latency is not judged).
	MaxLatency time.Duration
}

// AnalysisThresholds are spec's limits, the defaults where it sets none;
// ok is false when the spec asks for no analysis (nothing is judged). The
// analysis and whoever draws its limits (the dashboard's plots) read them
// here.
func AnalysisThresholds(spec api.RolloutSpec) (t Thresholds, ok bool) {
	t = Thresholds{MaxErrorRate: DefaultMaxErrorRate, MinRequests: DefaultMinRequests}
	a := spec.Analysis
	if a == nil {
		return t, false
	}
	if a.MaxErrorRate > 0 {
		t.MaxErrorRate = a.MaxErrorRate
	}
	if a.MinRequests > 0 {
		t.MinRequests = a.MinRequests
	}
	t.MaxLatency = a.MaxLatency.Duration
	return t, true
}

// DecideRollout is the canary state machine, a pure function. A step is:
// scale the canary for the step's weight -> set the weight -> wait until
// every gateway has ACKed it -> pause (a duration, or until promoted) ->
// analysis -> next step. A failed analysis, at any point of a step, rolls
// back at once: all traffic to stable in one move.
func DecideRollout(r api.Rollout, in RolloutInputs) RolloutDecision {
	if d, ok := decideAbort(r); ok {
		return d
	}
	if r.Active() && (r.Pause || r.Resume) {
		// The user's pause or resume, in the order asked (a pause and a
		// resume both pending: the resume came last and wins).
		d := RolloutDecision{Next: r, Changed: true}
		d.Next.Pause, d.Next.Resume = false, false
		if r.Resume {
			d.Next.Phase, d.Next.ProgressAt, d.Event = api.RolloutProgressing, in.Now, "resumed by the user"
		} else {
			d.Next.Phase, d.Next.Promote, d.Next.PromoteFull, d.Event = api.RolloutPaused, false, false, "paused by the user"
		}
		d.Next.Message = d.Event
		return d
	}
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
	finishing := r.PromoteFull || r.Step >= len(steps)
	step := api.CanaryStep{Weight: 100}
	if !finishing {
		step = steps[r.Step]
	}
	limits, _ := AnalysisThresholds(in.Spec)
	maxRate, minReq := limits.MaxErrorRate, limits.MinRequests
	// A failing canary rolls back whatever the step is doing, paused
	// included: all traffic to stable in one move.
	hold := in.Spec.Analysis != nil && in.ImpossibleReports > 0
	if why := judge(in, r.Weight, maxRate, minReq); why != "" && !hold {
		d.RollBack, d.Changed = true, true
		d.Next.Phase, d.Next.Weight, d.Next.Promote = api.RolloutRolledBack, 0, false
		d.Event = fmt.Sprintf("analysis failed at step %d: %s; rolled back to revision %d", r.Step+1, why, r.Stable)
		d.Next.Message = d.Event
		return d
	}
	// The progress deadline counts while the rollout waits for replicas,
	// for the weight to take effect, or for traffic to judge; a pause does
	// not count (resume and promote restart the clock).
	deadline := in.Spec.Deadline()
	if r.ProgressAt.IsZero() {
		d.Next.ProgressAt, d.Changed = in.Now, true
	}
	deadlineAt := d.Next.DeadlineAt(&in.Spec)
	stalled := func(waiting string) RolloutDecision {
		if deadlineAt.IsZero() || !in.Now.After(deadlineAt) {
			set(waiting)
			return d
		}
		d.RollBack, d.Changed = true, true
		d.Next.Phase, d.Next.Weight, d.Next.Promote = api.RolloutRolledBack, 0, false
		d.Event = fmt.Sprintf("progress deadline %s exceeded (%s); rolled back to revision %d", deadline, waiting, r.Stable)
		d.Next.Message = d.Event
		return d
	}
	if finishing {
		// The canary takes all the traffic only once it has the replicas
		// to carry it: it is scaled to the full count first (planReplicas),
		// and the deadline holds while they come up.
		if d.Next.Phase == api.RolloutPaused {
			d.Next.Phase, d.Next.ProgressAt, d.Changed = api.RolloutProgressing, in.Now, true
			deadlineAt = time.Time{}
		}
		if in.CanaryReady < in.Replicas {
			why := "promoted in full"
			if !r.PromoteFull {
				why = "last step passed"
			}
			return stalled(fmt.Sprintf("%s: waiting for %d/%d canary replicas to be ready before 100%%", why, in.CanaryReady, in.Replicas))
		}
		d.Next.Phase, d.Next.Weight, d.Next.Promote, d.Next.PromoteFull = api.RolloutSucceeded, 100, false, false
		d.Next.Step, d.Next.ProgressAt = max(r.Step, len(steps)), in.Now
		d.Changed, d.Event = true, fmt.Sprintf("canary revision %d promoted to 100%%", r.Revision)
		d.Next.Message = d.Event
		return d
	}
	if r.Phase == api.RolloutPaused && !r.Promote {
		return d
	}
	if r.Phase == api.RolloutPaused && r.Promote {
		d.Next.Phase, d.Next.ProgressAt, d.Changed = api.RolloutProgressing, in.Now, true
		deadlineAt = time.Time{} // promoted just now: nothing is late yet
	}
	if r.Weight != step.Weight {
		need := CanaryReplicas(in.Replicas, step.Weight)
		if n := in.Spec.CanaryReplicas; n != nil {
			need = int(*n)
		}
		if in.CanaryReady < need {
			return stalled(fmt.Sprintf("step %d/%d: waiting for %d/%d canary replicas to be ready", r.Step+1, len(steps), in.CanaryReady, need))
		}
		d.Next.Weight, d.Next.StepStartedAt, d.Next.WeightRevision, d.Next.ProgressAt, d.Changed = step.Weight, in.Now, 0, in.Now, true
		d.Event = fmt.Sprintf("step %d/%d: canary revision %d at %d%% of traffic", r.Step+1, len(steps), r.Revision, step.Weight)
		d.Next.Message = d.Event
		return d
	}
	if !in.Acked {
		who := in.Waiting
		if who == "" {
			who = "every gateway and node DNS"
		}
		return stalled(fmt.Sprintf("step %d/%d: waiting for %s to apply %d%%", r.Step+1, len(steps), who, step.Weight))
	}
	switch {
	case step.Pause == api.PauseUntilPromoted && !r.Promote:
		if r.Phase != api.RolloutPaused {
			d.Next.Phase, d.Changed = api.RolloutPaused, true
		}
		set(fmt.Sprintf("step %d/%d: at %d%%, waiting for `berth rollout promote`", r.Step+1, len(steps), step.Weight))
		return d
	case step.Pause != "" && step.Pause != api.PauseUntilPromoted:
		pause, _ := step.Pause.Duration()
		if left := r.StepStartedAt.Add(pause).Sub(in.Now); left > 0 {
			set(fmt.Sprintf("step %d/%d: at %d%%, pausing", r.Step+1, len(steps), step.Weight))
			return d
		}
	}
	if hold {
		return stalled(fmt.Sprintf("step %d/%d: analysis holds: %d load reports since the step began cannot be true (more requests completed than were issued); neither promoting nor rolling back on them (see berth_xds_lrs_impossible_reports_total and the server log for the gateway)",
			r.Step+1, len(steps), in.ImpossibleReports))
	}
	if in.Spec.Analysis != nil && in.CanaryRequests < minReq {
		return stalled(fmt.Sprintf("step %d/%d: analysis waits for traffic (%d/%d requests)", r.Step+1, len(steps), in.CanaryRequests, minReq))
	}
	d.Next.Step, d.Next.Promote, d.Next.ProgressAt, d.Changed = r.Step+1, false, in.Now, true
	if d.Next.Step >= len(steps) {
		// Passed the last step: the next decisions scale the canary to the
		// full count and then move the weight to 100.
		d.Next.Message = fmt.Sprintf("last step passed: scaling canary revision %d to %d replicas before 100%%", r.Revision, in.Replicas)
		if in.CanaryReady >= in.Replicas {
			d.Next.Phase, d.Next.Weight = api.RolloutSucceeded, 100
			d.Event = fmt.Sprintf("canary revision %d promoted to 100%%", r.Revision)
			d.Next.Message = d.Event
		}
	}
	return d
}

// judge returns why the canary fails its analysis, or "" while it passes
// or cannot be judged yet (fewer than minReq requests: no traffic means
// wait, not pass).
func judge(in RolloutInputs, weight uint32, maxRate float64, minReq int64) string {
	a := in.Spec.Analysis
	if a == nil || weight == 0 || in.CanaryRequests < minReq {
		return ""
	}
	rate := float64(in.CanaryErrors) / float64(in.CanaryRequests)
	if rate > maxRate {
		return fmt.Sprintf("canary error rate %.1f%% (%d/%d) above %.1f%%", 100*rate, in.CanaryErrors, in.CanaryRequests, 100*maxRate)
	}
	if a.MaxErrorRateIncrease > 0 && in.StableRequests >= minReq {
		stable := float64(in.StableErrors) / float64(in.StableRequests)
		if rate-stable > a.MaxErrorRateIncrease+1e-9 { // "more than": 5% vs 3% with 2 points passes
			return fmt.Sprintf("canary error rate %.1f%% (%d/%d) exceeds the stable revision's %.1f%% (%d/%d) by more than %.1f points",
				100*rate, in.CanaryErrors, in.CanaryRequests, 100*stable, in.StableErrors, in.StableRequests, 100*a.MaxErrorRateIncrease)
		}
	}
	if a.MaxLatency.Duration > 0 && in.CanaryLatencySamples >= minReq && in.CanaryP99 > a.MaxLatency.Duration {
		return fmt.Sprintf("canary p99 latency %s (%d requests) above %s", in.CanaryP99.Round(time.Millisecond), in.CanaryLatencySamples, a.MaxLatency.Duration)
	}
	return ""
}

// RollingInputs is what one rolling-update decision reads.
type RollingInputs struct {
	Now      time.Time
	Deadline time.Duration
	Replicas int
	// Available counts the new revision's available replicas (ready, for
	// minReady); OldLive the older revisions' replicas not yet drained.
	Available, OldLive int
}

// DecideRolling follows a rolling update (the replica planner paces it):
// it records progress as new replicas become available, succeeds once all
// are and no old replica is left, and rolls back when no new replica has
// become available within the progress deadline. The old revision's
// replicas drain only as new ones become available, so rolling back
// loses no capacity.
func DecideRolling(r api.Rollout, in RollingInputs) RolloutDecision {
	if d, ok := decideAbort(r); ok {
		return d
	}
	d := RolloutDecision{Next: r}
	if !r.Active() {
		return d
	}
	if r.ProgressAt.IsZero() || in.Available > r.Available {
		d.Next.ProgressAt, d.Next.Available, d.Changed = in.Now, in.Available, true
	}
	if in.Available >= in.Replicas && in.OldLive == 0 {
		d.Next.Phase, d.Changed = api.RolloutSucceeded, true
		d.Event = fmt.Sprintf("rolling update to revision %d complete: %d/%d replicas available", r.Revision, in.Available, in.Replicas)
		d.Next.Message = d.Event
		return d
	}
	waiting := fmt.Sprintf("%d/%d new replicas available, %d old replicas left", in.Available, in.Replicas, in.OldLive)
	if !d.Changed && in.Now.Sub(r.ProgressAt) > in.Deadline {
		d.RollBack, d.Changed = true, true
		d.Next.Phase = api.RolloutRolledBack
		d.Event = fmt.Sprintf("progress deadline %s exceeded (%s); rolled back to revision %d", in.Deadline, waiting, r.Stable)
		d.Next.Message = d.Event
		return d
	}
	if d.Next.Message != waiting {
		d.Next.Message, d.Changed = waiting, true
	}
	return d
}

// decideAbort rolls an active rollout back at once when the user asked
// to abort it: all traffic to stable in one move, then the new revision
// drains.
func decideAbort(r api.Rollout) (RolloutDecision, bool) {
	if !r.Abort || !r.Active() {
		return RolloutDecision{}, false
	}
	d := RolloutDecision{Next: r, Changed: true, RollBack: true}
	d.Next.Phase, d.Next.Weight, d.Next.Promote, d.Next.PromoteFull, d.Next.Abort = api.RolloutAborted, 0, false, false, false
	d.Event = fmt.Sprintf("aborted by the user; rolled back to revision %d", r.Stable)
	d.Next.Message = d.Event
	return d, true
}

// reconcileRollouts starts a rollout for each new revision that replaces
// a serving one, and follows the active ones: canaries step by step,
// rolling updates to completion, both within their progress deadline.
func (c *Controller) reconcileRollouts(ctx context.Context, v *store.View) error {
	c.observeRollouts(v)
	now := c.now().UTC()
	for i := range v.Services {
		svc := &v.Services[i]
		spec := svc.Spec.Rollout
		// An undo to a known-good revision skips the canary steps: it
		// rolls within the policy's surge limits (Argo's rollback window).
		undo := svc.Status.RollbackTo != 0
		canary := spec != nil && spec.Strategy == api.StrategyCanary && len(spec.Steps) > 0 && !undo
		vr, has := v.Rollouts[svc.Key()]
		if !has || vr.Rollout.Revision != svc.Status.Revision {
			if has && vr.Rollout.Stable == svc.Status.Revision && !vr.Rollout.Active() {
				continue // rolled back: the stable revision is current again
			}
			stable := c.stableRevision(v, svc)
			if stable == 0 {
				continue // first deploy: nothing to compare with or go back to
			}
			r := api.Rollout{Namespace: svc.Metadata.Namespace, Service: svc.Metadata.Name, Revision: svc.Status.Revision,
				Stable: stable, Phase: api.RolloutProgressing, ProgressAt: now, Strategy: api.StrategyCanary}
			msg := fmt.Sprintf("canary revision %d against stable revision %d", r.Revision, stable)
			if !canary {
				r.Strategy = api.StrategyRolling
				msg = fmt.Sprintf("rolling update to revision %d from revision %d", r.Revision, stable)
				if undo {
					msg = fmt.Sprintf("revision %d has the known-good template of revision %d (an undo or a restart): a rolling update, no canary steps", r.Revision, svc.Status.RollbackTo)
				}
			}
			r.Message = msg
			if _, err := c.store.PutRollout(ctx, r, vr.ModRevision); err != nil {
				return fmt.Errorf("controller: start rollout of %s: %w", svc.Key(), err)
			}
			c.event(ctx, r.Namespace, "service/"+r.Service, "RolloutStarted", "Normal", "%s", msg)
			continue
		}
		r := vr.Rollout
		if !r.Active() {
			continue
		}
		var d RolloutDecision
		if r.Canary() {
			if spec == nil {
				spec = &api.RolloutSpec{}
			}
			in, wait := c.canaryInputs(ctx, v, svc, r, vr.ModRevision, *spec, now)
			if wait {
				continue
			}
			d = DecideRollout(r, in)
		} else {
			d = DecideRolling(r, c.rollingInputs(v, svc, r, now))
		}
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
			switch {
			case d.Next.Phase == api.RolloutAborted:
				typ, reason = "Warning", "Aborted"
			case d.RollBack:
				typ, reason = "Warning", "RolledBack"
			}
			c.event(ctx, r.Namespace, "service/"+r.Service, reason, typ, "%s", d.Event)
		}
	}
	return nil
}

// observeRollouts counts, from the view, each rollout that finished since
// this controller first saw it active, whoever ended it (the controllers,
// or an abort through the API).
func (c *Controller) observeRollouts(v *store.View) {
	for key := range c.activeRollouts {
		if _, ok := v.Rollouts[key]; !ok {
			delete(c.activeRollouts, key) // deleted with its service
		}
	}
	for key, vr := range v.Rollouts {
		r := vr.Rollout
		was, seen := c.activeRollouts[key]
		if r.Active() {
			c.activeRollouts[key] = r.Revision
			continue
		}
		delete(c.activeRollouts, key)
		if seen && was == r.Revision {
			strategy := api.StrategyCanary
			if !r.Canary() {
				strategy = api.StrategyRolling
			}
			c.rollouts.WithLabelValues(strategy, r.Phase).Inc()
		}
	}
}

// canaryInputs gathers what DecideRollout reads. wait is true when the
// rollout was just written (to remember the etcd revision of its weight)
// and the decision should wait for the next pass.
func (c *Controller) canaryInputs(ctx context.Context, v *store.View, svc *api.Service, r api.Rollout, modRev int64, spec api.RolloutSpec, now time.Time) (in RolloutInputs, wait bool) {
	in = RolloutInputs{Now: now, Spec: spec, Replicas: int(svc.Spec.ReplicaCount())}
	for _, vi := range v.Instances {
		if vi.Instance.ServiceKey() == svc.Key() && vi.Instance.Revision == r.Revision && vi.Instance.Live() && vi.Instance.ReadyWith(v.Statuses[vi.Instance.ID]) {
			in.CanaryReady++
		}
	}
	if r.WeightRevision == 0 && r.Weight > 0 {
		// First sight of the weight write: remember its revision (the
		// rollout's later writes only change its message).
		r.WeightRevision = modRev
		if _, err := c.store.PutRollout(ctx, r, modRev); err != nil {
			c.logger.Debug("remember weight revision", "service", svc.Key(), "err", err)
		}
		return in, true
	}
	in.Acked = true
	if r.WeightRevision != 0 {
		in.Acked, in.Waiting = c.acked(v, r.WeightRevision)
	}
	if c.loads != nil && !r.StepStartedAt.IsZero() {
		window := max(now.Sub(r.StepStartedAt), time.Second)
		canary := c.loads.RevisionLoad(r.Namespace, r.Service, r.Revision, window)
		stable := c.loads.RevisionLoad(r.Namespace, r.Service, r.Stable, window)
		in.CanaryRequests, in.CanaryErrors = canary.Requests, canary.Errors
		in.StableRequests, in.StableErrors = stable.Requests, stable.Errors
		in.CanaryP99, in.CanaryLatencySamples = canary.P99, canary.LatencySamples
		in.ImpossibleReports = canary.Impossible + stable.Impossible
	}
	return in, false
}

// rollingInputs counts a rolling update's available new replicas (ready
// for minReady, as the replica planner counts them) and old ones left.
func (c *Controller) rollingInputs(v *store.View, svc *api.Service, r api.Rollout, now time.Time) RollingInputs {
	in := RollingInputs{Now: now, Deadline: svc.Spec.Rollout.Deadline(), Replicas: int(svc.Spec.ReplicaCount())}
	var minReady time.Duration
	if svc.Spec.Rollout != nil {
		minReady = svc.Spec.Rollout.MinReady.Duration
	}
	for _, vi := range v.Instances {
		inst := vi.Instance
		if inst.ServiceKey() != svc.Key() || !inst.Live() {
			continue
		}
		if inst.Revision != r.Revision {
			in.OldLive++
			continue
		}
		if inst.AvailableWith(v.Statuses[inst.ID], minReady, now) {
			in.Available++
		}
	}
	return in
}

// stableRevision is the revision other than the current one with the most
// ready replicas: the one a canary is compared with and falls back to.
func (c *Controller) stableRevision(v *store.View, svc *api.Service) int64 {
	ready := map[int64]int{}
	for _, vi := range v.ServiceInstances(svc.Key()) {
		in := vi.Instance
		if in.Revision == svc.Status.Revision || !in.Live() {
			continue
		}
		if in.ReadyWith(v.Statuses[in.ID]) {
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
