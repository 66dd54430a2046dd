package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/berth-dev/berth/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SecretRecord is a Secret as stored: its values sealed (package
// controlplane/secrets); the store never sees them in the clear.
type SecretRecord struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Keys      []string  `json:"keys"`
	Digest    string    `json:"digest"`
	KeyID     string    `json:"keyID"`
	Box       []byte    `json:"box"`
	CreatedAt time.Time `json:"createdAt,omitzero"`
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
}

// Key is "<namespace>/<name>".
func (r *SecretRecord) Key() string { return r.Namespace + "/" + r.Name }

// applySecrets adds to an Apply transaction what the secrets need.
func (s *Store) applySecrets(ctx context.Context, in []SecretRecord, now time.Time) (cmps []clientv3.Cmp, ops []clientv3.Op, results []ApplyResult, err error) {
	for _, sec := range in {
		key := secretKey(sec.Namespace, sec.Name)
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("store: get %s: %w", key, err)
		}
		res := ApplyResult{Kind: api.KindSecret, Namespace: sec.Namespace, Name: sec.Name, Action: "created"}
		rec := sec
		rec.CreatedAt, rec.UpdatedAt = now, now
		if len(resp.Kvs) == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			var old SecretRecord
			if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
				return nil, nil, nil, fmt.Errorf("store: decode %s: %w", key, err)
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision))
			rec.CreatedAt = old.CreatedAt
			res.Action = "configured"
			if old.Digest == sec.Digest && old.KeyID == sec.KeyID {
				res.Action = "unchanged"
			}
		}
		if res.Action != "unchanged" {
			ops = append(ops, clientv3.OpPut(key, mustJSON(rec)))
		}
		results = append(results, res)
	}
	return cmps, ops, results, nil
}

// GetSecret reads one sealed secret.
func (s *Store) GetSecret(ctx context.Context, ns, name string) (*SecretRecord, error) {
	resp, err := s.cli.Get(ctx, secretKey(ns, name))
	if err != nil {
		return nil, fmt.Errorf("store: get secret %s/%s: %w", ns, name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, ErrNotFound)
	}
	var r SecretRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, fmt.Errorf("store: decode secret %s/%s: %w", ns, name, err)
	}
	return &r, nil
}

// ListSecrets lists the sealed secrets of ns ("" for all), by key.
func (s *Store) ListSecrets(ctx context.Context, ns string) ([]SecretRecord, error) {
	prefix := SecretsPrefix
	if ns != "" {
		prefix += ns + "/"
	}
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list secrets: %w", err)
	}
	out := make([]SecretRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r SecretRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out, nil
}

// DeleteSecret removes a secret.
func (s *Store) DeleteSecret(ctx context.Context, ns, name string) error {
	resp, err := s.cli.Delete(ctx, secretKey(ns, name))
	if err != nil {
		return fmt.Errorf("store: delete secret %s/%s: %w", ns, name, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("secret %s/%s: %w", ns, name, ErrNotFound)
	}
	return nil
}
