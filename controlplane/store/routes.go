package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RouteClaim records which service owns a route host and path prefix.
type RouteClaim struct {
	Host      string    `json:"host"`
	Path      string    `json:"path"`
	Namespace string    `json:"namespace"`
	Service   string    `json:"service"`
	ClaimedAt time.Time `json:"claimedAt"`
}

// Owner is the owning service's "namespace/name".
func (c RouteClaim) Owner() string { return c.Namespace + "/" + c.Service }

// routeOf lists a spec's route claims as (host, path) pairs: hosts
// lowercased, paths defaulting to "/", each pair once, in order.
func routeOf(spec *api.ServiceSpec) [][2]string {
	r := spec.Route
	if r == nil {
		return nil
	}
	paths := r.Paths
	if len(paths) == 0 {
		paths = []string{"/"}
	}
	var out [][2]string
	for _, h := range r.Hosts {
		host := strings.ToLower(strings.TrimSpace(h))
		if host == "" {
			continue
		}
		for _, p := range paths {
			if pair := [2]string{host, p}; !slices.Contains(out, pair) {
				out = append(out, pair)
			}
		}
	}
	return out
}

// routeClaims adds to a transaction the claims of service in (old is its
// stored spec, nil when new): claims it newly makes must be free
// (compared absent) or already its own; claims it drops are deleted.
// claimed carries the claims of the services earlier in the same apply.
// A route another service owns is ErrInvalid naming the owner.
func (s *Store) routeClaims(ctx context.Context, in *api.Service, old *api.ServiceSpec, now time.Time, claimed map[[2]string]string) ([]clientv3.Cmp, []clientv3.Op, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	key := in.Key()
	want := routeOf(&in.Spec)
	for _, hp := range want {
		if other, ok := claimed[hp]; ok && other != key {
			return nil, nil, fmt.Errorf("service %s: spec.route: host %s path %s is claimed by service %s in the same apply: %w", key, hp[0], hp[1], other, ErrInvalid)
		}
		claimed[hp] = key
		k := routeKey(hp[0], hp[1])
		resp, err := s.cli.Get(ctx, k)
		if err != nil {
			return nil, nil, fmt.Errorf("store: get %s: %w", k, err)
		}
		if len(resp.Kvs) == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			ops = append(ops, clientv3.OpPut(k, mustJSON(RouteClaim{Host: hp[0], Path: hp[1], Namespace: in.Metadata.Namespace, Service: in.Metadata.Name, ClaimedAt: now})))
			continue
		}
		var c RouteClaim
		if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
			return nil, nil, fmt.Errorf("store: decode %s: %w", k, err)
		}
		if c.Owner() != key {
			return nil, nil, fmt.Errorf("service %s: spec.route: host %s path %s is already routed to service %s (claimed %s; the oldest claim wins): %w",
				key, hp[0], hp[1], c.Owner(), c.ClaimedAt.Format(time.RFC3339), ErrInvalid)
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", resp.Kvs[0].ModRevision))
	}
	if old != nil {
		for _, hp := range routeOf(old) {
			if !slices.Contains(want, hp) {
				dc, do, err := s.releaseClaim(ctx, key, hp)
				if err != nil {
					return nil, nil, err
				}
				cmps, ops = append(cmps, dc...), append(ops, do...)
			}
		}
	}
	return cmps, ops, nil
}

// releaseClaim deletes a claim if service key owns it.
func (s *Store) releaseClaim(ctx context.Context, key string, hp [2]string) ([]clientv3.Cmp, []clientv3.Op, error) {
	k := routeKey(hp[0], hp[1])
	resp, err := s.cli.Get(ctx, k)
	if err != nil {
		return nil, nil, fmt.Errorf("store: get %s: %w", k, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil, nil
	}
	var c RouteClaim
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil || c.Owner() != key {
		return nil, nil, nil
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", resp.Kvs[0].ModRevision)}, []clientv3.Op{clientv3.OpDelete(k)}, nil
}

// RouteOwners returns the claims on a spec's route, by (host, path).
func (s *Store) RouteOwners(ctx context.Context, spec *api.ServiceSpec) ([]RouteClaim, error) {
	var out []RouteClaim
	for _, hp := range routeOf(spec) {
		resp, err := s.cli.Get(ctx, routeKey(hp[0], hp[1]))
		if err != nil {
			return nil, fmt.Errorf("store: route owner: %w", err)
		}
		c := RouteClaim{Host: hp[0], Path: hp[1]}
		if len(resp.Kvs) > 0 {
			if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
				return nil, fmt.Errorf("store: decode %s: %w", resp.Kvs[0].Key, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// ClaimExistingRoutes gives the services stored before route claims
// existed their claims, oldest service first (the oldest claim wins). It
// returns the routes that stay with another service, one line each; the
// gateways route them to the owner too (translation orders by age).
func (s *Store) ClaimExistingRoutes(ctx context.Context) ([]string, error) {
	resp, err := s.cli.Get(ctx, ServicesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list services: %w", err)
	}
	var svcs []api.Service
	for _, kv := range resp.Kvs {
		var svc api.Service
		if err := json.Unmarshal(kv.Value, &svc); err != nil {
			return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
		}
		if svc.Spec.Route != nil {
			svcs = append(svcs, svc)
		}
	}
	slices.SortStableFunc(svcs, func(a, b api.Service) int {
		if c := a.Status.CreatedAt.Compare(b.Status.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Key(), b.Key())
	})
	// One read of the claims there are: a restart with every route claimed
	// writes nothing.
	claims, err := s.cli.Get(ctx, RoutesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list route claims: %w", err)
	}
	owner := map[string]string{}
	for _, kv := range claims.Kvs {
		var c RouteClaim
		if json.Unmarshal(kv.Value, &c) == nil {
			owner[string(kv.Key)] = c.Owner()
		}
	}
	var lost []string
	for i := range svcs {
		svc := &svcs[i]
		for _, hp := range routeOf(&svc.Spec) {
			k := routeKey(hp[0], hp[1])
			if o, ok := owner[k]; ok {
				if o != svc.Key() {
					lost = append(lost, fmt.Sprintf("service %s: host %s path %s stays with service %s (older claim)", svc.Key(), hp[0], hp[1], o))
				}
				continue
			}
			claim := RouteClaim{Host: hp[0], Path: hp[1], Namespace: svc.Metadata.Namespace, Service: svc.Metadata.Name, ClaimedAt: svc.Status.CreatedAt}
			txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, mustJSON(claim))).Else(clientv3.OpGet(k)).Commit()
			if err != nil {
				return nil, fmt.Errorf("store: claim %s: %w", k, err)
			}
			if txn.Succeeded {
				owner[k] = svc.Key()
				continue
			}
			var c RouteClaim
			if kvs := txn.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 && json.Unmarshal(kvs[0].Value, &c) == nil && c.Owner() != svc.Key() {
				lost = append(lost, fmt.Sprintf("service %s: host %s path %s stays with service %s (older claim)", svc.Key(), hp[0], hp[1], c.Owner()))
			}
		}
	}
	return lost, nil
}
