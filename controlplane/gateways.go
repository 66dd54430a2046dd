package controlplane

import (
	"context"
	"encoding/json"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// gatewayReportEvery is how often a replica looks at its xDS clients'
// state when nothing woke it (a client turning STALE is a matter of time,
// not of an event); etcd is written only on a change.
const gatewayReportEvery = time.Second

// AdvertiseAddr is the API address the other replicas reach this one at:
// Config.AdvertiseAddr, else the address the API listens on.
func (s *Server) AdvertiseAddr() string {
	if s.cfg.AdvertiseAddr != "" {
		return s.cfg.AdvertiseAddr
	}
	return s.APIAddr()
}

// ReplicaName identifies this replica in the election and in etcd.
func (s *Server) ReplicaName() string { return s.replicaName() }

// Etcd is the replica's etcd client, for what shares state with the other
// replicas beside the store (load reports). It closes when Run returns.
func (s *Server) Etcd() *clientv3.Client { return s.cli }

func (s *Server) replicaName() string {
	if s.cfg.Name != "" || s.cfg.EtcdPeerAddr != "" {
		return s.memberName() // one name for the replica and its etcd member
	}
	return s.APIAddr()
}

// replicaSession keeps this replica present in etcd under a lease of its
// own, for as long as it lives:
//   - its xDS clients, so the leader (whichever replica it is) waits for
//     every gateway of the cluster before a rollout step or a drain goes
//     on, and `berth get gateways` lists them all. It writes when a client
//     connects, leaves, or changes version or state.
func (s *Server) replicaSession(ctx context.Context) error {
	name := s.replicaName()
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := s.store.DeleteGateways(dctx, name); err != nil {
			s.logger.Debug("remove this replica's gateways", "err", err)
		}
		_ = s.store.DeleteServer(dctx, name)
	}()
	started := time.Now()
	for ctx.Err() == nil {
		sess, ok := s.newSession(ctx, "replica session")
		if !ok {
			return nil
		}
		s.api.SetReplica(s.AdvertiseAddr())
		done := make(chan struct{})
		go func() { defer close(done); s.reportServer(ctx, sess, started) }()
		s.reportWithSession(ctx, sess, name)
		sess.Close()
		<-done
	}
	return nil
}

// newSession opens an etcd session on a lease of ElectionTTL, retrying
// every second until ctx ends (ok false then).
func (s *Server) newSession(ctx context.Context, what string) (*concurrency.Session, bool) {
	ttl := max(1, int((s.cfg.ElectionTTL+time.Second-1)/time.Second))
	for {
		sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		if err == nil {
			return sess, true
		}
		s.logger.Warn(what+": no etcd session, retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(time.Second):
		}
	}
}

// reportWithSession writes on every change until the session or ctx ends.
func (s *Server) reportWithSession(ctx context.Context, sess *concurrency.Session, name string) {
	t := time.NewTicker(gatewayReportEvery)
	defer t.Stop()
	last := ""
	for {
		var list []api.GatewayStatus
		var woken <-chan struct{}
		if s.cfg.GatewaysChanged != nil {
			woken = s.cfg.GatewaysChanged() // before the read: no change is missed
		}
		if s.cfg.Gateways != nil {
			list = s.cfg.Gateways()
		}
		body, _ := json.Marshal(list) // Lag is not in it
		if s.cfg.Gateways != nil && string(body) != last {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := s.store.PutGateways(wctx, name, sess.Lease(), list)
			cancel()
			if err == nil {
				last = string(body)
			} else if ctx.Err() == nil {
				s.logger.Warn("gateway report failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
			s.logger.Warn("gateway report: etcd session expired, starting a new one")
			return
		case <-t.C:
		case <-woken:
		}
	}
}
