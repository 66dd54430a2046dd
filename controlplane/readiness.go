package controlplane

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// readyKey is read, count only, to prove etcd serves linearizable reads
// (they need a leader and a quorum); it need not exist.
const readyKey = "/berth/readyz"

// CheckReady reports whether this replica can serve: its etcd has a
// leader and answers a linearizable read (a quorum), and its cache has
// loaded the state and follows it. The metrics port's /readyz asks it.
func (s *Server) CheckReady(ctx context.Context) error {
	select {
	case <-s.cache.Ready():
	default:
		return errors.New("cache not synced with etcd yet")
	}
	if s.etcd != nil && s.etcd.etcd.Server.Leader() == 0 {
		return errors.New("embedded etcd member has no leader (no quorum)")
	}
	if _, err := s.cli.Get(ctx, readyKey, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd linearizable read: %w", err)
	}
	return nil
}
