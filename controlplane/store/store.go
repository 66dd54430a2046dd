// Package store is Berth's typed view of etcd: it owns the key layout under
// /berth/ and every read-modify-write transaction on it. Callers get and
// give api types; nothing outside this package builds an etcd key. It must
// not make decisions (scheduling, draining): it only stores them
// atomically.
//
// Keys:
//
//	/berth/services/<ns>/<name>          api.Service
//	/berth/revisions/<ns>/<name>/<n>     api.Revision (immutable)
//	/berth/instances/<id>                api.Instance (desired)
//	/berth/status/<id>                   api.InstanceStatus (observed)
//	/berth/nodes/<name>                  api.Node
//	/berth/leases/nodes/<name>           heartbeat key on an etcd lease
//	/berth/subnets/<cidr>                the node holding a pod subnet
//	/berth/volumes/<ns>/<name>           api.Volume (status.node: where its data is)
//	/berth/images/<digest>               Image (uploaded tarballs)
//	/berth/events/<unixnano>-<seq>       Event, on a one-hour lease
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Key prefixes.
const (
	Root            = "/berth/"
	ServicesPrefix  = "/berth/services/"
	RevisionsPrefix = "/berth/revisions/"
	InstancesPrefix = "/berth/instances/"
	StatusPrefix    = "/berth/status/"
	NodesPrefix     = "/berth/nodes/"
	LeasesPrefix    = "/berth/leases/nodes/"
	ImagesPrefix    = "/berth/images/"
	// ImageRefsPrefix maps each image reference (tag) to the digest of
	// the upload it names: one upload per tag.
	ImageRefsPrefix = "/berth/image-refs/"
	EventsPrefix    = "/berth/events/"
	ElectionsPrefix = "/berth/election/"
	// SubnetsPrefix records which node holds each pod subnet.
	SubnetsPrefix = "/berth/subnets/"
	VolumesPrefix = "/berth/volumes/"
	// GatewaysPrefix holds, per control plane replica, the xDS clients
	// connected to it (under the replica's lease).
	GatewaysPrefix = "/berth/gateways/"
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
}

// New returns a store on an etcd client.
func New(cli *clientv3.Client) *Store {
	return &Store{cli: cli, now: time.Now, seq: new(atomic.Uint64)}
}

// Tracked returns a store on the same client that remembers the revision
// of its own newest write (Written), so its user can wait until a cached
// view shows what it wrote before deciding again: the controllers would
// otherwise create a service's replicas twice from a view older than
// their own last commit.
func (s *Store) Tracked() *Store {
	return &Store{cli: s.cli, now: s.now, seq: s.seq, written: new(atomic.Int64)}
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

func serviceKey(ns, name string) string { return ServicesPrefix + ns + "/" + name }
func revisionKey(ns, name string, n int64) string {
	return fmt.Sprintf("%s%s/%s/%010d", RevisionsPrefix, ns, name, n)
}
func instanceKey(id string) string { return InstancesPrefix + id }
func statusKey(id string) string   { return StatusPrefix + id }
func volumeKey(ns, name string) string {
	return VolumesPrefix + ns + "/" + name
}
func nodeKey(name string) string  { return NodesPrefix + name }
func leaseKey(name string) string { return LeasesPrefix + name }

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("store: marshal %T: %v", v, err))
	}
	return string(b)
}

// TemplateHash identifies a revision's template.
func TemplateHash(spec api.ServiceSpec) string {
	sum := sha256.Sum256([]byte(mustJSON(spec.Template())))
	return hex.EncodeToString(sum[:8])
}

// ApplyResult says what Apply did to one service.
type ApplyResult struct {
	Kind            string
	Namespace, Name string
	Action          string // created, configured, scaled, unchanged
	Revision        int64
	// Written is the etcd revision of the transaction that wrote it (0:
	// nothing written).
	Written int64
}

// Apply creates or updates services, volumes and (sealed) secrets in one
// transaction: each service whose template changed gets a new immutable
// revision. Either every object is written or none is.
func (s *Store) Apply(ctx context.Context, svcs []api.Service, vols []api.Volume, secrets ...SecretRecord) ([]ApplyResult, error) {
	return s.apply(ctx, svcs, vols, nil, secrets...)
}

// apply is Apply; causes, by service key, prefix the new revisions' change
// text ("rollback to revision 3").
func (s *Store) apply(ctx context.Context, svcs []api.Service, vols []api.Volume, causes map[string]string, secrets ...SecretRecord) ([]ApplyResult, error) {
	for attempt := 0; attempt < maxRetries; attempt++ {
		now := s.now().UTC()
		cmps, ops, results, err := s.applySecrets(ctx, secrets, now)
		if err != nil {
			return nil, err
		}
		for _, in := range vols {
			key := volumeKey(in.Metadata.Namespace, in.Metadata.Name)
			resp, err := s.cli.Get(ctx, key)
			if err != nil {
				return nil, fmt.Errorf("store: get %s: %w", key, err)
			}
			vol := in
			res := ApplyResult{Kind: api.KindVolume, Namespace: in.Metadata.Namespace, Name: in.Metadata.Name}
			if len(resp.Kvs) == 0 {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
				vol.Status = api.VolumeStatus{CreatedAt: now}
				res.Action = "created"
			} else {
				var old api.Volume
				if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
					return nil, fmt.Errorf("store: decode %s: %w", key, err)
				}
				if old.Status.Deleting {
					return nil, fmt.Errorf("volume %s is being deleted: %w", vol.Key(), ErrConflict)
				}
				if in.Spec.Node != "" && old.Status.Node != "" && in.Spec.Node != old.Status.Node {
					return nil, fmt.Errorf("volume %s: spec.node %q: its data is on node %q (berth volume release first): %w", vol.Key(), in.Spec.Node, old.Status.Node, ErrInvalid)
				}
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision))
				vol.Status = old.Status
				res.Action = "unchanged"
				if mustJSON(old.Spec) != mustJSON(in.Spec) || mustJSON(old.Metadata) != mustJSON(in.Metadata) {
					res.Action = "configured"
				}
			}
			if res.Action != "unchanged" {
				ops = append(ops, clientv3.OpPut(key, mustJSON(vol)))
			}
			results = append(results, res)
		}
		for _, in := range svcs {
			key := serviceKey(in.Metadata.Namespace, in.Metadata.Name)
			resp, err := s.cli.Get(ctx, key)
			if err != nil {
				return nil, fmt.Errorf("store: get %s: %w", key, err)
			}
			svc := in
			res := ApplyResult{Kind: api.KindService, Namespace: in.Metadata.Namespace, Name: in.Metadata.Name}
			if len(resp.Kvs) == 0 {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
				// Revision numbers continue after a delete and re-create,
				// so an old revision is never reused with new content.
				last, err := s.lastRevision(ctx, in.Metadata.Namespace, in.Metadata.Name)
				if err != nil {
					return nil, err
				}
				svc.Status = api.ServiceStatus{Revision: last + 1, CreatedAt: now, UpdatedAt: now}
				ops = append(ops, clientv3.OpPut(revisionKey(in.Metadata.Namespace, in.Metadata.Name, last+1), mustJSON(api.Revision{
					Namespace: in.Metadata.Namespace, Service: in.Metadata.Name, Number: last + 1,
					Template: in.Spec.Template(), Hash: TemplateHash(in.Spec), CreatedAt: now, Change: "created",
				})))
				res.Action, res.Revision = "created", last+1
			} else {
				var old api.Service
				if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
					return nil, fmt.Errorf("store: decode %s: %w", key, err)
				}
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision))
				svc.Status = old.Status
				switch {
				case TemplateHash(old.Spec) != TemplateHash(in.Spec):
					// After the last revision, not the current one: a rollback
					// may have made an older revision current again.
					last, err := s.lastRevision(ctx, in.Metadata.Namespace, in.Metadata.Name)
					if err != nil {
						return nil, err
					}
					svc.Status.Revision = max(last, old.Status.Revision) + 1
					change := DescribeChange(old.Spec.Template(), in.Spec.Template())
					if c, ok := causes[in.Key()]; ok {
						change = c + ": " + change
					}
					ops = append(ops, clientv3.OpPut(revisionKey(in.Metadata.Namespace, in.Metadata.Name, svc.Status.Revision), mustJSON(api.Revision{
						Namespace: in.Metadata.Namespace, Service: in.Metadata.Name, Number: svc.Status.Revision,
						Template: in.Spec.Template(), Hash: TemplateHash(in.Spec), CreatedAt: now, Change: change,
					})))
					res.Action = "configured"
				case mustJSON(old.Spec) != mustJSON(in.Spec) || mustJSON(old.Metadata) != mustJSON(in.Metadata):
					res.Action = "scaled"
				default:
					res.Action = "unchanged"
				}
				if res.Action != "unchanged" {
					svc.Status.UpdatedAt = now
				}
				res.Revision = svc.Status.Revision
			}
			if res.Action != "unchanged" {
				ops = append(ops, clientv3.OpPut(key, mustJSON(svc)))
			}
			results = append(results, res)
		}
		if len(ops) == 0 {
			return results, nil
		}
		txn, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			return nil, fmt.Errorf("%w: applying %d objects takes %d etcd operations in one transaction, more than etcd allows (its --max-txn-ops; the embedded etcd allows %d); apply them in smaller groups",
				ErrTooLarge, len(svcs)+len(vols)+len(secrets), len(cmps)+len(ops), EmbeddedMaxTxnOps)
		}
		if err != nil {
			return nil, fmt.Errorf("store: apply: %w", err)
		}
		if txn.Succeeded {
			for i := range results {
				if results[i].Action != "unchanged" {
					results[i].Written = txn.Header.Revision
				}
			}
			return results, nil
		}
	}
	return nil, fmt.Errorf("store: apply: %w", ErrConflict)
}

func (s *Store) lastRevision(ctx context.Context, ns, name string) (int64, error) {
	prefix := fmt.Sprintf("%s%s/%s/", RevisionsPrefix, ns, name)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithLastKey()...)
	if err != nil {
		return 0, fmt.Errorf("store: last revision of %s/%s: %w", ns, name, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	var r api.Revision
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return 0, fmt.Errorf("store: decode %s: %w", resp.Kvs[0].Key, err)
	}
	return r.Number, nil
}

// GetService reads one service.
func (s *Store) GetService(ctx context.Context, ns, name string) (*api.Service, error) {
	resp, err := s.cli.Get(ctx, serviceKey(ns, name))
	if err != nil {
		return nil, fmt.Errorf("store: get service %s/%s: %w", ns, name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("service %s/%s: %w", ns, name, ErrNotFound)
	}
	var svc api.Service
	if err := json.Unmarshal(resp.Kvs[0].Value, &svc); err != nil {
		return nil, fmt.Errorf("store: decode service %s/%s: %w", ns, name, err)
	}
	return &svc, nil
}

// ListRevisions returns a service's kept revisions, oldest first.
func (s *Store) ListRevisions(ctx context.Context, ns, name string) ([]api.Revision, error) {
	resp, err := s.cli.Get(ctx, fmt.Sprintf("%s%s/%s/", RevisionsPrefix, ns, name), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list revisions of %s/%s: %w", ns, name, err)
	}
	out := make([]api.Revision, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r api.Revision
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// DeleteService deletes a service (its revisions and rollout stay, as
// history). Its instances are the controllers' business: the replica loop
// drains instances whose service is gone.
func (s *Store) DeleteService(ctx context.Context, ns, name string) error {
	resp, err := s.cli.Delete(ctx, serviceKey(ns, name))
	if err != nil {
		return fmt.Errorf("store: delete service %s/%s: %w", ns, name, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("service %s/%s: %w", ns, name, ErrNotFound)
	}
	return nil
}

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
	Delete      bool
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
			ops = append(ops, clientv3.OpPut(key, mustJSON(c.Instance)))
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
	for attempt := 0; attempt < maxRetries; attempt++ {
		resp, err := s.cli.Get(ctx, NodesPrefix, clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("store: list nodes: %w", err)
		}
		used := map[string]bool{}
		var existing *api.Node
		var existingRev int64
		for _, kv := range resp.Kvs {
			var old api.Node
			if err := json.Unmarshal(kv.Value, &old); err != nil {
				return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
			}
			if old.Name == n.Name {
				existing, existingRev = &old, kv.ModRevision
			}
			used[old.PodCIDR] = true
		}
		claimed, err := s.cli.Get(ctx, SubnetsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, fmt.Errorf("store: list subnets: %w", err)
		}
		for _, kv := range claimed.Kvs {
			used[strings.ReplaceAll(strings.TrimPrefix(string(kv.Key), SubnetsPrefix), "_", "/")] = true
		}
		now := s.now().UTC()
		node := n
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
			node.PodCIDR, err = freeSubnet(cluster, subnetBits, used)
			if err != nil {
				return nil, err
			}
			// Claim the subnet in the same transaction: two nodes joining
			// at once can never get the same one.
			sk := SubnetsPrefix + strings.ReplaceAll(node.PodCIDR, "/", "_")
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(sk), "=", 0))
			ops = append(ops, clientv3.OpPut(sk, n.Name))
		}
		ops = append(ops, clientv3.OpPut(nodeKey(n.Name), mustJSON(node)))
		txn, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("store: register node %s: %w", n.Name, err)
		}
		if txn.Succeeded {
			return &node, nil
		}
	}
	return nil, fmt.Errorf("store: register node %s: %w", n.Name, ErrConflict)
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
		ops = append(ops, clientv3.OpDelete(SubnetsPrefix+strings.ReplaceAll(n.PodCIDR, "/", "_")))
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

func freeSubnet(cluster netip.Prefix, bits int, used map[string]bool) (string, error) {
	size := uint64(1) << (32 - bits)
	count := uint64(1) << (bits - cluster.Bits())
	base := cluster.Masked().Addr().As4()
	start := uint64(base[0])<<24 | uint64(base[1])<<16 | uint64(base[2])<<8 | uint64(base[3])
	for i := uint64(0); i < count; i++ {
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
	for attempt := 0; attempt < maxRetries; attempt++ {
		resp, err := s.cli.Get(ctx, nodeKey(name))
		if err != nil {
			return nil, fmt.Errorf("store: get node %s: %w", name, err)
		}
		if len(resp.Kvs) == 0 {
			return nil, fmt.Errorf("node %s: %w", name, ErrNotFound)
		}
		var n api.Node
		if err := json.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
			return nil, fmt.Errorf("store: decode node %s: %w", name, err)
		}
		if !change(&n) {
			return &n, nil
		}
		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(nodeKey(name)), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(nodeKey(name), mustJSON(n))).Commit()
		if err != nil {
			return nil, fmt.Errorf("store: update node %s: %w", name, err)
		}
		if txn.Succeeded {
			s.wrote(txn.Header.Revision)
			return &n, nil
		}
	}
	return nil, fmt.Errorf("store: update node %s: %w", name, ErrConflict)
}

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
			key := fmt.Sprintf("%s%020d-%06d", EventsPrefix, ev.At.UnixNano(), s.seq.Add(1)%1e6)
			ops = append(ops, clientv3.OpPut(key, mustJSON(ev), clientv3.WithLease(lease.ID)))
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("store: record %d events: %w", len(evs), err)
		}
	}
	return nil
}

func (s *Store) eventsCutoffKey() string {
	return fmt.Sprintf("%s%020d", EventsPrefix, s.now().Add(-EventTTL).UnixNano())
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

// DescribeChange says in a few words how template b differs from a.
func DescribeChange(a, b api.ServiceSpec) string {
	var parts []string
	switch {
	case a.Image != b.Image:
		parts = append(parts, fmt.Sprintf("image %s -> %s", a.Image, b.Image))
	case a.ImageDigest != b.ImageDigest:
		parts = append(parts, fmt.Sprintf("image %s re-pointed: upload %s -> %s", a.Image, orNone(a.ImageDigest), orNone(b.ImageDigest)))
	}
	if mustJSON(a.Env) != mustJSON(b.Env) {
		parts = append(parts, "env")
	}
	if mustJSON(a.Command) != mustJSON(b.Command) || mustJSON(a.Args) != mustJSON(b.Args) {
		parts = append(parts, "command")
	}
	if mustJSON(a.Resources) != mustJSON(b.Resources) {
		parts = append(parts, "resources")
	}
	if mustJSON(a.Ports) != mustJSON(b.Ports) {
		parts = append(parts, "ports")
	}
	if mustJSON(a.Health) != mustJSON(b.Health) {
		parts = append(parts, "health")
	}
	if mustJSON(a.Volumes) != mustJSON(b.Volumes) || mustJSON(a.VolumeTemplates) != mustJSON(b.VolumeTemplates) {
		parts = append(parts, "volumes")
	}
	if mustJSON(a.NodeSelector) != mustJSON(b.NodeSelector) {
		parts = append(parts, "nodeSelector")
	}
	if mustJSON(a.SecurityContext) != mustJSON(b.SecurityContext) {
		parts = append(parts, "securityContext")
	}
	if mustJSON(a.Secrets) != mustJSON(b.Secrets) {
		parts = append(parts, "secrets")
	}
	if len(parts) == 0 {
		return "template"
	}
	return strings.Join(parts, ", ")
}

func orNone(digest string) string {
	if digest == "" {
		return "none"
	}
	return digest
}

// Undo rolls a service back to revision to (0: the revision before the
// current one): its template becomes a new revision, so history only grows
// and every revision stays immutable. Replicas and route are kept.
func (s *Store) Undo(ctx context.Context, ns, name string, to int64) (*ApplyResult, error) {
	svc, err := s.GetService(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	revs, err := s.ListRevisions(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	var target *api.Revision
	for i := len(revs) - 1; i >= 0; i-- {
		r := &revs[i]
		if (to == 0 && r.Number < svc.Status.Revision && r.Hash != TemplateHash(svc.Spec) && r.RolledBack == "") || (to != 0 && r.Number == to) {
			target = r
			break
		}
	}
	if target == nil {
		if to == 0 {
			return nil, fmt.Errorf("service %s/%s has no earlier revision to roll back to (rolled-back revisions are skipped; name one with --to-revision): %w", ns, name, ErrNotFound)
		}
		return nil, fmt.Errorf("revision %d of %s/%s (kept: the last %d): %w", to, ns, name, RetainRevisions, ErrNotFound)
	}
	next := *svc
	replicas, route, selector := svc.Spec.Replicas, svc.Spec.Route, svc.Spec.NodeSelector
	next.Spec = target.Template
	next.Spec.Replicas, next.Spec.Route = replicas, route
	if next.Spec.NodeSelector == nil {
		next.Spec.NodeSelector = selector
	}
	res, err := s.apply(ctx, []api.Service{next}, nil, map[string]string{svc.Key(): fmt.Sprintf("rollback to revision %d", target.Number)})
	if err != nil {
		return nil, err
	}
	return &res[0], nil
}

// RetainRevisions is how many revisions of a service are kept.
const RetainRevisions = 10

// PruneRevisions deletes a service's revisions beyond the newest
// RetainRevisions, except the current one and any an instance still runs.
func (s *Store) PruneRevisions(ctx context.Context, ns, name string, current int64, inUse map[int64]bool) (int, error) {
	revs, err := s.ListRevisions(ctx, ns, name)
	if err != nil || len(revs) <= RetainRevisions {
		return 0, err
	}
	var ops []clientv3.Op
	for _, r := range revs[:len(revs)-RetainRevisions] {
		if r.Number == current || inUse[r.Number] {
			continue
		}
		ops = append(ops, clientv3.OpDelete(revisionKey(ns, name, r.Number)))
	}
	if len(ops) == 0 {
		return 0, nil
	}
	if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return 0, fmt.Errorf("store: prune revisions of %s/%s: %w", ns, name, err)
	}
	return len(ops), nil
}
