package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ServersPrefix holds one record per control plane replica, on the
// replica's session lease (a replica that dies leaves the list with its
// lease), rewritten every ServerReportEvery. Outside /berth/ so that the
// reports never wake the cache.
const ServersPrefix = "/berth-servers/"

// ServerReportEvery is how often a replica rewrites its record; a record
// older than three of these is stale.
const ServerReportEvery = 5 * time.Second

// ServerRecord is what a replica says about itself and about the etcd
// member it runs (when etcd is embedded): other replicas cannot reach
// that member's client socket, so its health travels here.
type ServerRecord struct {
	Name       string    `json:"name"`
	APIAddress string    `json:"apiAddress"`
	Version    string    `json:"version"`
	StartedAt  time.Time `json:"startedAt"`
	ReportedAt time.Time `json:"reportedAt"`
	Leader     bool      `json:"leader,omitempty"`
	// The embedded member (MemberID 0: an external etcd).
	MemberID   uint64 `json:"memberID,omitempty"`
	EtcdLeader bool   `json:"etcdLeader,omitempty"`
	RaftTerm   uint64 `json:"raftTerm,omitempty"`
	RaftIndex  uint64 `json:"raftIndex,omitempty"`
	DBSize     int64  `json:"dbSize,omitempty"`
	EtcdError  string `json:"etcdError,omitempty"`
}

func serverKey(name string) string { return ServersPrefix + name }

// PutServer writes a replica's record on its lease.
func (s *Store) PutServer(ctx context.Context, lease clientv3.LeaseID, r ServerRecord) error {
	if _, err := s.cli.Put(ctx, serverKey(r.Name), mustJSON(r), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("store: record server %s: %w", r.Name, err)
	}
	return nil
}

// DeleteServer removes a replica's record (a clean shutdown, a removal).
func (s *Store) DeleteServer(ctx context.Context, name string) error {
	if _, err := s.cli.Delete(ctx, serverKey(name)); err != nil {
		return fmt.Errorf("store: remove server %s: %w", name, err)
	}
	return nil
}

// Servers lists the replicas' records, by name (opts: e.g.
// clientv3.WithSerializable, to read this member's copy without quorum).
func (s *Store) Servers(ctx context.Context, opts ...clientv3.OpOption) ([]ServerRecord, error) {
	resp, err := s.cli.Get(ctx, ServersPrefix, append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("store: list servers: %w", err)
	}
	out := make([]ServerRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r ServerRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("store: server record %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Server reads one replica's record (nil: none).
func (s *Store) Server(ctx context.Context, name string) (*ServerRecord, error) {
	resp, err := s.cli.Get(ctx, serverKey(name))
	if err != nil {
		return nil, fmt.Errorf("store: read server %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var r ServerRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, fmt.Errorf("store: server %s: %w", name, err)
	}
	return &r, nil
}
