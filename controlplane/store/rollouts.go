package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// VersionedRollout is a rollout with its etcd mod revision.
type VersionedRollout struct {
	Rollout     api.Rollout
	ModRevision int64
}

// PutRollout writes a rollout guarded by the revision its decision was based
// on (0: must not exist yet). It returns the etcd revision of the write, the
// first discovery snapshot version that carries it.
func (s *Store) PutRollout(ctx context.Context, r api.Rollout, modRevision int64) (int64, error) {
	key := rolloutKey(r.Namespace, r.Service)
	r.UpdatedAt = s.now().UTC()
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", modRevision)
	if modRevision == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	txn, err := s.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, mustJSON(r))).Commit()
	if err != nil {
		return 0, fmt.Errorf("store: put rollout %s/%s: %w", r.Namespace, r.Service, err)
	}
	if !txn.Succeeded {
		return 0, ErrConflict
	}
	s.wrote(txn.Header.Revision)
	return txn.Header.Revision, nil
}

// UpdateRollout applies change to a service's rollout with
// compare-and-swap, retrying on conflicts; change's error stops it.
func (s *Store) UpdateRollout(ctx context.Context, ns, name string, change func(r *api.Rollout) error) (*api.Rollout, error) {
	var r api.Rollout
	err := casRetry("update rollout "+ns+"/"+name, func() (bool, error) {
		vr, err := s.GetRollout(ctx, ns, name)
		if err != nil {
			return false, err
		}
		r = vr.Rollout
		if err := change(&r); err != nil {
			return false, err
		}
		if _, err := s.PutRollout(ctx, r, vr.ModRevision); errors.Is(err, ErrConflict) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// GetRollout reads a service's rollout (ErrNotFound if it never had one).
func (s *Store) GetRollout(ctx context.Context, ns, name string) (*VersionedRollout, error) {
	resp, err := s.cli.Get(ctx, rolloutKey(ns, name))
	if err != nil {
		return nil, fmt.Errorf("store: get rollout %s/%s: %w", ns, name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("rollout of %s/%s: %w", ns, name, ErrNotFound)
	}
	var r api.Rollout
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, fmt.Errorf("store: decode rollout %s/%s: %w", ns, name, err)
	}
	return &VersionedRollout{Rollout: r, ModRevision: resp.Kvs[0].ModRevision}, nil
}

// RollBack makes the stable revision current again, in one transaction
// with the rollout's new state: the service's template becomes the stable
// revision's (replicas, route and rollout settings stay), so the canary's
// replicas drain and nothing new is created from the failed template.
func (s *Store) RollBack(ctx context.Context, r api.Rollout, rolloutModRev int64) error {
	svcKey := serviceKey(r.Namespace, r.Service)
	resp, err := s.cli.Get(ctx, svcKey)
	if err != nil {
		return fmt.Errorf("store: roll back %s/%s: %w", r.Namespace, r.Service, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("service %s/%s: %w", r.Namespace, r.Service, ErrNotFound)
	}
	var svc api.Service
	if err := json.Unmarshal(resp.Kvs[0].Value, &svc); err != nil {
		return fmt.Errorf("store: decode service %s/%s: %w", r.Namespace, r.Service, err)
	}
	rev, err := s.cli.Get(ctx, revisionKey(r.Namespace, r.Service, r.Stable))
	if err != nil || len(rev.Kvs) == 0 {
		return fmt.Errorf("store: roll back %s/%s: stable revision %d not found: %w", r.Namespace, r.Service, r.Stable, ErrNotFound)
	}
	var stable api.Revision
	if err := json.Unmarshal(rev.Kvs[0].Value, &stable); err != nil {
		return fmt.Errorf("store: decode revision %d: %w", r.Stable, err)
	}
	replicas, route, rollout := svc.Spec.Replicas, svc.Spec.Route, svc.Spec.Rollout
	svc.Spec = stable.Template
	svc.Spec.Replicas, svc.Spec.Route, svc.Spec.Rollout = replicas, route, rollout
	svc.Status.Revision = r.Stable
	svc.Status.UpdatedAt = s.now().UTC()
	r.UpdatedAt = s.now().UTC()
	rkey := rolloutKey(r.Namespace, r.Service)
	ops := []clientv3.Op{clientv3.OpPut(svcKey, mustJSON(svc)), clientv3.OpPut(rkey, mustJSON(r))}
	// Mark the revision that failed, so a later undo does not pick it.
	if failed, err := s.cli.Get(ctx, revisionKey(r.Namespace, r.Service, r.Revision)); err == nil && len(failed.Kvs) > 0 {
		var fr api.Revision
		if json.Unmarshal(failed.Kvs[0].Value, &fr) == nil {
			fr.RolledBack = r.Message
			ops = append(ops, clientv3.OpPut(revisionKey(r.Namespace, r.Service, r.Revision), mustJSON(fr)))
		}
	}
	txn, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(svcKey), "=", resp.Kvs[0].ModRevision),
		clientv3.Compare(clientv3.ModRevision(rkey), "=", rolloutModRev),
	).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("store: roll back %s/%s: %w", r.Namespace, r.Service, err)
	}
	if !txn.Succeeded {
		return ErrConflict
	}
	s.wrote(txn.Header.Revision)
	return nil
}
