package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Services and their immutable revisions: apply, undo, delete, history.

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

// rollbackCause says that a service's new revision is an undo to an
// earlier one: the revision's change text starts with text.
type rollbackCause struct {
	text string
	to   int64
	// mod, when set, is the service's etcd revision the change was made
	// from: a service changed since is a conflict, not overwritten.
	mod int64
}

// apply is Apply; causes, by service key, prefix the new revisions' change
// text ("rollback to revision 3").
func (s *Store) apply(ctx context.Context, svcs []api.Service, vols []api.Volume, causes map[string]rollbackCause, secrets ...SecretRecord) ([]ApplyResult, error) {
	var out []ApplyResult
	err := casRetry("apply", func() (bool, error) {
		now := s.now().UTC()
		cmps, ops, results, err := s.applySecrets(ctx, secrets, now)
		if err != nil {
			return false, err
		}
		for _, in := range vols {
			key := volumeKey(in.Metadata.Namespace, in.Metadata.Name)
			resp, err := s.cli.Get(ctx, key)
			if err != nil {
				return false, fmt.Errorf("store: get %s: %w", key, err)
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
					return false, fmt.Errorf("store: decode %s: %w", key, err)
				}
				if old.Status.Deleting {
					return false, fmt.Errorf("volume %s is being deleted: %w", vol.Key(), ErrConflict)
				}
				if in.Spec.Node != "" && old.Status.Node != "" && in.Spec.Node != old.Status.Node {
					return false, fmt.Errorf("volume %s: spec.node %q: its data is on node %q (berth volume release first): %w", vol.Key(), in.Spec.Node, old.Status.Node, ErrInvalid)
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
		claimed := map[[2]string]string{}
		for _, in := range svcs {
			key := serviceKey(in.Metadata.Namespace, in.Metadata.Name)
			resp, err := s.cli.Get(ctx, key)
			if err != nil {
				return false, fmt.Errorf("store: get %s: %w", key, err)
			}
			var old api.Service
			var oldSpec *api.ServiceSpec
			if len(resp.Kvs) > 0 {
				if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
					return false, fmt.Errorf("store: decode %s: %w", key, err)
				}
				oldSpec = &old.Spec
			}
			rc, ro, err := s.routeClaims(ctx, &in, oldSpec, now, claimed)
			if err != nil {
				return false, err
			}
			cmps, ops = append(cmps, rc...), append(ops, ro...)
			svc := in
			res := ApplyResult{Kind: api.KindService, Namespace: in.Metadata.Namespace, Name: in.Metadata.Name}
			if len(resp.Kvs) == 0 {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
				// Revision numbers continue after a delete and re-create,
				// so an old revision is never reused with new content.
				last, err := s.lastRevision(ctx, in.Metadata.Namespace, in.Metadata.Name)
				if err != nil {
					return false, err
				}
				svc.Status = api.ServiceStatus{Revision: last + 1, CreatedAt: now, UpdatedAt: now}
				ops = append(ops, clientv3.OpPut(revisionKey(in.Metadata.Namespace, in.Metadata.Name, last+1), mustJSON(api.Revision{
					Namespace: in.Metadata.Namespace, Service: in.Metadata.Name, Number: last + 1,
					Template: in.Spec.Template(), Hash: TemplateHash(in.Spec), CreatedAt: now, Change: "created",
				})))
				res.Action, res.Revision = "created", last+1
			} else {
				if c, ok := causes[in.Key()]; ok && c.mod != 0 && c.mod != resp.Kvs[0].ModRevision {
					return false, fmt.Errorf("service %s changed meanwhile; try again: %w", in.Key(), ErrConflict)
				}
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision))
				svc.Status = old.Status
				if svc.Spec.RestartedAt.IsZero() {
					// Server-set: an apply that leaves it out keeps it.
					svc.Spec.RestartedAt = old.Spec.RestartedAt
				}
				in.Spec.RestartedAt = svc.Spec.RestartedAt
				switch {
				case TemplateHash(old.Spec) != TemplateHash(in.Spec):
					// After the last revision, not the current one: a rollback
					// may have made an older revision current again.
					last, err := s.lastRevision(ctx, in.Metadata.Namespace, in.Metadata.Name)
					if err != nil {
						return false, err
					}
					svc.Status.Revision = max(last, old.Status.Revision) + 1
					svc.Status.RollbackTo = 0
					change := DescribeChange(old.Spec.Template(), in.Spec.Template())
					if c, ok := causes[in.Key()]; ok {
						change = c.text + ": " + change
						svc.Status.RollbackTo = c.to
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
			out = results
			return true, nil
		}
		txn, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			return false, fmt.Errorf("%w: applying %d objects takes %d etcd operations in one transaction, more than etcd allows (its --max-txn-ops; the embedded etcd allows %d); apply them in smaller groups",
				ErrTooLarge, len(svcs)+len(vols)+len(secrets), len(cmps)+len(ops), EmbeddedMaxTxnOps)
		}
		if err != nil {
			return false, fmt.Errorf("store: apply: %w", err)
		}
		if txn.Succeeded {
			for i := range results {
				if results[i].Action != "unchanged" {
					results[i].Written = txn.Header.Revision
				}
			}
			out = results
		}
		return txn.Succeeded, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// lastRevision is the highest revision number the service ever had: its
// last kept revision, or the number recorded when it was deleted with its
// history.
func (s *Store) lastRevision(ctx context.Context, ns, name string) (int64, error) {
	prefix := fmt.Sprintf("%s%s/%s/", RevisionsPrefix, ns, name)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithLastKey()...)
	if err != nil {
		return 0, fmt.Errorf("store: last revision of %s/%s: %w", ns, name, err)
	}
	var last int64
	if len(resp.Kvs) > 0 {
		var r api.Revision
		if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
			return 0, fmt.Errorf("store: decode %s: %w", resp.Kvs[0].Key, err)
		}
		last = r.Number
	}
	tomb, err := s.cli.Get(ctx, lastRevisionKey(ns, name))
	if err != nil {
		return 0, fmt.Errorf("store: last revision of %s/%s: %w", ns, name, err)
	}
	if len(tomb.Kvs) > 0 {
		n, err := strconv.ParseInt(string(tomb.Kvs[0].Value), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("store: decode %s: %w", tomb.Kvs[0].Key, err)
		}
		last = max(last, n)
	}
	return last, nil
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
func (s *Store) DeleteService(ctx context.Context, ns, name string, keepHistory bool) error {
	key := serviceKey(ns, name)
	return casRetry("delete service "+ns+"/"+name, func() (bool, error) {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return false, fmt.Errorf("store: get %s: %w", key, err)
		}
		if len(resp.Kvs) == 0 {
			return false, fmt.Errorf("service %s/%s: %w", ns, name, ErrNotFound)
		}
		var svc api.Service
		if err := json.Unmarshal(resp.Kvs[0].Value, &svc); err != nil {
			return false, fmt.Errorf("store: decode %s: %w", key, err)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)}
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		for _, hp := range routeOf(&svc.Spec) {
			c, o, err := s.releaseClaim(ctx, svc.Key(), hp)
			if err != nil {
				return false, err
			}
			cmps, ops = append(cmps, c...), append(ops, o...)
		}
		if !keepHistory {
			// Its revisions and rollout go with it; the number it reached
			// stays, so a re-created service never reuses one.
			last, err := s.lastRevision(ctx, ns, name)
			if err != nil {
				return false, err
			}
			ops = append(ops,
				clientv3.OpDelete(fmt.Sprintf("%s%s/%s/", RevisionsPrefix, ns, name), clientv3.WithPrefix()),
				clientv3.OpDelete(rolloutKey(ns, name)),
				clientv3.OpPut(lastRevisionKey(ns, name), strconv.FormatInt(max(last, svc.Status.Revision), 10)))
		}
		txn, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("store: delete service %s/%s: %w", ns, name, err)
		}
		return txn.Succeeded, nil
	})
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
	if mustJSON(a.Liveness) != mustJSON(b.Liveness) {
		parts = append(parts, "liveness")
	}
	if !a.RestartedAt.Equal(b.RestartedAt) {
		parts = append(parts, "restart")
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
	// The template goes back; what is not template (replicas, route, the
	// rollout policy) stays the service's.
	replicas, route, rollout, selector := svc.Spec.Replicas, svc.Spec.Route, svc.Spec.Rollout, svc.Spec.NodeSelector
	next.Spec = target.Template
	next.Spec.Replicas, next.Spec.Route, next.Spec.Rollout = replicas, route, rollout
	if next.Spec.NodeSelector == nil {
		next.Spec.NodeSelector = selector
	}
	res, err := s.apply(ctx, []api.Service{next}, nil, map[string]rollbackCause{svc.Key(): {text: fmt.Sprintf("rollback to revision %d", target.Number), to: target.Number}})
	if err != nil {
		return nil, err
	}
	return &res[0], nil
}

// getServiceMod reads a service and the etcd revision it was last
// written at.
func (s *Store) getServiceMod(ctx context.Context, ns, name string) (*api.Service, int64, error) {
	resp, err := s.cli.Get(ctx, serviceKey(ns, name))
	if err != nil {
		return nil, 0, fmt.Errorf("store: get service %s/%s: %w", ns, name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("service %s/%s: %w", ns, name, ErrNotFound)
	}
	var svc api.Service
	if err := json.Unmarshal(resp.Kvs[0].Value, &svc); err != nil {
		return nil, 0, fmt.Errorf("store: decode service %s/%s: %w", ns, name, err)
	}
	return &svc, resp.Kvs[0].ModRevision, nil
}

// Scale sets a service's replicas and changes nothing else.
func (s *Store) Scale(ctx context.Context, ns, name string, replicas int32) (*ApplyResult, error) {
	return s.change(ctx, ns, name, func(spec *api.ServiceSpec) { spec.Replicas = &replicas }, rollbackCause{})
}

// Restart makes a new revision of a service's template (RestartedAt set
// to now), so every replica is replaced; it rolls out like an undo to a
// known-good revision, without canary steps.
func (s *Store) Restart(ctx context.Context, ns, name string) (*ApplyResult, error) {
	now := s.now().UTC()
	return s.change(ctx, ns, name, func(spec *api.ServiceSpec) { spec.RestartedAt = now }, rollbackCause{text: "rollout restart"})
}

// change applies edit to the stored service, refusing it if the service
// changed meanwhile (a conflict, not an overwrite). cause, when it has a
// text, marks the new revision (its to is the current revision).
func (s *Store) change(ctx context.Context, ns, name string, edit func(*api.ServiceSpec), cause rollbackCause) (*ApplyResult, error) {
	svc, mod, err := s.getServiceMod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	next := *svc
	edit(&next.Spec)
	cause.mod = mod
	if cause.text != "" {
		cause.to = svc.Status.Revision
	}
	res, err := s.apply(ctx, []api.Service{next}, nil, map[string]rollbackCause{svc.Key(): cause})
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
