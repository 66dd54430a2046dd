package store

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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

	mu      sync.RWMutex
	kvs     map[string]cachedKV
	rev     int64
	view    *View // built lazily, reset on change
	ready   chan struct{}
	subs    []chan struct{}
	started bool
}

type cachedKV struct {
	value       []byte
	modRevision int64
}

// View is an immutable snapshot of the cache at one etcd revision. Callers
// must not modify what it holds.
type View struct {
	Revision  int64
	Services  []api.Service // sorted by key
	Instances []VersionedInstance
	Statuses  map[string]api.InstanceStatus
	Nodes     []api.Node
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
	return &Cache{cli: cli, logger: logger.With("component", "cache"), kvs: map[string]cachedKV{}, ready: make(chan struct{})}
}

// Ready is closed once the first full load is done.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

// Subscribe returns a channel that receives (coalesced) a value whenever
// the cache changes. It is buffered by one: a slow reader sees one wake-up
// for many changes and reads the latest View.
func (c *Cache) Subscribe() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{}, 1)
	c.subs = append(c.subs, ch)
	if c.started {
		ch <- struct{}{}
	}
	return ch
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
	kvs := make(map[string]cachedKV, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if cached(string(kv.Key)) {
			kvs[string(kv.Key)] = cachedKV{value: kv.Value, modRevision: kv.ModRevision}
		}
	}
	c.mu.Lock()
	c.kvs, c.rev, c.view = kvs, resp.Header.Revision, nil
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
				delete(c.kvs, key)
			} else {
				c.kvs[key] = cachedKV{value: ev.Kv.Value, modRevision: ev.Kv.ModRevision}
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

func (c *Cache) notify() {
	c.mu.Lock()
	if !c.started {
		c.started = true
		close(c.ready)
	}
	subs := c.subs
	c.mu.Unlock()
	for _, ch := range subs {
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
	v := &View{Revision: c.rev, Statuses: map[string]api.InstanceStatus{}, LiveNodes: map[string]bool{}, Heartbeats: map[string]time.Time{}, DNSVersions: map[string]uint64{}, Volumes: map[string]VersionedVolume{}, Rollouts: map[string]VersionedRollout{}}
	for key, kv := range c.kvs {
		switch {
		case strings.HasPrefix(key, ServicesPrefix):
			var s api.Service
			if json.Unmarshal(kv.value, &s) == nil {
				v.Services = append(v.Services, s)
			}
		case strings.HasPrefix(key, InstancesPrefix):
			var in api.Instance
			if json.Unmarshal(kv.value, &in) == nil {
				v.Instances = append(v.Instances, VersionedInstance{Instance: in, ModRevision: kv.modRevision})
			}
		case strings.HasPrefix(key, StatusPrefix):
			var st api.InstanceStatus
			if json.Unmarshal(kv.value, &st) == nil {
				v.Statuses[st.ID] = st
			}
		case strings.HasPrefix(key, NodesPrefix):
			var n api.Node
			if json.Unmarshal(kv.value, &n) == nil {
				v.Nodes = append(v.Nodes, n)
			}
		case strings.HasPrefix(key, RolloutsPrefix):
			var r api.Rollout
			if json.Unmarshal(kv.value, &r) == nil {
				v.Rollouts[r.Namespace+"/"+r.Service] = VersionedRollout{Rollout: r, ModRevision: kv.modRevision}
			}
		case strings.HasPrefix(key, VolumesPrefix):
			var vol api.Volume
			if json.Unmarshal(kv.value, &vol) == nil {
				v.Volumes[vol.Key()] = VersionedVolume{Volume: vol, ModRevision: kv.modRevision}
			}
		case strings.HasPrefix(key, GatewaysPrefix):
			var gws []api.GatewayStatus
			if json.Unmarshal(kv.value, &gws) == nil {
				replica := strings.TrimPrefix(key, GatewaysPrefix)
				for _, g := range gws {
					g.Replica = replica
					v.Gateways = append(v.Gateways, g)
				}
			}
		case strings.HasPrefix(key, LeasesPrefix):
			name := strings.TrimPrefix(key, LeasesPrefix)
			v.LiveNodes[name] = true
			if lv, err := ParseLeaseValue(kv.value); err == nil {
				v.Heartbeats[name] = lv.At
				v.DNSVersions[name] = lv.DNSVersion
			}
		}
	}
	sort.Slice(v.Services, func(i, j int) bool { return v.Services[i].Key() < v.Services[j].Key() })
	sort.Slice(v.Instances, func(i, j int) bool { return v.Instances[i].Instance.ID < v.Instances[j].Instance.ID })
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
	c.view = v
	return v
}
