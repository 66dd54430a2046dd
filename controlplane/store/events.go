package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Events a user reads with `berth events` and describe, on a lease.

// Event is something a user can read with `berth describe` or `berth
// events`.
type Event struct {
	At        time.Time `json:"at"`
	Namespace string    `json:"namespace,omitempty"`
	Object    string    `json:"object"`
	Reason    string    `json:"reason"`
	Message   string    `json:"message"`
	Type      string    `json:"type"` // Normal or Warning
}

// EventTTL is how long events are kept.
const EventTTL = time.Hour

// RecordEvent stores an event on a lease, so old events expire on their own.
func (s *Store) RecordEvent(ctx context.Context, ev Event) error {
	return s.RecordEvents(ctx, []Event{ev})
}

// eventLeaseReuse is how long one lease takes new events: an event lives
// between EventTTL and EventTTL plus this.
const eventLeaseReuse = time.Minute

// eventLease is the lease events are written on, granted anew every
// eventLeaseReuse rather than per write (a grant is a write to etcd of its
// own: it doubled the cost of every event).
type eventLease struct {
	mu sync.Mutex
	id clientv3.LeaseID
	at time.Time
}

func (s *Store) eventLeaseID(ctx context.Context, fresh bool) (clientv3.LeaseID, error) {
	l := s.events
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := s.now(); fresh || l.id == 0 || now.Sub(l.at) >= eventLeaseReuse || now.Before(l.at) {
		lease, err := s.cli.Grant(ctx, int64((EventTTL+eventLeaseReuse)/time.Second))
		if err != nil {
			return 0, err
		}
		l.id, l.at = lease.ID, now
	}
	return l.id, nil
}

// RecordEvents stores events on a shared lease, up to MaxOpsPerCommit per
// transaction: a controller pass that creates a hundred instances writes
// their events in one go, not a lease and a put each.
func (s *Store) RecordEvents(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	err := s.recordEvents(ctx, evs, false)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// The lease is gone (etcd restored, or revoked by hand): a new one.
		err = s.recordEvents(ctx, evs, true)
	}
	if err != nil {
		return fmt.Errorf("store: record %d events: %w", len(evs), err)
	}
	return nil
}

func (s *Store) recordEvents(ctx context.Context, evs []Event, freshLease bool) error {
	lease, err := s.eventLeaseID(ctx, freshLease)
	if err != nil {
		return err
	}
	for chunk := range slices.Chunk(evs, MaxOpsPerCommit) {
		ops := make([]clientv3.Op, 0, len(chunk))
		for _, ev := range chunk {
			if ev.At.IsZero() {
				ev.At = s.now().UTC()
			}
			if ev.Type == "" {
				ev.Type = "Normal"
			}
			key := eventKey(ev.At, s.seq.Add(1))
			ops = append(ops, clientv3.OpPut(key, mustJSON(ev), clientv3.WithLease(lease)))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) eventsCutoffKey() string {
	return eventKeyBefore(s.now().Add(-EventTTL))
}

// PruneEvents deletes events older than EventTTL. Their leases normally
// do it, but etcd renews every lease when it restarts, so a data dir that
// restarts often would keep events for ever.
func (s *Store) PruneEvents(ctx context.Context) (int64, error) {
	resp, err := s.cli.Delete(ctx, EventsPrefix, clientv3.WithRange(s.eventsCutoffKey()))
	if err != nil {
		return 0, fmt.Errorf("store: prune events: %w", err)
	}
	return resp.Deleted, nil
}

// ListEvents returns events for an object prefix (empty: all), oldest
// first, at most limit (0: all).
func (s *Store) ListEvents(ctx context.Context, ns, objectPrefix string, limit int) ([]Event, error) {
	// Keys sort by time: read from an hour ago. (An etcd restart renews
	// leases, so older events may still be stored until PruneEvents.)
	resp, err := s.cli.Get(ctx, s.eventsCutoffKey(), clientv3.WithRange(clientv3.GetPrefixRangeEnd(EventsPrefix)))
	if err != nil {
		return nil, fmt.Errorf("store: list events: %w", err)
	}
	var out []Event
	for _, kv := range resp.Kvs {
		var ev Event
		if err := json.Unmarshal(kv.Value, &ev); err != nil {
			continue
		}
		if ns != "" && ev.Namespace != ns && ev.Namespace != "" {
			continue
		}
		if objectPrefix != "" && !strings.HasPrefix(ev.Object, objectPrefix) {
			continue
		}
		out = append(out, ev)
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}
