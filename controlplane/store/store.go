// Package store is Berth's typed view of etcd: it owns the key layout under
// /berth/ and every read-modify-write transaction on it. Callers get and
// give api types; nothing outside this package builds an etcd key. It must
// not make decisions (scheduling, draining): it only stores them
// atomically.
//
// Every key is laid out in keys.go; the rest is split by kind: services
// and revisions, instances and statuses, nodes, events, images, secrets,
// rollouts, gateways, auth, and the watch-fed cache.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxOpsPerCommit bounds the writes the controllers put in one
// transaction: etcd refuses more than 128 operations per transaction by
// default (--max-txn-ops), and a commit over the limit would fail on every
// pass. Work beyond it waits for the next pass.
const MaxOpsPerCommit = 100

// MaxBytesPerCommit bounds the bytes of one transaction the controllers
// write: etcd refuses a request over --max-request-bytes (1.5 MiB by
// default), so 100 replicas of a service with 30 KB of env cannot go in
// one.
const MaxBytesPerCommit = 1 << 20

// EmbeddedMaxTxnOps is the embedded etcd's limit of operations per
// transaction (an apply is one transaction, all or nothing).
const EmbeddedMaxTxnOps = 4096

// Sentinel errors.
var (
	ErrTooLarge = errors.New("too large")
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict: the object changed meanwhile")
	ErrNoSubnet = errors.New("no free pod subnet left in the cluster CIDR")
	ErrInvalid  = errors.New("invalid")
)

// maxRetries bounds optimistic-concurrency retries.
const maxRetries = 20

// Store reads and writes Berth's state in etcd.
type Store struct {
	cli *clientv3.Client
	seq *atomic.Uint64
	now func() time.Time
	// written, on a Tracked store, is the etcd revision of its newest
	// write.
	written *atomic.Int64
	// events is the lease events are written on, shared by every copy.
	events *eventLease
}

// New returns a store on an etcd client.
func New(cli *clientv3.Client) *Store {
	return &Store{cli: cli, now: time.Now, seq: new(atomic.Uint64), events: &eventLease{}}
}

// Tracked returns a store on the same client that remembers the revision
// of its own newest write (Written), so its user can wait until a cached
// view shows what it wrote before deciding again: the controllers would
// otherwise create a service's replicas twice from a view older than
// their own last commit.
func (s *Store) Tracked() *Store {
	return &Store{cli: s.cli, now: s.now, seq: s.seq, written: new(atomic.Int64), events: s.events}
}

// Written is the etcd revision of this Tracked store's newest write (0 if
// none, or not tracked).
func (s *Store) Written() int64 {
	if s.written == nil {
		return 0
	}
	return s.written.Load()
}

func (s *Store) wrote(rev int64) {
	if s.written == nil {
		return
	}
	for {
		cur := s.written.Load()
		if rev <= cur || s.written.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// Client returns the etcd client (for watches).
func (s *Store) Client() *clientv3.Client { return s.cli }

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("store: marshal %T: %v", v, err))
	}
	return string(b)
}

// casRetry runs one optimistic read-modify-write attempt until it commits
// (attempt reports true), fails, or maxRetries attempts found what they
// read changed meanwhile: then ErrConflict, naming what.
func casRetry(what string, attempt func() (committed bool, err error)) error {
	for range maxRetries {
		ok, err := attempt()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("store: %s: %w", what, ErrConflict)
}
