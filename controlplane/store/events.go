package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

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

// RecordEvents stores events on one lease, up to MaxOpsPerCommit per
// transaction: a controller pass that creates a hundred instances writes
// their events in one go, not a lease and a put each.
func (s *Store) RecordEvents(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	lease, err := s.cli.Grant(ctx, int64(EventTTL/time.Second))
	if err != nil {
		return fmt.Errorf("store: record events: %w", err)
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
			ops = append(ops, clientv3.OpPut(key, mustJSON(ev), clientv3.WithLease(lease.ID)))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("store: record %d events: %w", len(evs), err)
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
