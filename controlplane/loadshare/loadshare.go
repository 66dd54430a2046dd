// Package loadshare makes every control plane replica see the load of the
// whole cluster. Gateways send their load reports (LRS) to the replica
// they are connected to; for canary analysis the leader needs all of them.
// Each replica writes, every Interval in which its own gateways reported
// traffic, what they reported since its previous write, per cluster, under
// /berth-loads/<replica> (with a lease, so a dead replica's entry goes).
// Every replica follows the others' writes through an etcd watch, which
// delivers each write once and in order, and adds them to its own xDS load
// window. The key lives outside /berth/ so the once-a-second writes do not
// wake the controllers' cache.
package loadshare

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/xds"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Prefix holds one key per replica.
const Prefix = store.LoadsPrefix

// Report is one write of a replica: the load its gateways reported per
// cluster since its previous write.
type Report struct {
	Run      string                    `json:"run"` // replica@start, for logs
	At       time.Time                 `json:"at"`
	Clusters map[string]xds.LoadTotals `json:"clusters"`
}

// Sharer publishes this replica's load and follows the others'.
type Sharer struct {
	Client  *clientv3.Client
	Replica string
	XDS     *xds.Server
	// Interval between writes (default 1s); TTL of the lease (default 3s).
	Interval, TTL time.Duration
	Logger        *slog.Logger

	run       string
	published map[string]xds.LoadTotals // totals as of the last write

	watchOnce, watchedOnce sync.Once
	watching               chan struct{}
}

// Watching is closed once this replica follows the others' writes: what
// they write from then on is counted.
func (s *Sharer) Watching() <-chan struct{} {
	s.watchOnce.Do(func() { s.watching = make(chan struct{}) })
	return s.watching
}

// Run shares until ctx ends, then removes this replica's entry.
func (s *Sharer) Run(ctx context.Context) error {
	if s.Interval <= 0 {
		s.Interval = time.Second
	}
	if s.TTL <= 0 {
		s.TTL = 3 * time.Second
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	s.Logger = s.Logger.With("component", "loadshare", "replica", s.Replica)
	s.run = fmt.Sprintf("%s@%d", s.Replica, time.Now().UnixNano())
	s.published = map[string]xds.LoadTotals{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.follow(ctx)
	}()
	s.publish(ctx)
	<-done
	dctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = s.Client.Delete(dctx, Prefix+s.Replica)
	return nil
}

// publish writes this replica's totals every Interval, under a session
// lease renewed for as long as the replica lives.
func (s *Sharer) publish(ctx context.Context) {
	ttl := max(1, int((s.TTL+time.Second-1)/time.Second))
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(s.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		t := time.NewTicker(s.Interval)
		for alive := true; alive; {
			totals := s.XDS.LocalLoadTotals(0)
			r := Report{Run: s.run, At: time.Now().UTC(), Clusters: map[string]xds.LoadTotals{}}
			for cluster, now := range totals {
				if d := now.Since(s.published[cluster]); d.Issued > 0 || d.Successes > 0 || d.Errors > 0 {
					r.Clusters[cluster] = d
				}
			}
			if len(r.Clusters) > 0 {
				out, _ := json.Marshal(r)
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := s.Client.Put(wctx, Prefix+s.Replica, string(out), clientv3.WithLease(sess.Lease()))
				cancel()
				if err == nil {
					for cluster := range r.Clusters {
						s.published[cluster] = totals[cluster]
					}
				} else if ctx.Err() == nil {
					s.Logger.Warn("share load", "err", err)
				}
			}
			select {
			case <-ctx.Done():
				alive = false
			case <-sess.Done():
				alive = false
			case <-t.C:
			}
		}
		t.Stop()
		sess.Close()
	}
}

// follow watches the other replicas' writes and adds each to the local
// load window. What was written before it started watching is not counted.
func (s *Sharer) follow(ctx context.Context) {
	for ctx.Err() == nil {
		resp, err := s.Client.Get(ctx, Prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		wch := s.Client.Watch(clientv3.WithRequireLeader(ctx), Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		// From the revision read on: no later write is missed.
		s.watchedOnce.Do(func() { s.Watching(); close(s.watching) })
		for wr := range wch {
			if wr.Err() != nil {
				s.Logger.Debug("load watch ended", "err", wr.Err())
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					s.apply(string(ev.Kv.Key), ev.Kv.Value)
				}
			}
		}
	}
}

// apply adds one write of another replica to the local load window.
func (s *Sharer) apply(key string, value []byte) {
	replica := strings.TrimPrefix(key, Prefix)
	if replica == s.Replica {
		return
	}
	var r Report
	if err := json.Unmarshal(value, &r); err != nil {
		s.Logger.Warn("ignoring a malformed load entry", "replica", replica, "err", err)
		return
	}
	for cluster, d := range r.Clusters {
		s.XDS.RecordRemoteLoad(cluster, d)
	}
}
