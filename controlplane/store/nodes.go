package store

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Nodes: registration with a pod subnet, heartbeats on leases, updates.

// RegisterNode creates or refreshes a node and allocates it a pod subnet
// of size subnetBits from clusterCIDR, once: a node keeps its subnet for
// life and no subnet is handed out twice.
func (s *Store) RegisterNode(ctx context.Context, n api.Node, clusterCIDR string, subnetBits int) (*api.Node, error) {
	cluster, err := netip.ParsePrefix(clusterCIDR)
	if err != nil {
		return nil, fmt.Errorf("store: cluster cidr %q: %w", clusterCIDR, err)
	}
	if subnetBits < cluster.Bits() || subnetBits > 30 {
		return nil, fmt.Errorf("store: node subnet /%d does not fit cluster cidr %s", subnetBits, clusterCIDR)
	}
	var node api.Node
	attempt := -1
	err = casRetry("register node "+n.Name, func() (bool, error) {
		attempt++
		resp, err := s.cli.Get(ctx, NodesPrefix, clientv3.WithPrefix())
		if err != nil {
			return false, fmt.Errorf("store: list nodes: %w", err)
		}
		used := map[string]bool{}
		var existing *api.Node
		var existingRev int64
		for _, kv := range resp.Kvs {
			var old api.Node
			if err := json.Unmarshal(kv.Value, &old); err != nil {
				return false, fmt.Errorf("store: decode %s: %w", kv.Key, err)
			}
			if old.Name == n.Name {
				existing, existingRev = &old, kv.ModRevision
			}
			used[old.PodCIDR] = true
		}
		claimed, err := s.cli.Get(ctx, SubnetsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return false, fmt.Errorf("store: list subnets: %w", err)
		}
		for _, kv := range claimed.Kvs {
			used[strings.ReplaceAll(strings.TrimPrefix(string(kv.Key), SubnetsPrefix), "_", "/")] = true
		}
		now := s.now().UTC()
		node = n
		node.Heartbeat = now
		node.Ready = true
		node.State, node.StateSince = api.NodeReady, now
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(nodeKey(n.Name)), "=", 0)}
		var ops []clientv3.Op
		if existing != nil {
			node.PodCIDR, node.JoinedAt, node.Cordoned, node.Drain = existing.PodCIDR, existing.JoinedAt, existing.Cordoned, existing.Drain
			if existing.State == api.NodeReady {
				node.StateSince = existing.StateSince
			}
			cmps = []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(nodeKey(n.Name)), "=", existingRev)}
		} else {
			node.JoinedAt = now
			var err error
			node.PodCIDR, err = freeSubnet(cluster, subnetBits, used, n.Name, attempt)
			if err != nil {
				return false, err
			}
			// Claim the subnet in the same transaction: two nodes joining
			// at once can never get the same one.
			sk := subnetKey(node.PodCIDR)
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(sk), "=", 0))
			ops = append(ops, clientv3.OpPut(sk, n.Name))
		}
		ops = append(ops, clientv3.OpPut(nodeKey(n.Name), mustJSON(node)))
		txn, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("store: register node %s: %w", n.Name, err)
		}
		return txn.Succeeded, nil
	})
	if err != nil {
		return nil, err
	}
	return &node, nil
}

// DeleteNode deletes a node, its heartbeat key and its pod subnet claim.
func (s *Store) DeleteNode(ctx context.Context, name string) error {
	resp, err := s.cli.Get(ctx, nodeKey(name))
	if err != nil {
		return fmt.Errorf("store: delete node %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	var n api.Node
	if err := json.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
		return fmt.Errorf("store: decode node %s: %w", name, err)
	}
	ops := []clientv3.Op{clientv3.OpDelete(nodeKey(name)), clientv3.OpDelete(leaseKey(name))}
	if n.PodCIDR != "" {
		ops = append(ops, clientv3.OpDelete(subnetKey(n.PodCIDR)))
	}
	txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(nodeKey(name)), "=", resp.Kvs[0].ModRevision)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("store: delete node %s: %w", name, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("store: delete node %s: %w", name, ErrConflict)
	}
	s.wrote(txn.Header.Revision)
	return nil
}

// freeSubnet picks a free node subnet: the first one, or, after a
// conflict (attempt > 0), one scanned from a place the node's name and
// the attempt decide, so that nodes joining together stop all claiming
// the same first free subnet (of which one wins a round).
func freeSubnet(cluster netip.Prefix, bits int, used map[string]bool, name string, attempt int) (string, error) {
	size := uint64(1) << (32 - bits)
	count := uint64(1) << (bits - cluster.Bits())
	base := cluster.Masked().Addr().As4()
	start := uint64(base[0])<<24 | uint64(base[1])<<16 | uint64(base[2])<<8 | uint64(base[3])
	from := uint64(0)
	if attempt > 0 {
		h := fnv.New64a()
		fmt.Fprintf(h, "%s/%d", name, attempt)
		from = h.Sum64() % count
	}
	for j := uint64(0); j < count; j++ {
		i := (from + j) % count
		v := start + i*size
		addr := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		p := netip.PrefixFrom(addr, bits).String()
		if !used[p] {
			return p, nil
		}
	}
	return "", ErrNoSubnet
}

// LeaseValue is what a node's lease key holds: its last heartbeat.
type LeaseValue struct {
	At time.Time `json:"at"`
	// DNSVersion is the discovery snapshot version the node's DNS answers
	// from.
	DNSVersion uint64 `json:"dnsVersion,omitempty"`
}

// ParseLeaseValue decodes a lease key's value; it also reads the bare
// RFC 3339 time that earlier versions wrote.
func ParseLeaseValue(b []byte) (LeaseValue, error) {
	var v LeaseValue
	if err := json.Unmarshal(b, &v); err == nil {
		return v, nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return LeaseValue{}, fmt.Errorf("store: lease value %q is neither JSON nor a time", b)
	}
	return LeaseValue{At: t}, nil
}

// Heartbeat keeps a node's lease key alive, creating the lease when there
// is none, and records the time of the heartbeat and the snapshot version
// its DNS answers from as the key's value. A node whose lease expired is
// NotReady.
func (s *Store) Heartbeat(ctx context.Context, name string, ttl time.Duration, dnsVersion uint64) error {
	now := mustJSON(LeaseValue{At: s.now().UTC(), DNSVersion: dnsVersion})
	resp, err := s.cli.Get(ctx, leaseKey(name))
	if err != nil {
		return fmt.Errorf("store: heartbeat %s: %w", name, err)
	}
	if len(resp.Kvs) > 0 && resp.Kvs[0].Lease != 0 {
		lease := clientv3.LeaseID(resp.Kvs[0].Lease)
		if _, err := s.cli.KeepAliveOnce(ctx, lease); err == nil {
			if _, err := s.cli.Put(ctx, leaseKey(name), now, clientv3.WithLease(lease)); err == nil {
				return nil
			}
		}
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	lease, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return fmt.Errorf("store: heartbeat %s: grant lease: %w", name, err)
	}
	if _, err := s.cli.Put(ctx, leaseKey(name), now, clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("store: heartbeat %s: %w", name, err)
	}
	return nil
}

// UpdateNode applies change to a node with compare-and-swap, retrying on
// conflicts. change returns false to skip the write.
func (s *Store) UpdateNode(ctx context.Context, name string, change func(n *api.Node) bool) (*api.Node, error) {
	var n api.Node
	err := casRetry("update node "+name, func() (bool, error) {
		resp, err := s.cli.Get(ctx, nodeKey(name))
		if err != nil {
			return false, fmt.Errorf("store: get node %s: %w", name, err)
		}
		if len(resp.Kvs) == 0 {
			return false, fmt.Errorf("node %s: %w", name, ErrNotFound)
		}
		n = api.Node{}
		if err := json.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
			return false, fmt.Errorf("store: decode node %s: %w", name, err)
		}
		if !change(&n) {
			return true, nil
		}
		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(nodeKey(name)), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(nodeKey(name), mustJSON(n))).Commit()
		if err != nil {
			return false, fmt.Errorf("store: update node %s: %w", name, err)
		}
		if txn.Succeeded {
			s.wrote(txn.Header.Revision)
		}
		return txn.Succeeded, nil
	})
	if err != nil {
		return nil, err
	}
	return &n, nil
}

// livenessBatch bounds the operations of one liveness transaction (etcd's
// default --max-txn-ops is 128; a release is a nested transaction of a
// compare and a delete).
const livenessBatch = 60

// PutLiveness writes nodes' lease keys on lease, this replica's session
// lease: the node is live for as long as this replica hears it and the
// replica lives. Written only when a node is first heard or its DNS
// version changes, never per heartbeat.
func (s *Store) PutLiveness(ctx context.Context, lease clientv3.LeaseID, vals map[string]LeaseValue) error {
	names := slices.Sorted(maps.Keys(vals))
	for len(names) > 0 {
		n := min(len(names), livenessBatch)
		ops := make([]clientv3.Op, 0, n)
		for _, name := range names[:n] {
			ops = append(ops, clientv3.OpPut(leaseKey(name), mustJSON(vals[name]), clientv3.WithLease(lease)))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("store: liveness of %d nodes: %w", n, err)
		}
		names = names[n:]
	}
	return nil
}

// ReleaseLiveness deletes the lease keys of nodes this replica no longer
// hears, where the key is still on its lease (another replica may hear
// the node now).
func (s *Store) ReleaseLiveness(ctx context.Context, lease clientv3.LeaseID, nodes []string) error {
	for len(nodes) > 0 {
		n := min(len(nodes), livenessBatch)
		ops := make([]clientv3.Op, 0, n)
		for _, name := range nodes[:n] {
			k := leaseKey(name)
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(k), "=", lease)}, []clientv3.Op{clientv3.OpDelete(k)}, nil))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("store: release liveness of %d nodes: %w", n, err)
		}
		nodes = nodes[n:]
	}
	return nil
}

// PutDNSVersions records, on lease (the replica's session), the snapshot
// version the DNS of each node this replica hears answers from: one key
// for all of them.
func (s *Store) PutDNSVersions(ctx context.Context, replica string, lease clientv3.LeaseID, versions map[string]uint64) error {
	if _, err := s.cli.Put(ctx, DNSVersionsPrefix+replica, mustJSON(versions), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("store: DNS versions of replica %s: %w", replica, err)
	}
	return nil
}
