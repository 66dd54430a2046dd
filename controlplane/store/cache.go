package store

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Cache is a watch-fed, read-only copy of Berth's state in etcd. Controllers
// read immutable View values from it and are woken when it changes; they
// write through Store. Events and images are not cached.
type Cache struct {
	cli    *clientv3.Client
	logger *slog.Logger

	mu sync.RWMutex
	// kvs holds every cached key but instances' and statuses', which are
	// in instances and statuses (by key too): a view that reuses those
	// does not walk their 20,000 keys.
	kvs, instances, statuses map[string]cachedKV
	rev                      int64
	view                     *View // built lazily, reset on change
	// last is the previous view (nil after a load); dirtyInstances and
	// dirtyStatuses are the ids of the instances and statuses changed
	// since it was built. The next view shares last's Instances and
	// Statuses when none changed, and patches copies of them when a few
	// did, rather than rebuilding 10,000 of each from every key.
	last                          *View
	dirtyInstances, dirtyStatuses map[string]bool
	gen                           uint64            // View.Gen
	nodesGen                      uint64            // View.NodesGen
	rolloutsGen                   uint64            // RolloutsGen
	svcGens                       map[string]uint64 // View.ServiceGens
	svcSeq                        uint64
	ready                         chan struct{}
	subs                          []chan struct{}
	started                       bool
	// nodeSubs are woken only when what is assigned to their node changes
	// (SubscribeNode); touched collects those nodes until notify, and
	// touchedAll says every node was (a full load).
	nodeSubs   map[string][]chan struct{}
	touched    map[string]bool
	touchedAll bool
}

type cachedKV struct {
	value       []byte
	modRevision int64
	// obj is the value decoded once, when the key changed (nil: not a
	// kind the view holds, or malformed). Views share it: nobody may
	// modify what a View holds.
	obj any
}

// leaseObj is a node's heartbeat key decoded.
type leaseObj struct {
	node string
	LeaseValue
}

// gatewaysObj is a replica's gateways decoded.
type gatewaysObj struct {
	replica  string
	gateways []api.GatewayStatus
}

// dnsVersionsObj is one replica's report of its nodes' DNS versions.
type dnsVersionsObj map[string]uint64

// decode turns a cached key's value into what View holds for it.
func decode(key string, value []byte) any {
	switch {
	case strings.HasPrefix(key, ServicesPrefix):
		return decodeAs[api.Service](value)
	case strings.HasPrefix(key, InstancesPrefix):
		return decodeAs[api.Instance](value)
	case strings.HasPrefix(key, StatusPrefix):
		return decodeAs[api.InstanceStatus](value)
	case strings.HasPrefix(key, NodesPrefix):
		return decodeAs[api.Node](value)
	case strings.HasPrefix(key, RolloutsPrefix):
		return decodeAs[api.Rollout](value)
	case strings.HasPrefix(key, VolumesPrefix):
		return decodeAs[api.Volume](value)
	case strings.HasPrefix(key, GatewaysPrefix):
		var gws []api.GatewayStatus
		if json.Unmarshal(value, &gws) == nil {
			return gatewaysObj{replica: strings.TrimPrefix(key, GatewaysPrefix), gateways: gws}
		}
	case strings.HasPrefix(key, DNSVersionsPrefix):
		var vs map[string]uint64
		if json.Unmarshal(value, &vs) == nil {
			return dnsVersionsObj(vs)
		}
	case strings.HasPrefix(key, LeasesPrefix):
		if lv, err := ParseLeaseValue(value); err == nil {
			return leaseObj{node: strings.TrimPrefix(key, LeasesPrefix), LeaseValue: lv}
		}
	}
	return nil
}

// decodeAs unmarshals value as a T, or returns nil (left out of views).
func decodeAs[T any](value []byte) any {
	var v T
	if json.Unmarshal(value, &v) != nil {
		return nil
	}
	return v
}

// View is an immutable snapshot of the cache at one etcd revision. Callers
// must not modify what it holds.
type View struct {
	Revision int64
	// Gen changes whenever anything but heartbeats of live nodes and the
	// replicas' gateway states changed: two views with the same Gen place
	// the same instances and give the same discovery snapshot.
	Gen uint64
	// NodesGen changes whenever a node or its liveness changed.
	NodesGen uint64
	// ServiceGens changes for a service ("<ns>/<name>") whenever it, its
	// rollout, one of its instances or their statuses changed: a service
	// whose entry and NodesGen are unchanged builds the same discovery.
	ServiceGens map[string]uint64
	Services    []api.Service // sorted by key
	Instances   []VersionedInstance
	Statuses    map[string]api.InstanceStatus
	Nodes       []api.Node
	// LiveNodes holds the nodes whose heartbeat lease is alive.
	LiveNodes map[string]bool
	// Heartbeats holds the time of each live node's last heartbeat.
	Heartbeats map[string]time.Time
	// DNSVersions holds the discovery snapshot version each live node's DNS
	// answers from (0: none yet).
	DNSVersions map[string]uint64
	// Volumes by "<ns>/<name>".
	Volumes map[string]VersionedVolume
	// Rollouts by service "<ns>/<name>".
	Rollouts map[string]VersionedRollout
	// Gateways are the xDS clients of every control plane replica, sorted
	// by replica and node id.
	Gateways []api.GatewayStatus

	// byService, byNode and byID index Instances (built with it, shared
	// with it).
	byService map[string][]int
	byNode    map[string][]int
	byID      map[string]int
}

// Instance returns the instance with id, without scanning every instance.
func (v *View) Instance(id string) (VersionedInstance, bool) {
	if v.byID == nil { // a View built by hand (tests): scan
		for _, vi := range v.Instances {
			if vi.Instance.ID == id {
				return vi, true
			}
		}
		return VersionedInstance{}, false
	}
	i, ok := v.byID[id]
	if !ok {
		return VersionedInstance{}, false
	}
	return v.Instances[i], true
}

// ServiceInstances returns the instances of service "<ns>/<name>", in ID
// order, without scanning every instance.
func (v *View) ServiceInstances(key string) []VersionedInstance {
	if v.byService == nil { // a View built by hand (tests): scan
		return v.scan(func(in *api.Instance) bool { return in.ServiceKey() == key })
	}
	return v.pick(v.byService[key])
}

// ServiceReplicas counts the live instances of service "<ns>/<name>"
// (not draining, meant to run) and how many of them are ready: the
// counts `get services` shows and the metrics export.
func (v *View) ServiceReplicas(key string) (live, ready int32) {
	for _, vi := range v.ServiceInstances(key) {
		in := &vi.Instance
		if !in.Live() {
			continue
		}
		live++
		if in.ReadyWith(v.Statuses[in.ID]) {
			ready++
		}
	}
	return live, ready
}

// DiscoveryInputs are what discovery.BuildService takes for the service
// key besides the service, statuses and down nodes: its instances and its
// rollout (nil: none).
func (v *View) DiscoveryInputs(key string) ([]api.Instance, *api.Rollout) {
	vis := v.ServiceInstances(key)
	instances := make([]api.Instance, len(vis))
	for i := range vis {
		instances[i] = vis[i].Instance
	}
	var ro *api.Rollout
	if r, ok := v.Rollouts[key]; ok {
		ro = &r.Rollout
	}
	return instances, ro
}

// InstanceServices lists the services ("<ns>/<name>") that have
// instances, services already deleted included.
func (v *View) InstanceServices() []string {
	if v.byService == nil {
		seen := map[string]bool{}
		for _, vi := range v.Instances {
			seen[vi.Instance.ServiceKey()] = true
		}
		return slices.Sorted(maps.Keys(seen))
	}
	return slices.Sorted(maps.Keys(v.byService))
}

// NodeInstances returns the instances placed on a node, in ID order.
func (v *View) NodeInstances(node string) []VersionedInstance {
	if v.byNode == nil {
		return v.scan(func(in *api.Instance) bool { return in.Node == node })
	}
	return v.pick(v.byNode[node])
}

func (v *View) scan(keep func(*api.Instance) bool) []VersionedInstance {
	var out []VersionedInstance
	for _, vi := range v.Instances {
		if keep(&vi.Instance) {
			out = append(out, vi)
		}
	}
	return out
}

func (v *View) pick(idx []int) []VersionedInstance {
	out := make([]VersionedInstance, len(idx))
	for i, j := range idx {
		out[i] = v.Instances[j]
	}
	return out
}

func (v *View) index() {
	v.byService, v.byNode, v.byID = map[string][]int{}, map[string][]int{}, make(map[string]int, len(v.Instances))
	for i := range v.Instances {
		in := &v.Instances[i].Instance
		v.byID[in.ID] = i
		key := in.ServiceKey()
		v.byService[key] = append(v.byService[key], i)
		if in.Node != "" {
			v.byNode[in.Node] = append(v.byNode[in.Node], i)
		}
	}
}

// VersionedVolume is a volume with its etcd mod revision.
type VersionedVolume struct {
	Volume      api.Volume
	ModRevision int64
}

// Node returns the named node from the view, or nil.
func (v *View) Node(name string) *api.Node {
	for i := range v.Nodes {
		if v.Nodes[i].Name == name {
			return &v.Nodes[i]
		}
	}
	return nil
}

// Service returns ns/name from the view, or nil.
func (v *View) Service(ns, name string) *api.Service {
	for i := range v.Services {
		if v.Services[i].Metadata.Namespace == ns && v.Services[i].Metadata.Name == name {
			return &v.Services[i]
		}
	}
	return nil
}

// NewCache returns a cache; Run fills and follows it.
func NewCache(cli *clientv3.Client, logger *slog.Logger) *Cache {
	if logger == nil {
		logger = slog.Default()
	}
	return &Cache{cli: cli, logger: logger.With("component", "cache"), kvs: map[string]cachedKV{}, instances: map[string]cachedKV{}, statuses: map[string]cachedKV{}, ready: make(chan struct{})}
}

// WaitFor waits until the cache holds etcd revision rev (a write just
// made), so a read right after a write sees it, for at most max; it
// reports whether it got there.
func (c *Cache) WaitFor(ctx context.Context, rev int64, max time.Duration) bool {
	if c.revision() >= rev {
		return true
	}
	changes, stop := c.Subscribe()
	defer stop()
	timeout := time.NewTimer(max)
	defer timeout.Stop()
	for c.revision() < rev {
		select {
		case <-changes:
		case <-timeout.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// revision is the etcd revision the cache holds.
func (c *Cache) revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// Stamp is View().Revision and View().Gen without building a view.
func (c *Cache) Stamp() (revision int64, gen uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev, c.gen
}

// RolloutsGen changes whenever a rollout record or a service changes
// (what a rollout's history reads), without building a view: the rest of
// a deploy's changes (thousands of status reports) leave it alone.
func (c *Cache) RolloutsGen() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rolloutsGen
}

// NodesGen is View().NodesGen without building a view.
func (c *Cache) NodesGen() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.nodesGen
}

// Ready is closed once the first full load is done.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

// Subscribe returns a channel that receives (coalesced) a value whenever
// the cache changes, and a function to stop (every stream that subscribes
// must, or the cache keeps waking a channel nobody reads). The channel is
// buffered by one: a slow reader sees one wake-up for many changes and
// reads the latest View.
func (c *Cache) Subscribe() (<-chan struct{}, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{}, 1)
	c.subs = append(c.subs, ch)
	if c.started {
		ch <- struct{}{}
	}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		// A new slice: notify ranges over the old one without the lock.
		c.subs = slices.DeleteFunc(slices.Clone(c.subs), func(s chan struct{}) bool { return s == ch })
	}
}

// SubscribeNode is Subscribe for one node's assignments: the channel is
// woken when an instance placed on node (before or after the change) or a
// volume bound to it changes, not on every change of the cluster (at 1,000
// nodes, waking every node's stream on every change cost a core).
func (c *Cache) SubscribeNode(node string) (<-chan struct{}, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{}, 1)
	if c.nodeSubs == nil {
		c.nodeSubs = map[string][]chan struct{}{}
	}
	c.nodeSubs[node] = append(c.nodeSubs[node], ch)
	if c.started {
		ch <- struct{}{}
	}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		subs := slices.DeleteFunc(slices.Clone(c.nodeSubs[node]), func(s chan struct{}) bool { return s == ch })
		if len(subs) == 0 {
			delete(c.nodeSubs, node)
		} else {
			c.nodeSubs[node] = subs
		}
	}
}

// touch records the nodes a change of obj concerns, for SubscribeNode.
func (c *Cache) touch(obj any) {
	var node string
	switch o := obj.(type) {
	case api.Instance:
		node = o.Node
	case api.Volume:
		node = o.Status.Node
	default:
		return
	}
	if node == "" {
		return
	}
	if c.touched == nil {
		c.touched = map[string]bool{}
	}
	c.touched[node] = true
}

// touchService moves the generation of the service a change of obj
// concerns (View.ServiceGens).
func (c *Cache) touchService(obj any) {
	var key string
	switch o := obj.(type) {
	case api.Service:
		key = o.Key()
	case api.Instance:
		key = o.ServiceKey()
	case api.InstanceStatus:
		if in, ok := c.instances[InstancesPrefix+o.ID].obj.(api.Instance); ok {
			key = in.ServiceKey()
		}
	case api.Rollout:
		key = o.Namespace + "/" + o.Service
	}
	if key == "" {
		return
	}
	if c.svcGens == nil {
		c.svcGens = map[string]uint64{}
	}
	c.svcSeq++
	c.svcGens[key] = c.svcSeq
}

func cached(key string) bool {
	return !strings.HasPrefix(key, EventsPrefix) && !strings.HasPrefix(key, ImagesPrefix)
}

// Run loads the state and follows it until ctx ends. After a compaction or
// a broken watch it reloads everything.
func (c *Cache) Run(ctx context.Context) error {
	for {
		rev, err := c.load(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.logger.Warn("load state from etcd failed, retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		err = c.follow(ctx, rev+1)
		if ctx.Err() != nil {
			return nil
		}
		c.logger.Warn("etcd watch ended, reloading", "err", err)
	}
}

func (c *Cache) load(ctx context.Context) (int64, error) {
	resp, err := c.cli.Get(ctx, Root, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("cache: load: %w", err)
	}
	c.mu.Lock()
	c.kvs, c.instances, c.statuses = make(map[string]cachedKV, len(resp.Kvs)), map[string]cachedKV{}, map[string]cachedKV{}
	c.rev, c.view, c.last = resp.Header.Revision, nil, nil
	c.touchedAll = true
	for _, kv := range resp.Kvs {
		if cached(string(kv.Key)) {
			c.put(string(kv.Key), kv.Value, kv.ModRevision)
		}
	}
	c.mu.Unlock()
	c.notify()
	return resp.Header.Revision, nil
}

func (c *Cache) follow(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.cli.Watch(wctx, Root, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		c.mu.Lock()
		changed := false
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			if !cached(key) {
				continue
			}
			changed = true
			if ev.Type == clientv3.EventTypeDelete {
				c.delete(key)
			} else {
				c.put(key, ev.Kv.Value, ev.Kv.ModRevision)
			}
		}
		if resp.Header.Revision > c.rev {
			c.rev = resp.Header.Revision
		}
		if changed {
			c.view = nil
		}
		c.mu.Unlock()
		if changed {
			c.notify()
		}
	}
	return fmt.Errorf("cache: watch closed")
}

// put stores a key's new value; delete removes it. Both drop the view.
// The caller holds c.mu (tests call them alone).
func (c *Cache) put(key string, value []byte, modRevision int64) {
	table := c.table(key)
	old, existed := table[key]
	kv := cachedKV{value: value, modRevision: modRevision, obj: decode(key, value)}
	table[key] = kv
	c.touch(old.obj)
	c.touch(kv.obj)
	c.touchService(old.obj)
	c.touchService(kv.obj)
	c.changed(key, existed)
}

// table is the map that holds key.
func (c *Cache) table(key string) map[string]cachedKV {
	switch {
	case strings.HasPrefix(key, InstancesPrefix):
		return c.instances
	case strings.HasPrefix(key, StatusPrefix):
		return c.statuses
	}
	return c.kvs
}

func (c *Cache) delete(key string) {
	table := c.table(key)
	c.touch(table[key].obj)
	c.touchService(table[key].obj)
	delete(table, key)
	c.changed(key, false)
}

func (c *Cache) changed(key string, update bool) {
	c.view = nil
	// A heartbeat of a live node and a replica's gateway states change
	// neither what is placed where nor what discovery serves.
	if !(update && strings.HasPrefix(key, LeasesPrefix)) && !strings.HasPrefix(key, GatewaysPrefix) && !strings.HasPrefix(key, DNSVersionsPrefix) {
		c.gen++
	}
	if id, ok := strings.CutPrefix(key, InstancesPrefix); ok {
		c.dirtyInstances = markDirty(c.dirtyInstances, id)
	}
	if id, ok := strings.CutPrefix(key, StatusPrefix); ok {
		c.dirtyStatuses = markDirty(c.dirtyStatuses, id)
	}
	// A node's liveness is whether its lease key exists: a rewrite of the
	// key (its heartbeat time, its DNS version) leaves what the node list
	// and discovery read as it was.
	if strings.HasPrefix(key, NodesPrefix) || (!update && strings.HasPrefix(key, LeasesPrefix)) {
		c.nodesGen++
	}
	if strings.HasPrefix(key, RolloutsPrefix) || strings.HasPrefix(key, ServicesPrefix) {
		c.rolloutsGen++
	}
}

func markDirty(m map[string]bool, id string) map[string]bool {
	if m == nil {
		m = map[string]bool{}
	}
	m[id] = true
	return m
}

func (c *Cache) notify() {
	c.mu.Lock()
	if !c.started {
		c.started = true
		close(c.ready)
	}
	subs := c.subs
	var nodeSubs [][]chan struct{}
	if c.touchedAll {
		for _, s := range c.nodeSubs {
			nodeSubs = append(nodeSubs, s)
		}
	} else {
		for node := range c.touched {
			if s, ok := c.nodeSubs[node]; ok {
				nodeSubs = append(nodeSubs, s)
			}
		}
	}
	c.touched, c.touchedAll = nil, false
	c.mu.Unlock()
	for _, ch := range slices.Concat(append(nodeSubs, subs)...) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// View returns the current immutable view (built once per change).
func (c *Cache) View() *View {
	c.mu.RLock()
	if v := c.view; v != nil {
		c.mu.RUnlock()
		return v
	}
	c.mu.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.view != nil {
		return c.view
	}
	v := &View{Revision: c.rev, Gen: c.gen, NodesGen: c.nodesGen, ServiceGens: maps.Clone(c.svcGens), Statuses: map[string]api.InstanceStatus{}, LiveNodes: map[string]bool{}, Heartbeats: map[string]time.Time{}, DNSVersions: map[string]uint64{}, Volumes: map[string]VersionedVolume{}, Rollouts: map[string]VersionedRollout{}}
	// Sized first: at 10,000 instances, growing the slices and maps by
	// appending cost more than everything else.
	var nSvc, nNode int
	for _, kv := range c.kvs {
		switch kv.obj.(type) {
		case api.Service:
			nSvc++
		case api.Node:
			nNode++
		}
	}
	v.Services, v.Nodes = make([]api.Service, 0, nSvc), make([]api.Node, 0, nNode)
	// Instances and statuses: last's when none changed, last's patched
	// when some changed in place, else built from every key.
	last := c.last
	fullInstances := last == nil
	if !fullInstances {
		fullInstances = !c.patchInstances(v, last)
	}
	if fullInstances {
		v.Instances = make([]VersionedInstance, 0, len(c.instances))
		for _, kv := range c.instances {
			if o, ok := kv.obj.(api.Instance); ok {
				v.Instances = append(v.Instances, VersionedInstance{Instance: o, ModRevision: kv.modRevision})
			}
		}
	}
	if last == nil {
		v.Statuses = make(map[string]api.InstanceStatus, len(c.statuses))
		for _, kv := range c.statuses {
			if o, ok := kv.obj.(api.InstanceStatus); ok {
				v.Statuses[o.ID] = o
			}
		}
	} else {
		c.patchStatuses(v, last)
	}
	var dnsMaps []dnsVersionsObj
	for _, kv := range c.kvs {
		switch o := kv.obj.(type) {
		case api.Service:
			v.Services = append(v.Services, o)
		case api.Node:
			v.Nodes = append(v.Nodes, o)
		case api.Rollout:
			v.Rollouts[o.Namespace+"/"+o.Service] = VersionedRollout{Rollout: o, ModRevision: kv.modRevision}
		case api.Volume:
			v.Volumes[o.Key()] = VersionedVolume{Volume: o, ModRevision: kv.modRevision}
		case gatewaysObj:
			for _, g := range o.gateways {
				g.Replica = o.replica
				v.Gateways = append(v.Gateways, g)
			}
		case leaseObj:
			v.LiveNodes[o.node] = true
			v.Heartbeats[o.node] = o.At
			v.DNSVersions[o.node] = max(v.DNSVersions[o.node], o.DNSVersion)
		case dnsVersionsObj:
			dnsMaps = append(dnsMaps, o)
		}
	}
	// What the replicas report: the newest version a node is known to run
	// (versions only grow).
	for _, m := range dnsMaps {
		for node, ver := range m {
			v.DNSVersions[node] = max(v.DNSVersions[node], ver)
		}
	}
	sort.Slice(v.Services, func(i, j int) bool { return v.Services[i].Key() < v.Services[j].Key() })
	if fullInstances {
		sort.Slice(v.Instances, func(i, j int) bool { return v.Instances[i].Instance.ID < v.Instances[j].Instance.ID })
		v.index()
	}
	sort.Slice(v.Nodes, func(i, j int) bool { return v.Nodes[i].Name < v.Nodes[j].Name })
	sort.Slice(v.Gateways, func(i, j int) bool {
		a, b := v.Gateways[i], v.Gateways[j]
		return a.Replica < b.Replica || (a.Replica == b.Replica && a.NodeID < b.NodeID)
	})
	for i := range v.Nodes {
		n := &v.Nodes[i]
		n.Ready = v.LiveNodes[n.Name]
		if t, ok := v.Heartbeats[n.Name]; ok && t.After(n.Heartbeat) {
			n.Heartbeat = t
		}
		n.DNSVersion = v.DNSVersions[n.Name]
	}
	c.view, c.last = v, v
	c.dirtyInstances, c.dirtyStatuses = nil, nil
	return v
}

// patchInstances gives v last's instances with those changed since in
// place (same ids: no instance added or deleted), sharing last's indexes
// where they still hold; false when it cannot (v is then built whole).
func (c *Cache) patchInstances(v *View, last *View) bool {
	if len(c.dirtyInstances) == 0 {
		v.Instances, v.byService, v.byNode, v.byID = last.Instances, last.byService, last.byNode, last.byID
		return true
	}
	if last.byID == nil || len(c.dirtyInstances) > len(last.Instances)/2 {
		return false
	}
	instances := slices.Clone(last.Instances)
	moved := false
	for id := range c.dirtyInstances {
		i, had := last.byID[id]
		kv, has := c.instances[InstancesPrefix+id]
		o, ok := kv.obj.(api.Instance)
		if !had || !has || !ok {
			return false // added, deleted or malformed
		}
		if o.Node != instances[i].Instance.Node {
			moved = true
		}
		instances[i] = VersionedInstance{Instance: o, ModRevision: kv.modRevision}
	}
	v.Instances, v.byService, v.byID, v.byNode = instances, last.byService, last.byID, last.byNode
	if moved {
		v.byNode = map[string][]int{}
		for i := range instances {
			if n := instances[i].Instance.Node; n != "" {
				v.byNode[n] = append(v.byNode[n], i)
			}
		}
	}
	return true
}

// patchStatuses gives v last's statuses with those changed since.
func (c *Cache) patchStatuses(v *View, last *View) {
	if len(c.dirtyStatuses) == 0 {
		v.Statuses = last.Statuses
		return
	}
	v.Statuses = maps.Clone(last.Statuses)
	for id := range c.dirtyStatuses {
		if o, ok := c.statuses[StatusPrefix+id].obj.(api.InstanceStatus); ok {
			v.Statuses[id] = o
		} else {
			delete(v.Statuses, id)
		}
	}
}
