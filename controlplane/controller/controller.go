// Package controller holds the control plane's reconcile loops: replicas
// (instances per service revision converge to the spec), scheduling
// (unplaced instances get a node), draining (an instance leaves discovery,
// waits for every gateway's ACK and the DNS TTL, then is told to stop) and
// garbage collection (stopped instances are deleted). Every loop is
// idempotent and level-triggered: it reads an immutable View of the
// watch-fed cache, decides, and commits with compare-and-swap, so a stale
// decision fails and is recomputed, never applied twice.
//
// This is the one place that decides to stop a container; agents only
// carry it out.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/scheduler"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
	"github.com/prometheus/client_golang/prometheus"
)

// Config tunes the controllers.
type Config struct {
	// DrainDelay is the least time between an endpoint leaving discovery
	// and its container being stopped: the DNS TTL, so no resolver still
	// hands out the address.
	DrainDelay time.Duration
	// Resync re-runs the loops without a change, for time-based steps.
	Resync time.Duration
	// LostGrace is how long a node may stay NotReady before it is Lost:
	// its instances are then deleted and replaced on other nodes.
	LostGrace time.Duration
	// StartGrace: for this long after Run starts (this replica took the
	// lead, perhaps after the control plane was down), no node is judged
	// NotReady for missing liveness: its agent gets a fair chance to
	// reach the control plane again first.
	StartGrace time.Duration
	// JoinGrace: a node that registered less than this ago is not judged
	// NotReady for missing liveness: Register stores the node before its
	// liveness claim lands, and a view between the two must not flap a
	// new node NotReady (with a Warning) on every join.
	JoinGrace time.Duration
	// Loads feeds canary analysis (nil: steps pass without analysis data).
	Loads LoadReader
	// VersionFor maps an etcd revision to the discovery snapshot version
	// that carries its state (the Publisher's VersionFor); nil: the
	// revision itself.
	VersionFor func(rev int64) (uint64, bool)
	Logger     *slog.Logger
	// Registerer receives the controllers' metrics; may be nil.
	Registerer prometheus.Registerer
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{DrainDelay: 5 * time.Second, Resync: time.Second, LostGrace: 6 * time.Second}
}

// Controller runs the reconcile loops.
type Controller struct {
	cfg       Config
	startedAt time.Time
	graceFor  map[string]bool // the nodes there were when Run started
	// notReadySeen is when this leader first saw each node NotReady, on
	// its monotonic clock: Lost needs LostGrace of it as well as of the
	// stored StateSince (an earlier leader's wall clock), so a jump of
	// this machine's wall clock never makes a node Lost early.
	notReadySeen map[string]time.Time
	store        Store
	cache        Views
	sched        *scheduler.Scheduler
	loads        LoadReader
	logger       *slog.Logger
	now          func() time.Time

	unschedulable map[string]string // instance id -> last reason, to avoid repeating events
	commitFailed  map[string]string // service key -> last commit failure, likewise
	pruned        map[string]string // service key -> current and in-use revisions when its history was last pruned

	reconciles prometheus.Counter
	conflicts  prometheus.Counter
	placed     prometheus.Counter
	stale      prometheus.Counter
	// rollouts counts finished rollouts by strategy and result (the
	// state of each, weight and phase, is statemetrics').
	rollouts *prometheus.CounterVec
	// activeRollouts: the revision of each rollout seen in progress, so
	// its end is counted once.
	activeRollouts map[string]int64
	events         []store.Event // queued by event, written after each step
	// staleGateways are the gateways seen STALE, "<replica>/<node id>".
	staleGateways map[string]bool
	// panicking are the services ("<ns>/<name>") seen in panic routing,
	// with the nodes of their kept endpoints (notePanics).
	panicking map[string][]string
	// panicInputs are the inputs each service was last checked with: a
	// service whose inputs did not move is not built again.
	panicInputs map[string]panicInputs
}

// panicInputs are what decides whether a service is in panic routing:
// its generation (its instances, statuses, rollout), the nodes'
// generation, and whether the start grace spared the nodes.
type panicInputs struct {
	service, nodes uint64
	grace          bool
}

// New returns a controller.
func New(cfg Config, st Store, cache Views) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	def := DefaultConfig() // the one place defaults live
	if cfg.Resync <= 0 {
		cfg.Resync = def.Resync
	}
	if cfg.LostGrace <= 0 {
		cfg.LostGrace = def.LostGrace
	}
	c := &Controller{
		cfg: cfg, store: st, cache: cache, sched: scheduler.New(), loads: cfg.Loads,
		logger: cfg.Logger.With("component", "controller"), now: time.Now,
		unschedulable: map[string]string{}, commitFailed: map[string]string{}, pruned: map[string]string{}, activeRollouts: map[string]int64{},
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_controller_reconciles_total", Help: "Reconcile passes run."}),
		conflicts:  prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_controller_conflicts_total", Help: "Commits refused because state changed meanwhile (retried)."}),
		placed:     prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_scheduler_placements_total", Help: "Instances placed on nodes."}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_controller_stale_views_total",
			Help: "Reconcile passes ended early because the cache did not show the controllers' own last write yet."}),
		rollouts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_rollouts_total",
			Help: "Rollouts finished, by strategy and result (Succeeded, RolledBack, Aborted)."}, []string{"strategy", "result"}),
	}
	// Every strategy and result has its series from the start, at 0, so
	// an increase() over them works before the first rollout ends.
	for _, strategy := range []string{api.StrategyCanary, api.StrategyRolling} {
		for _, result := range []string{api.RolloutSucceeded, api.RolloutRolledBack, api.RolloutAborted} {
			c.rollouts.WithLabelValues(strategy, result)
		}
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.reconciles, c.conflicts, c.placed, c.stale, c.rollouts)
	}
	return c
}

// Run reconciles on every change and every Resync until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.startedAt, c.graceFor, c.panicking, c.panicInputs, c.notReadySeen = c.now(), nil, nil, nil, map[string]time.Time{}
	changes, unsubscribe := c.cache.Subscribe()
	defer unsubscribe()
	tick := time.NewTicker(c.cfg.Resync)
	defer tick.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-c.cache.Ready():
	}
	var pruned time.Time
	full, lastGen := true, uint64(0)
	for {
		if now := c.now(); now.Sub(pruned) >= time.Minute {
			pruned = now
			if n, err := c.store.PruneEvents(ctx); err != nil {
				c.logger.Debug("prune events", "err", err)
			} else if n > 0 {
				c.logger.Debug("pruned old events", "count", n)
			}
		}
		// A change that left placement and discovery alone (a heartbeat,
		// a gateway's ACK) can only move node states, rollouts and drains
		// on; the resync tick runs every loop.
		var err error
		if gen := c.cache.View().Gen; full || gen != lastGen {
			lastGen = gen
			err = c.Reconcile(ctx)
		} else {
			err = c.reconcile(ctx, c.reconcileNodes, c.reconcileRollouts, c.drain)
		}
		if err != nil && ctx.Err() == nil {
			if errors.Is(err, store.ErrConflict) {
				c.conflicts.Inc()
				c.logger.Debug("reconcile conflict, retrying", "err", err)
			} else {
				c.logger.Warn("reconcile failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
			full = false
		case <-tick.C:
			full = true
		}
	}
}

// Reconcile runs one pass of every loop over the current view.
func (c *Controller) Reconcile(ctx context.Context) error {
	return c.reconcile(ctx, c.reconcileNodes, c.drainNodes, c.reconcileRollouts, c.reconcileReplicas, c.schedule, c.drain, c.collect, c.pruneRevisions)
}

func (c *Controller) reconcile(ctx context.Context, steps ...func(context.Context, *store.View) error) error {
	c.reconciles.Inc()
	var errs []error
	// Each step commits on its own and the next reads a fresh view; a view
	// that does not show the controllers' own last write yet ends the pass
	// (the cache wakes the next one when it catches up): deciding on it
	// would, for one, create a service's replicas a second time.
	for _, step := range steps {
		v := c.cache.View()
		if v.Revision < c.store.Written() {
			c.stale.Inc()
			break
		}
		err := step(ctx, v)
		c.flushEvents(ctx)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// event queues an event; each reconcile step's events are written
// together when it ends (flushEvents).
func (c *Controller) event(ctx context.Context, ns, object, reason, typ, format string, args ...any) {
	c.events = append(c.events, store.Event{At: c.now().UTC(), Namespace: ns, Object: object, Reason: reason, Type: typ, Message: fmt.Sprintf(format, args...)})
}

func (c *Controller) flushEvents(ctx context.Context) {
	if len(c.events) == 0 {
		return
	}
	if err := c.store.RecordEvents(ctx, c.events); err != nil {
		c.logger.Warn("record events failed", "count", len(c.events), "err", err)
	}
	c.events = c.events[:0]
}

// reconcileNodes moves nodes between Ready, NotReady and Lost, and
// replaces the instances of Lost nodes: they are deleted, so the replica
// loop creates new ones elsewhere, and a node that comes back finds no
// assignment for its old containers and stops them (fencing by identity:
// a deleted instance is never assigned again).
func (c *Controller) reconcileNodes(ctx context.Context, v *store.View) error {
	c.noteStaleGateways(ctx, v)
	if c.graceFor == nil {
		c.graceFor = map[string]bool{}
		for _, n := range v.Nodes {
			c.graceFor[n.Name] = true
		}
	}
	c.notePanics(ctx, v)
	mono := c.now() // UTC() below drops the monotonic reading
	now := mono.UTC()
	if c.notReadySeen == nil {
		c.notReadySeen = map[string]time.Time{}
	}
	for name := range c.notReadySeen {
		if n := v.Node(name); n == nil || n.State != api.NodeNotReady {
			delete(c.notReadySeen, name)
		}
	}
	var errs []error
	for _, n := range v.Nodes {
		// A removed node is lost at once, whatever it still sends.
		live := v.LiveNodes[n.Name] && !n.Removed
		var watched time.Duration // NotReady under this leader's eyes
		if n.State == api.NodeNotReady {
			watched = c.watchedNotReady(n.Name, mono)
		}
		var next string
		switch {
		case n.Removed && n.State != api.NodeLost:
			next = api.NodeLost
		case live && n.State != api.NodeReady:
			next = api.NodeReady
		case !live && c.spared(&n, now):
			// Just took the lead: the agent may not have reached us yet.
		case !live && n.State == api.NodeReady && now.Sub(n.Heartbeat) < c.cfg.JoinGrace:
			// Just registered (Register sets Heartbeat): its claim is on
			// its way.
		case !live && (n.State == api.NodeReady || n.State == ""):
			next = api.NodeNotReady
		case !live && n.State == api.NodeNotReady && now.Sub(n.StateSince) >= c.cfg.LostGrace && watched >= c.cfg.LostGrace:
			next = api.NodeLost
		}
		if next != "" {
			heartbeat := n.Heartbeat
			_, err := c.store.UpdateNode(ctx, n.Name, func(m *api.Node) bool {
				if m.State == next {
					return false
				}
				m.State, m.StateSince = next, now
				if heartbeat.After(m.Heartbeat) {
					m.Heartbeat = heartbeat
				}
				return true
			})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			switch next {
			case api.NodeReady:
				c.event(ctx, "", "node/"+n.Name, "NodeReady", "Normal", "node %s is ready", n.Name)
			case api.NodeNotReady:
				c.notReadySeen[n.Name] = mono
				c.event(ctx, "", "node/"+n.Name, "NodeNotReady", "Warning", "node %s missed its heartbeats (last %s); its endpoints left discovery (kept by panic routing for a service that has no other)", n.Name, heartbeat.Format(time.RFC3339))
			case api.NodeLost:
				c.event(ctx, "", "node/"+n.Name, "NodeLost", "Warning", "node %s lost after %s NotReady; its instances are replaced elsewhere", n.Name, c.cfg.LostGrace)
			}
			n.State = next
		}
		if n.State != api.NodeLost || live {
			continue
		}
		var changes []store.InstanceChange
		for _, vi := range v.Instances {
			if vi.Instance.Node == n.Name {
				changes = append(changes, store.InstanceChange{Instance: vi.Instance, ModRevision: vi.ModRevision, Delete: true})
			}
		}
		if len(changes) == 0 {
			if n.Removed {
				if err := c.store.DeleteNode(ctx, n.Name); err != nil {
					errs = append(errs, fmt.Errorf("controller: delete removed node %s: %w", n.Name, err))
				} else {
					c.event(ctx, "", "node/"+n.Name, "NodeDeleted", "Normal", "removed node %s has no instances left and is deleted; its pod subnet %s is free", n.Name, n.PodCIDR)
				}
			}
			continue
		}
		changes, err := c.commit(ctx, "replace instances of lost node "+n.Name, changes)
		if err != nil {
			errs = append(errs, err)
		}
		for _, ch := range changes {
			c.event(ctx, ch.Instance.Namespace, "service/"+ch.Instance.Service, "Replaced", "Warning", "instance %s was on lost node %s; a replacement is scheduled elsewhere", ch.Instance.ID, n.Name)
		}
	}
	return errors.Join(errs...)
}

// drainNodes drains the live instances of nodes marked for draining
// (`berth node drain` records the intent): each leaves discovery, the
// replica loop places a replacement elsewhere (the node is cordoned), and
// the drain step stops it.
func (c *Controller) drainNodes(ctx context.Context, v *store.View) error {
	var changes []store.InstanceChange
	now := c.now().UTC()
	draining := map[string]int{}
	for _, n := range v.Nodes {
		if !n.Drain {
			continue
		}
		for _, vi := range v.NodeInstances(n.Name) {
			in := vi.Instance
			if !in.Live() {
				continue
			}
			in.Draining, in.DrainSince = true, now
			changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision})
			draining[n.Name]++
		}
	}
	if len(changes) == 0 {
		return nil
	}
	done, err := c.commit(ctx, "drain nodes", changes)
	for _, ch := range done {
		in := ch.Instance
		c.event(ctx, in.Namespace, "service/"+in.Service, "Draining", "Normal", "instance %s (revision %d) leaves node %s, which is being drained", in.ID, in.Revision, in.Node)
	}
	return err
}

// pruneRevisions keeps each service's history bounded: revisions beyond
// the newest store keeps, and not run by any instance, are deleted,
// whenever the service's revision or the revisions its instances run
// change.
func (c *Controller) pruneRevisions(ctx context.Context, v *store.View) error {
	var errs []error
	for i := range v.Services {
		svc := &v.Services[i]
		key, current := svc.Key(), svc.Status.Revision
		inUse := map[int64]bool{}
		for _, vi := range v.ServiceInstances(key) {
			inUse[vi.Instance.Revision] = true
		}
		sig := fmt.Sprint(current, slices.Sorted(maps.Keys(inUse)))
		if c.pruned[key] == sig || current == 0 {
			continue
		}
		n, err := c.store.PruneRevisions(ctx, svc.Metadata.Namespace, svc.Metadata.Name, current, inUse)
		if err != nil {
			errs = append(errs, fmt.Errorf("controller: prune revisions of %s: %w", key, err))
			continue
		}
		c.pruned[key] = sig
		if n > 0 {
			c.logger.Info("pruned old revisions", "service", key, "count", n)
		}
	}
	return errors.Join(errs...)
}

// ReplicaPlan is what the replica loop decided for one service: instances
// to create and instances to drain. It is computed by PlanReplicas, a pure
// function, so it is tested without etcd.
type ReplicaPlan struct {
	Create []api.Instance
	Drain  []store.VersionedInstance
}

// PlanReplicas decides, for one service (nil if deleted) and its
// instances, what to create and what to drain:
//   - the current revision gets exactly spec.replicas live instances;
//     extras are drained, unplaced first, then not-ready, then newest;
//   - older revisions are drained once the current revision has all its
//     replicas ready (surge replacement: capacity never dips), or at once
//     when the service is scaled to zero; old replicas that are not ready
//     serve nothing and are drained at once;
//   - instances of a deleted service are drained.
func PlanReplicas(svc *api.Service, instances []store.VersionedInstance, statuses map[string]api.InstanceStatus, now time.Time, newID func(string) string) ReplicaPlan {
	return planReplicas(svc, nil, instances, statuses, now, newID)
}

// CanaryReplicas is how many replicas a canary runs to carry weight
// percent of a service of want replicas: in proportion, at least one.
func CanaryReplicas(want int, weight uint32) int {
	n := (want*int(weight) + 99) / 100
	return max(1, min(n, want))
}

// planReplicas is PlanReplicas with the service's canary, if one is
// active: then the canary revision runs CanaryReplicas for the weight of
// the step it is going to, and the stable revision keeps its replicas.
func planReplicas(svc *api.Service, ro *api.Rollout, instances []store.VersionedInstance, statuses map[string]api.InstanceStatus, now time.Time, newID func(string) string) ReplicaPlan {
	var plan ReplicaPlan
	live := func(in *api.Instance) bool { return !in.Draining && in.Desired == api.DesiredRunning }
	if svc == nil {
		for _, vi := range instances {
			if live(&vi.Instance) {
				plan.Drain = append(plan.Drain, vi)
			}
		}
		return plan
	}
	want := int(svc.Spec.ReplicaCount())
	canary := ro.Active() && ro.Canary() && ro.Revision == svc.Status.Revision && svc.Spec.Rollout != nil && len(svc.Spec.Rollout.Steps) > 0
	if canary {
		steps := svc.Spec.Rollout.Steps
		step := min(ro.Step, len(steps)-1)
		switch {
		case ro.PromoteFull || ro.Step >= len(steps):
			// Finishing: the canary gets every replica before it gets all
			// the traffic.
		case svc.Spec.Rollout.CanaryReplicas != nil:
			want = int(*svc.Spec.Rollout.CanaryReplicas)
		default:
			want = CanaryReplicas(want, max(steps[step].Weight, ro.Weight))
		}
	}
	var current, old []store.VersionedInstance
	for _, vi := range instances {
		if !live(&vi.Instance) {
			continue
		}
		switch {
		case vi.Instance.Revision == svc.Status.Revision:
			current = append(current, vi)
		case canary && vi.Instance.Revision == ro.Stable:
			// The stable revision serves the rest of the traffic.
		default:
			old = append(old, vi)
		}
	}
	ready := func(vi store.VersionedInstance) bool {
		return vi.Instance.ReadyWith(statuses[vi.Instance.ID])
	}
	// Replicas have stable ordinals: a new instance takes the lowest one
	// no live instance of the current revision holds, so a replacement or
	// a new revision's replica i mounts replica i's volumes.
	usedOrdinals := map[int32]bool{}
	for _, vi := range current {
		usedOrdinals[vi.Instance.Ordinal] = true
	}
	next := int32(0)
	for i := len(current); i < want; i++ {
		for usedOrdinals[next] {
			next++
		}
		usedOrdinals[next] = true
		plan.Create = append(plan.Create, api.Instance{
			ID:        newID(svc.Metadata.Name),
			Namespace: svc.Metadata.Namespace,
			Service:   svc.Metadata.Name,
			Revision:  svc.Status.Revision,
			Ordinal:   next,
			Template:  svc.Spec.Template(),
			Desired:   api.DesiredRunning,
			CreatedAt: now,
		})
	}
	if len(current) > want {
		// Least useful first: unplaced, then not ready, then the highest
		// ordinal (so scaling down keeps replicas 0..n-1), then newest.
		sort.SliceStable(current, func(i, j int) bool {
			a, b := current[i], current[j]
			if (a.Instance.Node == "") != (b.Instance.Node == "") {
				return a.Instance.Node == ""
			}
			if ready(a) != ready(b) {
				return !ready(a)
			}
			if a.Instance.Ordinal != b.Instance.Ordinal {
				return a.Instance.Ordinal > b.Instance.Ordinal
			}
			return a.Instance.CreatedAt.After(b.Instance.CreatedAt)
		})
		plan.Drain = append(plan.Drain, current[:len(current)-want]...)
		current = current[len(current)-want:]
	}
	readyCurrent := 0
	for _, vi := range current {
		if ready(vi) {
			readyCurrent++
		}
	}
	if rs := svc.Spec.Rollout; !canary && rs != nil && (rs.MaxSurge != nil || rs.MaxUnavailable != nil || rs.MinReady.Duration > 0) && len(old) > 0 && want > 0 {
		return rollingPlan(plan, rs, want, current, old, ready, statuses, now)
	}
	if want == 0 || readyCurrent >= want {
		plan.Drain = append(plan.Drain, old...)
	} else {
		// Old replicas that serve nothing (not ready, or never placed) add
		// no capacity while the new revision comes up: drain them now.
		for _, vi := range old {
			if !ready(vi) {
				plan.Drain = append(plan.Drain, vi)
			}
		}
	}
	return plan
}

func (c *Controller) reconcileReplicas(ctx context.Context, v *store.View) error {
	now := c.now().UTC()
	var changes []store.InstanceChange
	seen := map[string]bool{}
	for i := range v.Services {
		svc := &v.Services[i]
		seen[svc.Key()] = true
		var ro *api.Rollout
		if vr, ok := v.Rollouts[svc.Key()]; ok {
			ro = &vr.Rollout
		}
		plan := planReplicas(svc, ro, v.ServiceInstances(svc.Key()), v.Statuses, now, store.NewInstanceID)
		for _, in := range plan.Create {
			changes = append(changes, store.InstanceChange{Instance: in})
		}
		for _, vi := range plan.Drain {
			in := vi.Instance
			in.Draining, in.DrainSince = true, now
			changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision})
		}
	}
	for _, key := range v.InstanceServices() {
		if seen[key] {
			continue
		}
		for _, vi := range PlanReplicas(nil, v.ServiceInstances(key), v.Statuses, now, store.NewInstanceID).Drain {
			in := vi.Instance
			in.Draining, in.DrainSince = true, now
			changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	changes, err := c.commit(ctx, "replicas", changes)
	for _, ch := range changes {
		in := ch.Instance
		if ch.ModRevision == 0 {
			c.event(ctx, in.Namespace, "service/"+in.Service, "InstanceCreated", "Normal", "created instance %s (revision %d)", in.ID, in.Revision)
		} else {
			c.event(ctx, in.Namespace, "service/"+in.Service, "Draining", "Normal", "instance %s (revision %d) leaves discovery", in.ID, in.Revision)
		}
	}
	return err
}

// commit writes instance changes in as many transactions as etcd's
// limits need (store.Batches). A shared transaction that fails other than
// by a conflict is retried one service at a time, so a service etcd
// refuses (its changes too large, say) is reported, with a Warning event,
// and every other service still moves. It returns the changes written; a
// conflict ends it early (the next pass decides again from fresh state).
func (c *Controller) commit(ctx context.Context, what string, changes []store.InstanceChange) ([]store.InstanceChange, error) {
	var done []store.InstanceChange
	var errs []error
	for _, batch := range store.Batches(changes, false) {
		err := c.store.CommitInstances(ctx, batch)
		if err == nil {
			done = append(done, batch...)
			c.commitOK(batch)
			continue
		}
		if errors.Is(err, store.ErrConflict) || ctx.Err() != nil {
			return done, errors.Join(append(errs, fmt.Errorf("controller: %s: %w", what, err))...)
		}
		for _, one := range store.Batches(batch, true) {
			err := c.store.CommitInstances(ctx, one)
			if err == nil {
				done = append(done, one...)
				c.commitOK(one)
				continue
			}
			if errors.Is(err, store.ErrConflict) || ctx.Err() != nil {
				return done, errors.Join(append(errs, fmt.Errorf("controller: %s: %w", what, err))...)
			}
			in := one[0].Instance
			key := in.Namespace + "/" + in.Service
			errs = append(errs, fmt.Errorf("controller: %s of service %s: %w", what, key, err))
			if msg := what + ": " + err.Error(); c.commitFailed[key] != msg {
				c.commitFailed[key] = msg
				c.event(ctx, in.Namespace, "service/"+in.Service, "ReconcileFailed", "Warning", "%d changes could not be written (%s); other services are not held up", len(one), msg)
			}
		}
	}
	return done, errors.Join(errs...)
}

// commitOK forgets the last commit failure of the services in batch.
func (c *Controller) commitOK(batch []store.InstanceChange) {
	if len(c.commitFailed) == 0 {
		return
	}
	for _, ch := range batch {
		delete(c.commitFailed, ch.Instance.Namespace+"/"+ch.Instance.Service)
	}
}

func (c *Controller) schedule(ctx context.Context, v *store.View) error {
	var pending []api.Instance
	var placed []api.Instance
	rev := map[string]int64{}
	for _, vi := range v.Instances {
		in := vi.Instance
		if in.Node == "" && in.Desired == api.DesiredRunning && !in.Draining {
			pending = append(pending, in)
			rev[in.ID] = vi.ModRevision
		} else if in.Node != "" {
			placed = append(placed, in)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	snap := scheduler.NewSnapshot(v.Nodes, v.LiveNodes, placed)
	snap.VolumeNodes = map[string]string{}
	for key, vv := range v.Volumes {
		at := vv.Volume.Status.Node
		if at == "" {
			at = vv.Volume.Spec.Node
		}
		snap.VolumeNodes[key] = at
	}
	placements, failed := c.sched.Schedule(snap, pending)
	byID := map[string]api.Instance{}
	for _, in := range pending {
		byID[in.ID] = in
	}
	for _, u := range failed {
		in := byID[u.InstanceID]
		if reason := u.String(); c.unschedulable[in.ID] != reason {
			c.unschedulable[in.ID] = reason
			c.event(ctx, in.Namespace, "service/"+in.Service, "Unschedulable", "Warning", "instance %s: %s", in.ID, reason)
		}
	}
	if len(placements) == 0 {
		return nil
	}
	// One pass places every pending instance it can and commits them in
	// as many transactions as etcd's limits need (an instance and its
	// volumes always together); a conflict ends the pass, and the next
	// one schedules what is left from fresh state.
	var changes []store.InstanceChange
	var volumes []store.VolumeChange
	var committed []scheduler.Placement
	var inTxn []scheduler.Placement
	bound := map[string]bool{}
	now := c.now().UTC()
	bytes := 0
	flush := func() error {
		if len(changes) == 0 {
			return nil
		}
		if err := c.store.Commit(ctx, changes, volumes); err != nil {
			return fmt.Errorf("controller: commit %d placements: %w", len(changes), err)
		}
		committed = append(committed, inTxn...)
		changes, volumes, inTxn, bytes = nil, nil, nil, 0
		return nil
	}
	var err error
	for _, p := range placements {
		in := byID[p.InstanceID]
		in.Node = p.Node
		ch := store.InstanceChange{Instance: in, ModRevision: rev[in.ID]}
		var vols []store.VolumeChange
		if vols, err = placementVolumes(v, &in, now, bound); err != nil {
			break
		}
		if fits, _, _ := store.FitsCommit(&ch, len(changes)+len(volumes)+len(vols), bytes); !fits {
			if err = flush(); err != nil {
				break
			}
		}
		_, _, bytes = store.FitsCommit(&ch, 0, bytes)
		changes, volumes = append(changes, ch), append(volumes, vols...)
		inTxn = append(inTxn, p)
	}
	if err == nil {
		err = flush()
	}
	c.placed.Add(float64(len(committed)))
	for _, p := range committed {
		in := byID[p.InstanceID]
		delete(c.unschedulable, in.ID)
		c.event(ctx, in.Namespace, "service/"+in.Service, "Scheduled", "Normal", "instance %s placed on node %s", in.ID, p.Node)
	}
	return err
}

// placementVolumes returns the volume changes that go with placing in on
// in.Node: its volumes not yet bound are bound there, and per-replica
// volumes come into being with their first placement. bound holds the
// volumes this pass already bound.
func placementVolumes(v *store.View, in *api.Instance, now time.Time, bound map[string]bool) ([]store.VolumeChange, error) {
	var out []store.VolumeChange
	for _, key := range in.Template.VolumeNames(in.Namespace, in.Ordinal) {
		if bound[key] {
			continue
		}
		if vv, ok := v.Volumes[key]; ok {
			if vv.Volume.Status.Node == "" {
				vol := vv.Volume
				vol.Status.Node, vol.Status.BoundAt = in.Node, now
				out = append(out, store.VolumeChange{Volume: vol, ModRevision: vv.ModRevision})
				bound[key] = true
			}
			continue
		}
		bound[key] = true
		ns, name, _ := strings.Cut(key, "/")
		created := false
		for _, t := range in.Template.VolumeTemplates {
			if api.TemplateVolumeName(t.Name, in.Ordinal) == name {
				created = true
				out = append(out, store.VolumeChange{Volume: api.Volume{APIVersion: api.APIVersion, Kind: api.KindVolume,
					Metadata: api.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"berth.dev/service": in.Service}},
					Spec:     api.VolumeSpec{Size: t.Size},
					Status:   api.VolumeStatus{Node: in.Node, BoundAt: now, CreatedAt: now, Template: t.Name}}})
			}
		}
		if !created {
			return nil, fmt.Errorf("controller: instance %s mounts volume %s, which does not exist", in.ID, key)
		}
	}
	return out, nil
}

// acked reports whether the discovery state of etcd revision rev is in
// effect everywhere traffic is steered (SyncOf); when not, waiting says
// who is behind.
func (c *Controller) acked(v *store.View, rev int64) (ok bool, waiting string) {
	return SyncOf(v, rev, c.cfg.VersionFor).Acked()
}

// drain tells agents to stop instances whose endpoints have left discovery
// long enough: every gateway has ACKed a snapshot without them and the
// DNS TTL has passed since.
func (c *Controller) drain(ctx context.Context, v *store.View) error {
	now := c.now()
	var changes []store.InstanceChange
	for _, vi := range v.Instances {
		in := vi.Instance
		if !in.Draining || in.Desired != api.DesiredRunning {
			continue
		}
		st, served := v.Statuses[in.ID]
		everServed := served && st.IP != "" && in.Node != ""
		if everServed {
			if now.Sub(in.DrainSince) < c.cfg.DrainDelay {
				continue
			}
			if ok, _ := c.acked(v, vi.ModRevision); !ok {
				continue
			}
		}
		in.Desired = api.DesiredStopped
		changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision})
	}
	if len(changes) == 0 {
		return nil
	}
	changes, err := c.commit(ctx, "stop drained instances", changes)
	for _, ch := range changes {
		in := ch.Instance
		c.event(ctx, in.Namespace, "service/"+in.Service, "Stopping", "Normal", "instance %s drained; stopping its container", in.ID)
	}
	return err
}

// collect deletes instances whose containers are gone: stopped by their
// agent, never placed, or on a node that no longer exists.
func (c *Controller) collect(ctx context.Context, v *store.View) error {
	nodes := map[string]bool{}
	for _, n := range v.Nodes {
		nodes[n.Name] = true
	}
	var changes []store.InstanceChange
	for _, vi := range v.Instances {
		in := vi.Instance
		if in.Desired != api.DesiredStopped {
			continue
		}
		st, ok := v.Statuses[in.ID]
		if in.Node == "" || !nodes[in.Node] || (ok && st.Phase == api.PhaseStopped) {
			changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision, Delete: true})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	changes, err := c.commit(ctx, "delete stopped instances", changes)
	for _, ch := range changes {
		delete(c.unschedulable, ch.Instance.ID)
		c.event(ctx, ch.Instance.Namespace, "service/"+ch.Instance.Service, "Stopped", "Normal", "instance %s stopped and removed", ch.Instance.ID)
	}
	return err
}

// rollingPlan paces a rolling update: at most want+maxSurge replicas
// exist, at least want-maxUnavailable are available (ready, and running
// for minReady), new replicas are created only within the surge, and old
// ones drain only as new ones become available.
func rollingPlan(plan ReplicaPlan, rs *api.RolloutSpec, want int, current, old []store.VersionedInstance,
	ready func(store.VersionedInstance) bool, statuses map[string]api.InstanceStatus, now time.Time) ReplicaPlan {
	surge := rs.MaxSurge.Resolve(want, true)
	if rs.MaxSurge == nil {
		surge = want
	}
	unavailable := rs.MaxUnavailable.Resolve(want, false)
	if surge == 0 && unavailable == 0 {
		surge = 1 // otherwise nothing could ever move
	}
	available := func(vi store.VersionedInstance) bool {
		return vi.Instance.AvailableWith(statuses[vi.Instance.ID], rs.MinReady.Duration, now)
	}
	// Old replicas that serve nothing are drained at once (they count
	// neither as capacity nor against the surge).
	var oldReady []store.VersionedInstance
	for _, vi := range old {
		if ready(vi) {
			oldReady = append(oldReady, vi)
		} else {
			plan.Drain = append(plan.Drain, vi)
		}
	}
	room := want + surge - len(current) - len(oldReady)
	if room < len(plan.Create) {
		plan.Create = plan.Create[:max(room, 0)]
	}
	avail := len(oldReady)
	for _, vi := range current {
		if available(vi) {
			avail++
		}
	}
	drainable := avail - (want - unavailable)
	for i := 0; i < drainable && i < len(oldReady); i++ {
		plan.Drain = append(plan.Drain, oldReady[i])
	}
	return plan
}

// notePanics records an event when panic routing starts keeping a
// service's endpoints on nodes that stopped reporting, and one when it
// ends: once per cluster (the publishers of every replica build the same
// and only set their gauge). It asks discovery.BuildService, the one
// rule, of the services with instances on such nodes and of those in
// panic at the last pass; while every node reports, it costs nothing.
func (c *Controller) notePanics(ctx context.Context, v *store.View) {
	now := c.now()
	grace := now.Sub(c.startedAt) < c.cfg.StartGrace
	down := discovery.DownNodesOf(v.Nodes, v.LiveNodes, func(n *api.Node) bool { return c.spared(n, now) })
	check := map[string]bool{}
	for key := range c.panicking {
		check[key] = true
	}
	for node, d := range down {
		if d != discovery.NodeUnreachable {
			continue
		}
		for _, vi := range v.NodeInstances(node) {
			check[vi.Instance.ServiceKey()] = true
		}
	}
	if len(check) == 0 {
		return
	}
	services := make(map[string]*api.Service, len(v.Services))
	for i := range v.Services {
		services[v.Services[i].Key()] = &v.Services[i]
	}
	panicking := map[string][]string{}
	checked := make(map[string]panicInputs, len(check))
	for _, key := range slices.Sorted(maps.Keys(check)) {
		ns, name, _ := strings.Cut(key, "/")
		svc := services[key]
		if svc == nil {
			continue // deleted: its panic ended with it
		}
		in := panicInputs{service: v.ServiceGens[key], nodes: v.NodesGen, grace: grace}
		checked[key] = in
		if last, ok := c.panicInputs[key]; ok && last == in {
			// Built from the same inputs at the last pass: the same answer.
			if was := c.panicking[key]; was != nil {
				panicking[key] = was
			}
			continue
		}
		instances, ro := v.DiscoveryInputs(key)
		built := discovery.BuildService(svc, instances, v.Statuses, down, ro)
		nodes := built.PanicNodes()
		was := c.panicking[key]
		switch {
		case len(nodes) > 0:
			panicking[key] = nodes
			if was == nil {
				kept := 0
				for _, r := range built.Revisions {
					for _, e := range r.Endpoints {
						if e.Panic {
							kept++
						}
					}
				}
				c.event(ctx, ns, "service/"+name, "PanicRouting", "Warning",
					"every endpoint of %s is on nodes that stopped reporting (%s): DNS and gateways keep its %d last known endpoints (panic routing) until one serves again or the nodes are Lost",
					key, strings.Join(nodes, ", "), kept)
			}
		case was != nil && len(built.ReadyEndpoints()) > 0:
			c.event(ctx, ns, "service/"+name, "PanicRoutingEnded", "Normal", "%s has an endpoint that serves again; the endpoints kept on %s are dropped", key, strings.Join(was, ", "))
		case was != nil:
			c.event(ctx, ns, "service/"+name, "PanicRoutingEnded", "Normal", "the endpoints of %s kept on %s left for good (node Lost, removed or drained, or instance stopped); none serves until a replacement is ready", key, strings.Join(was, ", "))
		}
	}
	c.panicking, c.panicInputs = panicking, checked
}

// watchedNotReady is how long this leader has seen node NotReady (its
// monotonic clock), starting now if it had not.
func (c *Controller) watchedNotReady(node string, mono time.Time) time.Duration {
	seen, ok := c.notReadySeen[node]
	if !ok {
		c.notReadySeen[node] = mono
		return 0
	}
	return mono.Sub(seen)
}

// spared tells whether a node that stopped reporting is still taken as
// Ready because this replica just took the lead: the agent may not have
// reached it yet (the publisher spares the same nodes for the same
// reason).
func (c *Controller) spared(n *api.Node, now time.Time) bool {
	return n.State == api.NodeReady && c.graceFor[n.Name] && now.Sub(c.startedAt) < c.cfg.StartGrace
}

// noteStaleGateways records an event when a gateway turns STALE (and
// when it recovers), once per transition.
func (c *Controller) noteStaleGateways(ctx context.Context, v *store.View) {
	now := map[string]bool{}
	for _, g := range v.Gateways {
		key := g.Replica + "/" + g.NodeID
		if g.State != api.GatewayStale {
			if c.staleGateways[key] {
				c.event(ctx, "", "gateway/"+g.NodeID, "GatewayCaughtUp", "Normal", "gateway %s (via replica %s) runs version %d again", g.NodeID, g.Replica, g.Version)
			}
			continue
		}
		now[key] = true
		if !c.staleGateways[key] {
			c.event(ctx, "", "gateway/"+g.NodeID, "GatewayStale", "Warning", "gateway %s (via replica %s) has not applied a new version in time (it runs %d): drains and canary steps no longer wait for it", g.NodeID, g.Replica, g.Version)
		}
	}
	c.staleGateways = now
}
