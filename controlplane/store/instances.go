package store

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Instances (desired) and their statuses (observed): the controllers'
// batched compare-and-swap commits.

// VersionedInstance is an instance with the etcd revision it was last
// written at, for compare-and-swap updates.
type VersionedInstance struct {
	Instance    api.Instance
	ModRevision int64
}

// InstanceChange is one write in a batch of instance updates: a create
// (ModRevision 0), an update guarded by ModRevision, or a delete.
type InstanceChange struct {
	Instance    api.Instance
	ModRevision int64 // 0: must not exist yet
	Delete      bool  // encoded caches the instance's JSON once sizing it for a batch
	// measured it (Batches, FitsCommit), so it is encoded once per write.
	encoded string
}

// CommitInstances writes a batch of instance changes in one transaction,
// each guarded by the revision its decision was based on. It returns
// ErrConflict if any instance changed meanwhile: the caller recomputes
// from fresh state, so a stale decision is never applied. Deleting an
// instance also deletes its status.
func (s *Store) CommitInstances(ctx context.Context, changes []InstanceChange) error {
	return s.Commit(ctx, changes, nil)
}

// VolumeChange writes a volume guarded by the revision its decision was
// based on (0: must not exist yet), or deletes it.
type VolumeChange struct {
	Volume      api.Volume
	ModRevision int64
	Delete      bool
}

// Commit writes instance and volume changes in one transaction: a
// placement and the binding of the volumes it mounts go together or not at
// all. ErrConflict if anything changed meanwhile.
func (s *Store) Commit(ctx context.Context, changes []InstanceChange, volumes []VolumeChange) error {
	if len(changes)+len(volumes) == 0 {
		return nil
	}
	cmps := make([]clientv3.Cmp, 0, len(changes)+len(volumes))
	ops := make([]clientv3.Op, 0, len(changes)+len(volumes))
	for _, v := range volumes {
		key := volumeKey(v.Volume.Metadata.Namespace, v.Volume.Metadata.Name)
		if v.ModRevision == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", v.ModRevision))
		}
		if v.Delete {
			ops = append(ops, clientv3.OpDelete(key))
		} else {
			ops = append(ops, clientv3.OpPut(key, mustJSON(v.Volume)))
		}
	}
	for _, c := range changes {
		key := instanceKey(c.Instance.ID)
		if c.ModRevision == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", c.ModRevision))
		}
		if c.Delete {
			ops = append(ops, clientv3.OpDelete(key), clientv3.OpDelete(statusKey(c.Instance.ID)))
		} else {
			ops = append(ops, clientv3.OpPut(key, c.encode()))
		}
	}
	txn, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("store: commit %d instance changes: %w", len(changes), err)
	}
	if !txn.Succeeded {
		return ErrConflict
	}
	s.wrote(txn.Header.Revision)
	return nil
}

// PutStatuses stores agents' observations in one transaction. Statuses of
// instances that no longer exist are dropped, so a late report cannot
// resurrect a deleted instance's status.
func (s *Store) PutStatuses(ctx context.Context, statuses []api.InstanceStatus) error {
	if len(statuses) == 0 {
		return nil
	}
	// One guarded sub-transaction per status: a put only happens while its
	// instance exists. Statuses are independent, so a large report goes in
	// several transactions within etcd's limit.
	for chunk := range slices.Chunk(statuses, MaxOpsPerCommit) {
		ops := make([]clientv3.Op, 0, len(chunk))
		for _, st := range chunk {
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(instanceKey(st.ID)), ">", 0)},
				[]clientv3.Op{clientv3.OpPut(statusKey(st.ID), mustJSON(st))},
				nil))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("store: put %d statuses: %w", len(statuses), err)
		}
	}
	return nil
}

// NewInstanceID returns a fresh instance id: the service name (shortened
// to fit a DNS label) and five random characters.
func NewInstanceID(service string) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	if len(service) > 50 {
		service = strings.TrimRight(service[:50], "-")
	}
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return service + "-" + string(b)
}

// encode is the instance as stored, encoded once.
func (c *InstanceChange) encode() string {
	if c.encoded == "" {
		c.encoded = mustJSON(c.Instance)
	}
	return c.encoded
}
