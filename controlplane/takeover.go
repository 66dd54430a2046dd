package controlplane

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// A leader that was killed keeps the lead until its election lease
// expires (ElectionTTL, plus a whole TTL more when it also led etcd: etcd
// renews every lease when its own leader changes): 7-8 s without
// controllers. A shorter TTL costs false losses of the lead under load.
// Instead the leader beats: it rewrites leaderAliveKey every
// leaderBeatEvery on its election lease, and every other replica follows
// the key. When the beats stop for leaderSilentAfter and the leader's API
// address refuses connections (a port nobody listens on: the process is
// gone; a slow or partitioned leader times out instead, and a firewall
// that rejects does not stop the beats), a follower revokes the dead
// leader's election lease and the next in line leads at once. Both
// conditions must hold twice in a row.
const (
	leaderAliveKey    = "/berth-leader-alive" // outside /berth/: beats never wake the cache
	leaderBeatEvery   = 500 * time.Millisecond
	leaderSilentAfter = 2 * time.Second
)

// beatAsLeader rewrites the alive key on the election session's lease
// until ctx ends.
func (s *Server) beatAsLeader(ctx context.Context, sess *concurrency.Session, name string) {
	t := time.NewTicker(leaderBeatEvery)
	defer t.Stop()
	for {
		bctx, cancel := context.WithTimeout(ctx, leaderBeatEvery)
		_, err := s.cli.Put(bctx, leaderAliveKey, name, clientv3.WithLease(sess.Lease()))
		cancel()
		if err != nil && ctx.Err() == nil {
			s.logger.Debug("leader beat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchLeader runs on every replica: while another replica leads, it
// takes the lead from a leader that is gone (above).
func (s *Server) watchLeader(ctx context.Context) error {
	var mu sync.Mutex
	lastBeat, beater := time.Now(), ""
	go func() {
		for ctx.Err() == nil {
			for wr := range s.cli.Watch(ctx, leaderAliveKey) {
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut {
						mu.Lock()
						lastBeat, beater = time.Now(), string(ev.Kv.Value)
						mu.Unlock()
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	t := time.NewTicker(leaderBeatEvery)
	defer t.Stop()
	self := s.replicaName()
	strikes := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if s.IsLeader() {
			strikes = 0
			continue
		}
		mu.Lock()
		silent, who := time.Since(lastBeat), beater
		mu.Unlock()
		gone, leader, lease := s.leaderGone(ctx, self, who, silent)
		if !gone {
			strikes = 0
			continue
		}
		if strikes++; strikes < 2 {
			continue
		}
		strikes = 0
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := s.cli.Revoke(rctx, lease)
		cancel()
		if err == nil {
			s.logger.Warn("the leading replica is gone (no beat, its API refuses connections): ended its lead without waiting for its lease", "leader", leader, "silent", silent.Round(time.Millisecond))
		}
	}
}

// leaderGone reports whether the current leader (not self) is silent
// and its API refuses connections, with its name and election lease.
func (s *Server) leaderGone(ctx context.Context, self, beater string, silent time.Duration) (bool, string, clientv3.LeaseID) {
	gctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := s.cli.Get(gctx, store.ElectionPrefix+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return false, "", 0
	}
	kv := resp.Kvs[0]
	leader := string(kv.Value)
	if leader == self || kv.Lease == 0 || (beater == leader && silent < leaderSilentAfter) {
		return false, leader, 0
	}
	// A leader that never beat (an older version) is judged by the
	// silence since this replica started watching, as one that stopped.
	if silent < leaderSilentAfter {
		return false, leader, 0
	}
	rec, err := s.store.Server(gctx, leader)
	if err != nil || rec == nil || rec.APIAddress == "" {
		return false, leader, 0
	}
	conn, err := net.DialTimeout("tcp", rec.APIAddress, 500*time.Millisecond)
	if err == nil {
		conn.Close()
		return false, leader, 0
	}
	return errors.Is(err, syscall.ECONNREFUSED), leader, clientv3.LeaseID(kv.Lease)
}
