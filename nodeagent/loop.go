package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/probe"
	"github.com/berth-dev/berth/nodeagent/runtime"
)

// loop owns the node's instance table. One goroutine runs it; slow work
// (image import, container start and stop, probes) runs in goroutines
// that report back on channels, so one slow pull never stalls the rest.
type loop struct {
	a     *Agent
	items map[string]*item
	// exported is what publishMetrics last handed the collector.
	exported map[string]instanceMetric
	results  chan opResult
	probes   chan probeResult
	ops      sync.WaitGroup
	opCtx    context.Context
	cancelOp context.CancelFunc
	// synced is set once the first assignments arrived: only then may
	// containers without an assignment be stopped.
	synced bool
	// reportedSt is, per instance, the status the control plane has.
	reportedSt map[string]api.InstanceStatus
	// deleting holds the volumes whose data is being removed.
	deleting   map[string]bool
	volumeDone chan volumeResult
	// volumeSizes are the size limits of named volumes, from assignments.
	volumeSizes map[string]int64
	// now is the loop's clock (time.Now; a fake one in tests): backoffs,
	// probe times and status times are read from it.
	now func() time.Time
	// reporting is set while a status report is on its way (one at a
	// time, off the loop goroutine); reportDone brings its result.
	reporting  bool
	reportDone chan reportResult
}

// reportResult is a finished status report: what it sent, or why not.
type reportResult struct {
	sent []api.InstanceStatus
	err  error
}

type volumeResult struct {
	key string
	err error
}

type item struct {
	inst     api.Instance
	assigned bool
	st       api.InstanceStatus
	// container state
	has     bool
	running bool
	// an operation or probe is in flight
	busy, probing bool
	next          time.Time // earliest next (re)start
	backoff       time.Duration
	nextProbe     time.Time
	ranSince      time.Time
	// pendingExit is an exit that arrived while an operation was in flight.
	pendingExit *runtime.Exit
	// readyFails and liveFails count failed probes in a row; the
	// liveness probe runs beside readiness, at nextLive.
	readyFails, liveFails int32
	liveProbing           bool
	nextLive              time.Time
	// readySinceStart is set at the first passing probe after a (re)start;
	// until then probes run every startupProbeEvery, not every interval, so
	// a replica becomes ready as soon as it listens.
	readySinceStart bool
	// readinessFailures and livenessFailures count every failed probe
	// since the agent started (berth_agent_probe_failures_total).
	readinessFailures, livenessFailures uint64
}

// startupProbeEvery is the probe period before a container's first success.
const startupProbeEvery = 100 * time.Millisecond

type opKind int

const (
	opStart opKind = iota
	opRestart
	opStop
	// opKill stops a running task for a restart (a failed liveness probe).
	opKill
)

type opResult struct {
	id   string
	kind opKind
	c    runtime.Container
	err  error
}

type probeResult struct {
	id   string
	err  error
	live bool // the liveness probe (else readiness)
}

func newLoop(a *Agent) *loop {
	opCtx, cancel := context.WithCancel(context.Background())
	return &loop{a: a, items: map[string]*item{}, results: make(chan opResult, 64), probes: make(chan probeResult, 64),
		opCtx: opCtx, cancelOp: cancel, reportedSt: map[string]api.InstanceStatus{},
		deleting: map[string]bool{}, volumeDone: make(chan volumeResult, 16), now: time.Now,
		reportDone: make(chan reportResult, 1)}
}

func (l *loop) run(ctx context.Context, assignments <-chan *pb.Assignments, subscribe func(context.Context) (<-chan runtime.Exit, error)) error {
	defer l.cancelOp()
	// The feed subscribes again when containerd's event stream breaks (a
	// containerd restart); exits in between are lost, so the loop
	// reconciles with containerd when it says it is back.
	feed, err := runtime.FollowExits(ctx, subscribe, l.a.logger)
	if err != nil {
		return fmt.Errorf("agent: subscribe to task exits: %w", err)
	}
	if err := l.adopt(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	resync := time.NewTicker(5 * time.Second)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			l.shutdown()
			return nil
		case msg := <-assignments:
			l.assign(msg)
		case ex := <-feed.Exits():
			l.exited(ex)
		case <-feed.Resubscribed():
			l.resync(ctx)
		case r := <-l.results:
			l.finished(r)
		case r := <-l.probes:
			l.probed(r)
		case r := <-l.reportDone:
			l.reported(r)
		case r := <-l.volumeDone:
			if r.err != nil {
				l.a.logger.Warn("delete volume failed; will retry", "volume", r.key, "err", r.err)
				delete(l.deleting, r.key) // the next assignment retries
			}
		case <-tick.C:
		case <-resync.C:
			l.resync(ctx)
		}
		l.act()
		l.report(ctx)
		l.publishMetrics()
	}
}

// adopt takes over the containers already running on the node (after an
// agent restart), so they are neither duplicated nor restarted.
func (l *loop) adopt(ctx context.Context) error {
	if cleaned, err := l.a.rt.RemoveLeftovers(ctx); err != nil {
		l.a.logger.Warn("removing leftovers of an earlier run", "err", err)
	} else if len(cleaned) > 0 {
		l.a.logger.Info("removed leftovers of an earlier run", "instances", cleaned)
	}
	cs, err := l.a.rt.List(ctx)
	if err != nil {
		return fmt.Errorf("agent: list containers for adoption: %w", err)
	}
	for _, c := range cs {
		it := &item{has: true, running: c.Running, st: api.InstanceStatus{ID: c.InstanceID, Node: l.a.cfg.Name, IP: c.IP, ContainerID: c.ContainerID}}
		if c.Running {
			it.ranSince = l.now()
		} else {
			it.st.LastExit = &api.Exit{Code: int32(c.ExitCode), At: c.ExitedAt}
		}
		l.items[c.InstanceID] = it
	}
	if len(cs) > 0 {
		l.a.logger.Info("found containers from before", "count", len(cs))
	}
	keep := map[string]bool{}
	for _, c := range cs {
		keep[c.InstanceID] = true
	}
	l.a.sweepSecrets(keep)
	l.a.running.Set(float64(l.countRunning()))
	return nil
}

func (l *loop) countRunning() int {
	n := 0
	for _, it := range l.items {
		if it.running {
			n++
		}
	}
	return n
}

func (l *loop) assign(msg *pb.Assignments) {
	seen := map[string]bool{}
	prev := map[string]api.InstanceStatus{}
	for _, p := range msg.Statuses {
		st := pb.ToStatus(p)
		prev[st.ID] = st
	}
	for _, p := range msg.Instances {
		in := pb.ToInstance(p)
		seen[in.ID] = true
		it := l.items[in.ID]
		if it == nil {
			it = &item{st: api.InstanceStatus{ID: in.ID, Node: l.a.cfg.Name, Phase: api.PhasePending}}
			l.items[in.ID] = it
		}
		if !it.assigned {
			// First sight since the agent started: resume the counts the
			// control plane kept, and, for an adopted running container,
			// its readiness until the next probe says otherwise.
			if old, ok := prev[in.ID]; ok {
				it.st.Restarts = old.Restarts
				if it.st.LastExit == nil {
					it.st.LastExit = old.LastExit
				}
				if it.running {
					it.st.Ready = old.Ready && old.IP == it.st.IP
					it.st.StartedAt = old.StartedAt
				}
			}
			if it.has {
				if it.running {
					it.st.Phase = api.PhaseRunning
					l.a.logger.Info("adopted running container", "instance", in.ID, "ip", it.st.IP)
				} else {
					it.st.Phase = api.PhaseBackoff
				}
			}
			it.backoff = time.Second
		}
		it.inst, it.assigned = in, true
	}
	for id, it := range l.items {
		if !seen[id] && it.assigned {
			it.assigned = false
		}
	}
	l.synced = true
	l.volumeSizes = msg.VolumeSizes
	l.a.readyOnce.Do(func() { close(l.a.ready) })
	for _, key := range msg.DeleteVolumes {
		if l.deleting[key] {
			continue
		}
		l.deleting[key] = true
		l.ops.Add(1) // owned: shutdown waits for it
		go func() {
			defer l.ops.Done()
			err := l.a.deleteVolume(l.opCtx, key)
			l.volumeDone <- volumeResult{key: key, err: err}
		}()
	}
}

func (l *loop) exited(ex runtime.Exit) {
	it := l.items[ex.InstanceID]
	if it == nil {
		return
	}
	if it.busy {
		it.pendingExit = &ex
		return
	}
	if !it.running {
		return
	}
	it.running = false
	it.st.Ready = false
	it.st.LastExit = &api.Exit{Code: int32(ex.Code), At: ex.At}
	if it.assigned && it.inst.Desired == api.DesiredRunning {
		it.st.Phase = api.PhaseBackoff
		if l.now().Sub(it.ranSince) > 60*time.Second {
			it.backoff = time.Second
		}
		it.next = l.now().Add(it.backoff)
		l.a.logger.Warn("container exited; restarting after backoff", "instance", ex.InstanceID, "code", ex.Code, "backoff", it.backoff)
		it.backoff = min(2*it.backoff, l.a.cfg.MaxBackoff)
	}
	l.a.running.Set(float64(l.countRunning()))
}

func (l *loop) finished(r opResult) {
	it := l.items[r.id]
	if it == nil {
		return
	}
	it.busy = false
	pending := it.pendingExit
	it.pendingExit = nil
	switch r.kind {
	case opKill:
		if r.err != nil {
			it.st.LastError = "liveness restart: " + r.err.Error()
			break
		}
		// The exit this kill caused is the one to act on (its event may
		// come later; exited ignores it then).
		msg := it.st.LastError
		l.exited(runtime.Exit{InstanceID: r.id, Code: 137, At: l.now()})
		it.st.LastError = msg
		l.a.running.Set(float64(l.countRunning()))
		return
	case opStop:
		if r.err != nil {
			it.st.LastError = "stop: " + r.err.Error()
			it.next = l.now().Add(time.Second)
			break
		}
		it.has, it.running = false, false
		it.st.Phase, it.st.Ready, it.st.IP, it.st.ContainerID = api.PhaseStopped, false, "", ""
		if !it.assigned {
			delete(l.items, r.id)
		}
	case opStart, opRestart:
		if r.err != nil {
			it.st.Phase = api.PhaseBackoff
			it.st.LastError = r.err.Error()
			it.st.Ready = false
			it.next = l.now().Add(it.backoff)
			l.a.logger.Warn("container start failed; retrying after backoff", "instance", r.id, "err", r.err, "backoff", it.backoff)
			it.backoff = min(2*it.backoff, l.a.cfg.MaxBackoff)
			if r.kind == opStart {
				it.has = false
			}
			break
		}
		if r.kind == opRestart {
			it.st.Restarts++
		} else {
			l.a.starts.Inc()
		}
		it.has, it.running = true, true
		it.ranSince = l.now()
		it.st.Phase, it.st.LastError = api.PhaseRunning, ""
		it.st.IP, it.st.ContainerID = r.c.IP, r.c.ContainerID
		it.st.StartedAt = l.now().UTC()
		it.st.Ready = it.inst.Template.Health == nil
		it.nextProbe = l.now()
		if h := it.inst.Template.Health; h != nil {
			it.nextProbe = l.now().Add(h.InitialDelay.Duration)
		}
		if lv := it.inst.Template.Liveness; lv != nil {
			it.nextLive = l.now().Add(lv.InitialDelay.Duration)
		}
		it.readyFails, it.liveFails = 0, 0
		it.readySinceStart = false
		if pending != nil {
			// The new task died before we saw it running.
			l.a.running.Set(float64(l.countRunning()))
			l.exited(*pending)
			return
		}
	}
	l.a.running.Set(float64(l.countRunning()))
}

// resync compares the table with containerd, catching exits whose events
// were missed (for example while the event stream reconnected).
func (l *loop) resync(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cs, err := l.a.rt.List(ctx)
	if err != nil {
		return
	}
	actual := map[string]runtime.Container{}
	for _, c := range cs {
		actual[c.InstanceID] = c
	}
	for id, it := range l.items {
		if it.busy || !it.running {
			continue
		}
		c, ok := actual[id]
		if !ok {
			it.has = false
		}
		if !ok || !c.Running {
			l.exited(runtime.Exit{InstanceID: id, Code: c.ExitCode, At: l.now()})
		}
	}
}

// readinessPrefix starts the last error of an instance whose readiness
// probe fails.
const readinessPrefix = "readiness probe failed: "

func (l *loop) probed(r probeResult) {
	it := l.items[r.id]
	if it == nil {
		return
	}
	if r.live {
		l.livenessProbed(r.id, it, r.err)
		return
	}
	it.probing = false
	if !it.running {
		return
	}
	ready := r.err == nil
	if ready {
		it.readyFails = 0
	} else {
		// Ready until FailureThreshold failures in a row (default 1).
		it.readyFails++
		ready = it.st.Ready && it.readyFails < max(1, it.inst.Template.Health.FailureThreshold)
	}
	if r.err != nil {
		it.readinessFailures++
		if it.st.Ready {
			l.a.logger.Warn("instance not ready", "instance", r.id, "err", r.err)
		}
	}
	it.st.Ready = ready
	if r.err == nil {
		it.readySinceStart = true
		if strings.HasPrefix(it.st.LastError, readinessPrefix) {
			it.st.LastError = ""
		}
	} else if starting := !it.readySinceStart && l.now().Sub(it.ranSince) < max(probe.Interval(it.inst.Template.Health), 2*time.Second); starting {
		// A container not listening yet right after its start is no news:
		// its first interval passes before a failure is its last error.
	} else if !ready && (it.st.LastError == "" || strings.HasPrefix(it.st.LastError, readinessPrefix)) {
		// Why it is not ready, for get instances, describe and an event;
		// an error of the container itself is not overwritten.
		it.st.LastError = readinessPrefix + r.err.Error()
	}
	every := probe.Interval(it.inst.Template.Health)
	if !it.readySinceStart && startupProbeEvery < every {
		every = startupProbeEvery
	}
	it.nextProbe = l.now().Add(every)
}

// livenessPrefix starts the last error of a container restarted for
// failing its liveness probe.
const livenessPrefix = "liveness probe failed"

// livenessProbed counts a liveness probe; FailureThreshold failures in a
// row restart the container (through the usual exit and backoff).
func (l *loop) livenessProbed(id string, it *item, err error) {
	it.liveProbing = false
	lv := it.inst.Template.Liveness
	if !it.running || it.busy || lv == nil {
		return
	}
	it.nextLive = l.now().Add(probe.Interval(lv))
	if err == nil {
		it.liveFails = 0
		return
	}
	it.livenessFailures++
	it.liveFails++
	if it.liveFails < max(1, lv.FailureThreshold) {
		return
	}
	it.liveFails = 0
	it.st.Ready = false
	it.st.LastError = fmt.Sprintf("%s %d times in a row: %v; restarting the container", livenessPrefix, lv.FailureThreshold, err)
	l.a.logger.Warn("liveness probe failed; restarting", "instance", id, "failures", lv.FailureThreshold, "err", err)
	grace := l.a.cfg.StopGrace
	l.launch(id, opKill, func(ctx context.Context) (runtime.Container, error) {
		return runtime.Container{}, l.a.rt.Kill(ctx, id, grace)
	})
}

func (l *loop) launch(id string, kind opKind, f func(ctx context.Context) (runtime.Container, error)) {
	l.items[id].busy = true
	l.ops.Add(1)
	go func() {
		defer l.ops.Done()
		ctx, cancel := context.WithTimeout(l.opCtx, 10*time.Minute)
		defer cancel()
		c, err := f(ctx)
		l.results <- opResult{id: id, kind: kind, c: c, err: err}
	}()
}

// spec runs in an operation's goroutine: it reads only its arguments
// (sizes is replaced, never modified, by assign).
func (l *loop) spec(in api.Instance, sizes map[string]int64) (runtime.ContainerSpec, error) {
	req := in.Template.Resources.Request()
	var mounts []runtime.Mount
	for _, m := range in.Template.Volumes {
		if m.Tmpfs {
			size, _ := api.ParseMemory(m.Size)
			mounts = append(mounts, runtime.Mount{Destination: m.MountPath, ReadOnly: m.ReadOnly, Tmpfs: true, SizeBytes: size})
			continue
		}
		dir, err := l.a.volumeDir(in.Namespace, m.Name, sizes[in.Namespace+"/"+m.Name])
		if err != nil {
			return runtime.ContainerSpec{}, err
		}
		mounts = append(mounts, runtime.Mount{Source: dir, Destination: m.MountPath, ReadOnly: m.ReadOnly})
	}
	for _, t := range in.Template.VolumeTemplates {
		size, _ := api.ParseMemory(t.Size)
		dir, err := l.a.volumeDir(in.Namespace, api.TemplateVolumeName(t.Name, in.Ordinal), size)
		if err != nil {
			return runtime.ContainerSpec{}, err
		}
		mounts = append(mounts, runtime.Mount{Source: dir, Destination: t.MountPath})
	}
	cs := runtime.ContainerSpec{
		Mounts:     mounts,
		InstanceID: in.ID, Namespace: in.Namespace, Service: in.Service, Revision: in.Revision,
		Image: in.Template.Image, Command: in.Template.Command, Args: in.Template.Args, Env: maps.Clone(in.Template.Env),
		MilliCPU: or(req.MilliCPU, l.a.cfg.DefaultLimits.MilliCPU), MemoryBytes: or(req.MemoryBytes, l.a.cfg.DefaultLimits.MemoryBytes),
		PidsLimit:     or(in.Template.Resources.Pids, l.a.cfg.DefaultLimits.Pids),
		SearchDomains: []string{in.Namespace + ".svc." + api.ClusterDomain, "svc." + api.ClusterDomain, api.ClusterDomain},
	}
	if sc := in.Template.SecurityContext; sc != nil {
		cs.RunAsUser, cs.RunAsGroup = uid32(sc.RunAsUser), uid32(sc.RunAsGroup)
		cs.ReadOnlyRoot = sc.ReadOnlyRootFilesystem
		if c := sc.Capabilities; c != nil {
			cs.CapDrop, cs.CapAdd = canonicalCaps(c.Drop), canonicalCaps(c.Add)
		}
	}
	return cs, nil
}

func uid32(id *int64) *uint32 {
	if id == nil {
		return nil
	}
	v := uint32(*id) // validated at apply: 0 .. 2^32-2
	return &v
}

// canonicalCaps names capabilities as the OCI spec does; apply refused
// unknown ones.
func canonicalCaps(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		c, _ := api.NormalizeCapability(n)
		out = append(out, c)
	}
	return out
}

// act starts, restarts, stops and probes whatever needs it now. While a
// container the control plane no longer assigns (say, one replaced while
// this node was cut off) is still being stopped, nothing new starts: stale
// work is fenced off before the node takes new work.
func (l *loop) act() {
	now := l.now()
	fencing := false
	for _, it := range l.items {
		if it.has && !it.assigned && l.synced {
			fencing = true
		}
	}
	for id, it := range l.items {
		if it.busy {
			continue
		}
		wantRunning := it.assigned && it.inst.Desired == api.DesiredRunning
		switch {
		case !wantRunning && (it.assigned || l.synced):
			if it.has {
				grace := l.a.cfg.StopGrace
				l.launch(id, opStop, func(ctx context.Context) (runtime.Container, error) {
					if err := l.a.rt.Stop(ctx, id, grace); err != nil {
						return runtime.Container{}, err
					}
					return runtime.Container{}, l.a.removeSecrets(id)
				})
			} else if !it.assigned {
				delete(l.items, id)
			} else if it.st.Phase != api.PhaseStopped {
				it.st.Phase, it.st.Ready, it.st.IP = api.PhaseStopped, false, ""
			}
		case !wantRunning:
			// Not yet synced with the control plane: leave it alone.
		case fencing && (!it.has || !it.running):
			// Wait until the stale containers are gone.
		case !it.has && !now.Before(it.next):
			in, sizes := it.inst, l.volumeSizes
			it.st.Phase = api.PhaseStarting
			l.launch(id, opStart, func(ctx context.Context) (runtime.Container, error) {
				if err := l.a.ensureImage(ctx, in.Template.Image, in.Template.ImageDigest); err != nil {
					return runtime.Container{}, err
				}
				spec, err := l.spec(in, sizes)
				if err != nil {
					return runtime.Container{}, err
				}
				if err := l.a.addSecrets(ctx, in, &spec); err != nil {
					return runtime.Container{}, err
				}
				return l.a.rt.Start(ctx, spec)
			})
		case it.has && !it.running && !now.Before(it.next):
			it.st.Phase = api.PhaseStarting
			l.launch(id, opRestart, func(ctx context.Context) (runtime.Container, error) {
				return l.a.rt.Restart(ctx, id)
			})
		case it.running && !it.probing && !now.Before(it.nextProbe) && it.inst.Template.Health != nil:
			it.probing = true
			ip, h := it.st.IP, it.inst.Template.Health
			l.ops.Add(1) // owned: shutdown cancels and waits for it
			go func() {
				defer l.ops.Done()
				ctx, cancel := context.WithTimeout(l.opCtx, 30*time.Second)
				defer cancel()
				l.probes <- probeResult{id: id, err: l.a.prober.Check(ctx, ip, h)}
			}()
		}
		if lv := it.inst.Template.Liveness; lv != nil && it.running && !it.busy && !it.liveProbing && !now.Before(it.nextLive) {
			it.liveProbing = true
			ip := it.st.IP
			l.ops.Add(1) // owned: shutdown cancels and waits for it
			go func() {
				defer l.ops.Done()
				ctx, cancel := context.WithTimeout(l.opCtx, 30*time.Second)
				defer cancel()
				l.probes <- probeResult{id: id, err: l.a.prober.Check(ctx, ip, lv), live: true}
			}()
		}
	}
}

func changed(a, b api.InstanceStatus) bool {
	a.UpdatedAt, b.UpdatedAt = time.Time{}, time.Time{}
	if (a.LastExit == nil) != (b.LastExit == nil) || (a.LastExit != nil && *a.LastExit != *b.LastExit) {
		return true
	}
	a.LastExit, b.LastExit = nil, nil
	return a != b
}

// report sends the statuses that changed since they were last sent, off
// the loop goroutine (the control plane being slow never holds up starts,
// stops and probes): one report at a time; what changes meanwhile goes in
// the next.
func (l *loop) report(ctx context.Context) {
	if l.reporting {
		return
	}
	var batch []*pb.InstanceStatus
	var sent []api.InstanceStatus
	for _, it := range l.items {
		if !it.assigned {
			continue
		}
		old, ok := l.reportedSt[it.st.ID]
		if ok && !changed(old, it.st) {
			continue
		}
		st := it.st
		st.UpdatedAt = l.now().UTC()
		batch = append(batch, pb.FromStatus(&st))
		sent = append(sent, st)
	}
	if len(batch) == 0 {
		return
	}
	l.reporting = true
	l.ops.Add(1)
	go func() {
		defer l.ops.Done()
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := l.a.client.ReportStatus(rctx, &pb.ReportStatusRequest{Node: l.a.cfg.Name, Statuses: batch})
		if err != nil && ctx.Err() != nil {
			err = nil // shutting down: nothing to retry
			sent = nil
		}
		l.reportDone <- reportResult{sent: sent, err: err}
	}()
}

// reported takes a finished report's result: what was sent is now known
// to the control plane; a failure is retried with the next report.
func (l *loop) reported(r reportResult) {
	l.reporting = false
	if r.err != nil {
		l.a.logger.Warn("report status failed; will retry", "err", r.err)
		return
	}
	for _, st := range r.sent {
		l.reportedSt[st.ID] = st
	}
	for id := range l.reportedSt {
		if l.items[id] == nil {
			delete(l.reportedSt, id)
		}
	}
}

// shutdown waits for operations in flight and, in berth dev, stops every
// container the agent runs.
func (l *loop) shutdown() {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-l.results:
			case <-l.probes:
			case <-l.reportDone:
			case <-l.volumeDone:
			case <-done:
				return
			}
		}
	}()
	waited := make(chan struct{})
	go func() { l.ops.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		l.cancelOp()
		<-waited
	}
	close(done)
	if !l.a.cfg.StopOnExit {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.a.cfg.StopGrace+15*time.Second)
	defer cancel()
	cs, err := l.a.rt.List(ctx)
	if err != nil {
		l.a.logger.Warn("list containers to stop", "err", err)
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.a.rt.Stop(ctx, c.InstanceID, l.a.cfg.StopGrace); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		l.a.logger.Warn("stopping containers", "err", err)
	} else {
		l.a.logger.Info("stopped all containers", "count", len(cs))
	}
	// Tell the control plane, so its endpoints leave discovery now rather
	// than when the agent comes back.
	var batch []*pb.InstanceStatus
	for _, it := range l.items {
		if !it.assigned {
			continue
		}
		st := it.st
		st.Phase, st.Ready, st.IP, st.ContainerID, st.UpdatedAt = api.PhaseStopped, false, "", "", l.now().UTC()
		batch = append(batch, pb.FromStatus(&st))
	}
	if len(batch) > 0 {
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		if _, err := l.a.client.ReportStatus(rctx, &pb.ReportStatusRequest{Node: l.a.cfg.Name, Statuses: batch}); err != nil {
			l.a.logger.Warn("could not report the stopped containers", "err", err)
		}
	}
}

// or is v, or def when v is not set.
func or(v, def int64) int64 {
	if v > 0 {
		return v
	}
	return def
}
