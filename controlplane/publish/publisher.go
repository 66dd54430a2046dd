// Package publish turns the cache's views into discovery snapshots and
// hands each new one to the sinks (the xDS server, the host DNS) and to
// watchers (the agents' DNS feeds). It decides nothing: discovery.Build
// says what a view means for traffic.
package publish

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/internal/deltalog"
	"github.com/prometheus/client_golang/prometheus"
)

// Views is where the publisher reads the cluster from (store.Cache).
type Views interface {
	View() *store.View
	Subscribe() (<-chan struct{}, func())
	// Stamp is View().Revision and View().Gen without building a view.
	Stamp() (revision int64, gen uint64)
}

// Sink receives every new discovery snapshot (the xDS server, the host
// DNS server). It must not block for long and must not modify the snapshot.
type Sink func(*discovery.Snapshot)

// Publisher builds the discovery snapshot from the cache on every change
// and hands it to its sinks and to watchers (the agents' DNS feeds). A
// snapshot whose content equals the last one is not published again.
type Publisher struct {
	cache  Views
	sinks  []Sink
	logger *slog.Logger

	mu     sync.Mutex
	latest *discovery.Snapshot
	// items is the latest snapshot as keyed items (discovery.ServiceItems), with
	// the keys each of the last keepDeltas publishes changed: what the
	// agents' delta feeds carry.
	items *deltalog.Log[string]
	// built is each service of the latest snapshot with the generation of
	// its inputs (View.ServiceGens) and its items; builtNodes is the
	// View.NodesGen it was built with, builtGrace whether in the grace.
	// A service whose inputs did not move is not built again: a status
	// report changes one service, not 10,000 instances' worth.
	built      map[string]builtService
	builtNodes uint64
	builtGrace bool
	// lastPublish is when Run last published (Run's own).
	lastPublish time.Time
	// after is time.After, for Run's wait between publishes (a test
	// sees the waits through it).
	after func(time.Duration) <-chan time.Time
	// covered is the newest etcd revision whose state the latest snapshot
	// reflects (a newer view with identical content is not re-published).
	covered  uint64
	lastGen  uint64 // View.Gen of the last view built
	watchers map[chan struct{}]struct{}
	// graceUntil: until then a node the etcd says Ready keeps its
	// endpoints though no replica claims it live yet (this replica just
	// started; the agents have not reconnected): the control plane never
	// takes endpoints out for its own absence.
	graceUntil time.Time
	graceFor   map[string]bool // the nodes of the first view: the ones the grace is for

	// inPanic: the services ("ns/name") whose series of panic exists, and
	// whether they were in panic routing at their last build (Run's own).
	inPanic map[string]bool

	published prometheus.Counter
	version   prometheus.Gauge
	// panic is 1 for a service while panic routing keeps endpoints of
	// nodes that stopped reporting (discovery.BuildService), 0 after; a
	// series exists from a service's first panic until it is deleted.
	panic *prometheus.GaugeVec
}

// NewPublisher returns a publisher feeding sinks.
func NewPublisher(cache Views, logger *slog.Logger, reg prometheus.Registerer, sinks ...Sink) *Publisher {
	if logger == nil {
		logger = slog.Default()
	}
	p := &Publisher{
		cache: cache, sinks: sinks, logger: logger.With("component", "discovery"),
		watchers:  map[chan struct{}]struct{}{},
		items:     deltalog.New(keepDeltas, func(a, b string) bool { return a == b }),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_discovery_snapshots_total", Help: "Discovery snapshots published."}),
		version:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_discovery_snapshot_version", Help: "Version of the last published discovery snapshot."}),
		panic: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_discovery_panic",
			Help: "1 while panic routing keeps a service's endpoints on nodes that stopped reporting (none of its endpoints serves otherwise), 0 after."},
			[]string{"namespace", "service"}),
		inPanic: map[string]bool{},
		after:   time.After,
	}
	if reg != nil {
		reg.MustRegister(p.published, p.version, p.panic)
	}
	return p
}

// Latest returns the last published snapshot (nil before the first).
func (p *Publisher) Latest() *discovery.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latest
}

// VersionFor returns the snapshot version that gateways must have ACKed to
// run the state of etcd revision rev: the latest snapshot's version once
// the publisher has seen rev (it may be older than rev when nothing that
// matters to traffic changed since), and false before that.
func (p *Publisher) VersionFor(rev int64) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.latest == nil || p.covered < uint64(rev) {
		return 0, false
	}
	return min(p.latest.Version, uint64(rev)), true
}

// Watch returns a channel woken (coalesced) on every publish, and a
// function to stop watching.
func (p *Publisher) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	p.mu.Lock()
	p.watchers[ch] = struct{}{}
	if p.latest != nil {
		ch <- struct{}{}
	}
	p.mu.Unlock()
	return ch, func() {
		p.mu.Lock()
		delete(p.watchers, ch)
		p.mu.Unlock()
	}
}

// MinPublishInterval is the least time between two publishes under a
// stream of changes (the first change after a quiet spell is published at
// once).
const MinPublishInterval = 20 * time.Millisecond

// keepDeltas is how many publishes a delta feed can catch up over; an
// agent further behind gets the whole snapshot.
const keepDeltas = 256

// Since returns the latest snapshot and what changed in it since version
// base: the services added or changed, and the keys ("namespace/name") of
// those removed. whole is true when base is too old (or 0): then the
// caller sends the whole snapshot.
func (p *Publisher) Since(base uint64) (snap *discovery.Snapshot, changed []discovery.Service, removed []string, whole bool) {
	snap, deltas, removed, whole := p.SinceEndpoints(base)
	if whole || snap == nil {
		return snap, nil, nil, whole
	}
	for _, d := range deltas {
		changed = append(changed, *snap.Lookup(d.Namespace, d.Name))
	}
	return snap, changed, removed, false
}

// SinceEndpoints is Since with, for each service added or changed, only
// what changed in it (discovery.ServiceDelta).
func (p *Publisher) SinceEndpoints(base uint64) (snap *discovery.Snapshot, deltas []discovery.ServiceDelta, removed []string, whole bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	snap = p.latest
	if snap == nil || base == snap.Version {
		return snap, nil, nil, false
	}
	_, changed, gone, whole := p.items.Since(base)
	if whole {
		return snap, nil, nil, true
	}
	deltas, removed = discovery.DeltaOf(snap, changed, gone)
	return snap, deltas, removed, false
}

// DeltaBase returns have when a follower holding it gets a delta, and 0
// when it gets the whole snapshot (a version this replica never had, or
// one too old): so every follower the whole snapshot goes to shares one
// message, whatever version it claims to hold.
func (p *Publisher) DeltaBase(have uint64) uint64 {
	if p.items.Knows(have) {
		return have
	}
	return 0
}

// SetGrace keeps Ready nodes' endpoints for d from now whether or not
// their liveness is claimed yet (call before Run).
func (p *Publisher) SetGrace(d time.Duration) {
	p.mu.Lock()
	p.graceUntil = time.Now().Add(d)
	p.mu.Unlock()
}

// Run publishes until ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	changes, unsubscribe := p.cache.Subscribe()
	defer unsubscribe()
	p.mu.Lock()
	graceLeft := time.Until(p.graceUntil)
	p.mu.Unlock()
	var graceEnd <-chan time.Time
	if graceLeft > 0 {
		graceEnd = time.After(graceLeft)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
			// Most changes (heartbeats' transitions, gateway states)
			// leave discovery alone: no view is built for them.
			rev, gen := p.cache.Stamp()
			p.mu.Lock()
			same := p.latest != nil && gen == p.lastGen
			if same {
				p.covered = max(p.covered, uint64(rev))
			}
			p.mu.Unlock()
			if same {
				continue
			}
			// A change right after a publish waits for the rest of
			// MinPublishInterval, and everything changed meanwhile goes
			// in one snapshot: each publish costs a send to every node
			// and every gateway, and a deploy's status reports came
			// every few milliseconds. A change after a quiet spell is
			// published at once.
			if wait := MinPublishInterval - time.Since(p.lastPublish); wait > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-p.after(wait):
				}
			}
			p.publish(p.cache.View())
			p.lastPublish = time.Now()
		case <-graceEnd:
			// Nodes still unclaimed lose their endpoints now.
			p.mu.Lock()
			p.lastGen = 0
			p.mu.Unlock()
			p.publish(p.cache.View())
		}
	}
}

// builtService is one service as last built.
type builtService struct {
	gen   uint64
	svc   discovery.Service
	items map[string]string
}

func (p *Publisher) publish(v *store.View) {
	p.mu.Lock()
	if p.latest != nil && v.Gen == p.lastGen {
		// Only heartbeats or gateway states changed: same snapshot.
		p.covered = max(p.covered, uint64(v.Revision))
		p.mu.Unlock()
		return
	}
	p.lastGen = v.Gen
	grace := time.Now().Before(p.graceUntil)
	if p.graceFor == nil {
		// Nodes that joined after this replica started had their chance.
		p.graceFor = map[string]bool{}
		for _, n := range v.Nodes {
			p.graceFor[n.Name] = true
		}
	}
	down := discovery.DownNodesOf(v.Nodes, v.LiveNodes, func(n *api.Node) bool {
		return grace && n.State == api.NodeReady && p.graceFor[n.Name]
	})
	// Every service again when the nodes moved (endpoints leave with a
	// node) or the grace began or ended; else only those whose inputs did.
	all := p.built == nil || v.NodesGen != p.builtNodes || grace != p.builtGrace
	prev := p.built
	p.mu.Unlock()

	snap := &discovery.Snapshot{Version: uint64(v.Revision), Services: make([]discovery.Service, 0, len(v.Services))}
	built := make(map[string]builtService, len(v.Services))
	set := map[string]string{}
	var del []string
	for i := range v.Services {
		svc := &v.Services[i]
		key := svc.Key()
		gen := v.ServiceGens[key]
		if b, ok := prev[key]; ok && !all && b.gen == gen && gen != 0 {
			built[key] = b
			snap.Services = append(snap.Services, b.svc)
			continue
		}
		instances, ro := v.DiscoveryInputs(key)
		b := builtService{gen: gen, svc: discovery.BuildService(svc, instances, v.Statuses, down, ro), items: map[string]string{}}
		discovery.ServiceItems(&b.svc, b.items)
		old := prev[key].items
		for k, body := range b.items {
			if ob, ok := old[k]; !ok || ob != body {
				set[k] = body
			}
		}
		for k := range old {
			if _, ok := b.items[k]; !ok {
				del = append(del, k)
			}
		}
		built[key] = b
		snap.Services = append(snap.Services, b.svc)
		p.notePanic(key, &b.svc)
	}
	for key, b := range prev {
		if _, ok := built[key]; !ok {
			for k := range b.items {
				del = append(del, k)
			}
			if _, ok := p.inPanic[key]; ok {
				delete(p.inPanic, key)
				p.panic.DeleteLabelValues(b.svc.Namespace, b.svc.Name)
			}
		}
	}
	discovery.SortServices(snap.Services)
	p.mu.Lock()
	// A version is one content: a view of the same etcd revision (the end
	// of the restart grace, when nothing was written since) is not
	// published again; the write that follows (the controller marking the
	// unclaimed nodes NotReady) is.
	logVersion, _ := p.items.Version()
	newer := snap.Version > logVersion
	if !p.items.Apply(snap.Version, set, del) && p.latest != nil {
		if newer { // nothing changed: what was built is what is published
			p.built, p.builtNodes, p.builtGrace = built, v.NodesGen, grace
		}
		p.covered = max(p.covered, snap.Version)
		p.mu.Unlock()
		return
	}
	p.built, p.builtNodes, p.builtGrace = built, v.NodesGen, grace
	p.latest, p.covered = snap, snap.Version
	for ch := range p.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	p.mu.Unlock()
	for _, sink := range p.sinks {
		sink(snap)
	}
	p.published.Inc()
	p.version.Set(float64(snap.Version))
	p.logger.Debug("published discovery snapshot", "version", snap.Version, "services", len(snap.Services))
}

// notePanic sets the panic gauge of a service just built (0 from its first
// build) and logs when its
// panic routing starts or ends (the leader's controller records the
// events: one per cluster, not one per replica).
func (p *Publisher) notePanic(key string, svc *discovery.Service) {
	nodes := svc.PanicNodes()
	was, seen := p.inPanic[key]
	now := len(nodes) > 0
	if seen && was == now {
		return
	}
	// Every service has its series from its first build, at 0 unless in
	// panic, so an alert or a sum over it works before the first panic.
	p.inPanic[key] = now
	if now {
		p.panic.WithLabelValues(svc.Namespace, svc.Name).Set(1)
		p.logger.Warn("panic routing: every endpoint of the service is on nodes that stopped reporting; keeping them", "service", key, "nodes", nodes)
		return
	}
	p.panic.WithLabelValues(svc.Namespace, svc.Name).Set(0)
	if seen {
		p.logger.Info("panic routing ended", "service", key)
	}
}
