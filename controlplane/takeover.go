package controlplane

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/berth-dev/berth/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A leader that was killed keeps the lead until its election lease
// expires (ElectionTTL, plus a whole TTL more when it also led etcd: etcd
// renews every lease when its own leader changes): 7-8 s without
// controllers. A shorter TTL costs false losses of the lead under load.
// Instead every other replica watches the leader's lease: a live leader
// keeps it alive every third of its TTL (etcd's client), which shows as
// its time to live going up again; when a follower has not seen that for
// a third of the TTL plus leaderSilentMargin (etcd counts whole seconds),
// the leader missed a keepalive. (etcd also raises every lease's time to
// live, above its TTL, when its own leader changes: that is not a
// keepalive and is not counted as one.) When that holds and the leader's
// API address refuses connections (a port nobody listens on: the process
// is gone; a slow or partitioned leader times out instead, and a firewall
// that rejects does not stop the keepalives), twice in a row, a follower
// revokes the dead leader's lease and the next in line leads at once. The
// old leader, if it was alive after all (a firewall answering with resets
// to a late keepalive), stops its controllers as soon as it sees its
// election key go (server.go), not at its next keepalive. A replica
// restarted under the same name revokes its dead predecessor's lease
// without those checks: it knows that process is gone.
// Reading a lease's time to live writes nothing to etcd.
const (
	leaderCheckEvery   = 500 * time.Millisecond
	leaderSilentMargin = time.Second
)

// watchLeader runs on every replica: while another replica leads, it
// takes the lead from a leader that is gone (above).
func (s *Server) watchLeader(ctx context.Context) error {
	t := time.NewTicker(leaderCheckEvery)
	defer t.Stop()
	self := s.replicaName()
	strikes := 0
	var w leaseWatch
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
		gone, leader, lease, silent := s.leaderGone(ctx, self, &w)
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
			s.logger.Warn("the leading replica is gone (its lease not kept alive, its API refuses connections): ended its lead without waiting for its lease", "leader", leader, "silent", silent.Round(time.Millisecond))
		}
	}
}

// leaseWatch is what a follower saw of the leader's lease: its time to
// live at the last look, and when it last went up (a keepalive).
type leaseWatch struct {
	lease clientv3.LeaseID
	ttl   int64
	kept  time.Time
}

// saw records a look at lease's time to live (ttl of granted seconds) and
// returns how long no keepalive has been seen.
func (w *leaseWatch) saw(lease clientv3.LeaseID, ttl, granted int64, now time.Time) time.Duration {
	switch {
	case w.lease != lease:
		*w = leaseWatch{lease: lease, kept: now} // another leader: from now
	case ttl > w.ttl && ttl <= granted:
		w.kept = now
	}
	w.ttl = ttl
	return now.Sub(w.kept)
}

// leaderGone reports whether the current leader (not self) missed a
// keepalive of its lease and its API refuses connections,
// with its name, lease and how long it has been silent at least.
func (s *Server) leaderGone(ctx context.Context, self string, w *leaseWatch) (gone bool, leader string, lease clientv3.LeaseID, silent time.Duration) {
	gctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := s.cli.Get(gctx, store.ElectionPrefix+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return false, "", 0, 0
	}
	kv := resp.Kvs[0]
	leader, lease = string(kv.Value), clientv3.LeaseID(kv.Lease)
	if lease == 0 {
		return false, leader, 0, 0
	}
	if leader == self {
		// This replica's name on another session's lease: its previous
		// process, killed and restarted on the same name (and port, so
		// the check below would reach this one). Ours campaigns behind it.
		own := clientv3.LeaseID(s.electionLease.Load())
		return own != 0 && own != lease, leader, lease, 0
	}
	ttl, err := s.cli.TimeToLive(gctx, lease)
	if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL <= 0 {
		return false, leader, 0, 0 // gone already, or etcd away
	}
	silent = w.saw(lease, ttl.TTL, ttl.GrantedTTL, time.Now())
	if silent <= time.Duration(ttl.GrantedTTL)*time.Second/3+leaderSilentMargin {
		return false, leader, 0, silent
	}
	rec, err := s.store.Server(gctx, leader)
	if err != nil || rec == nil || rec.APIAddress == "" {
		return false, leader, 0, silent
	}
	conn, err := net.DialTimeout("tcp", rec.APIAddress, 500*time.Millisecond)
	if err == nil {
		conn.Close()
		return false, leader, 0, silent
	}
	return errors.Is(err, syscall.ECONNREFUSED), leader, lease, silent
}
