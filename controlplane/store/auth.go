package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"
)

// Token is an API token (roles admin, deployer, viewer) or a join token
// (roles node, gateway).
type Token struct {
	ID          string    `json:"id"`
	Role        string    `json:"role"`
	Namespaces  []string  `json:"namespaces,omitempty"`
	Description string    `json:"description,omitempty"`
	CreatedAt   time.Time `json:"createdAt"`
	// ExpiresAt zero: never.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// UsesLeft counts the joins a join token still allows; 0 on a join
	// token: unlimited until it expires.
	UsesLeft int `json:"usesLeft,omitempty"`
	// Secret is the hex SHA-256 of the token's secret part.
	SecretHash string `json:"secretHash"`
}

// Expired reports whether the token has expired at now.
func (t Token) Expired(now time.Time) bool { return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt) }

// IdentityRecord is what the cluster knows of one certificate identity.
type IdentityRecord struct {
	// Generation is carried by every certificate issued to the identity;
	// certificates of another generation are refused.
	Generation int64     `json:"generation"`
	Revoked    bool      `json:"revoked,omitempty"`
	RevokedAt  time.Time `json:"revokedAt,omitzero"`
	JoinedAt   time.Time `json:"joinedAt,omitzero"`
}

// ErrTokenInvalid is returned for a token that is unknown, expired, used
// up or of the wrong role; callers say which without echoing the secret.
var ErrTokenInvalid = errors.New("token invalid")

// ErrIdentityTaken is returned when a join names an identity that is
// already a member.
var ErrIdentityTaken = errors.New("identity already a member")

// NewTokenSecret makes a token string "berth-<id>.<secret>".
func NewTokenSecret() (id, token, secretHash string, err error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return "", "", "", fmt.Errorf("store: token: %w", err)
	}
	id, secret := hex.EncodeToString(b[:4]), hex.EncodeToString(b[4:])
	return id, "berth-" + id + "." + secret, hashSecret(secret), nil
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SplitToken parses "berth-<id>.<secret>".
func SplitToken(token string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(token, "berth-")
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, ".")
	if !ok || len(id) != 8 || len(secret) != 32 {
		return "", "", false
	}
	return id, secret, true
}

// MatchToken checks a presented token against a stored one.
func MatchToken(t Token, secret string) bool {
	return subtle.ConstantTimeCompare([]byte(t.SecretHash), []byte(hashSecret(secret))) == 1
}

// CreateToken stores t (its ID and SecretHash from NewTokenSecret). An
// expiring token's key lives on a lease that ends with it.
func (s *Store) CreateToken(ctx context.Context, t Token) error {
	var opts []clientv3.OpOption
	if !t.ExpiresAt.IsZero() {
		ttl := int64(time.Until(t.ExpiresAt).Seconds()) + 60
		lease, err := s.cli.Grant(ctx, max(ttl, 60))
		if err != nil {
			return fmt.Errorf("store: create token: %w", err)
		}
		opts = append(opts, clientv3.WithLease(lease.ID))
	}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(tokenKey(t.ID)), "=", 0)).
		Then(clientv3.OpPut(tokenKey(t.ID), mustJSON(t), opts...)).Commit()
	if err != nil {
		return fmt.Errorf("store: create token: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("store: create token %s: %w", t.ID, ErrConflict)
	}
	return nil
}

// ListTokens returns every token, by id.
func (s *Store) ListTokens(ctx context.Context) ([]Token, error) {
	resp, err := s.cli.Get(ctx, TokensPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list tokens: %w", err)
	}
	var out []Token
	for _, kv := range resp.Kvs {
		var t Token
		if json.Unmarshal(kv.Value, &t) == nil {
			out = append(out, t)
		}
	}
	return out, nil
}

// DeleteToken revokes a token by id.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	resp, err := s.cli.Delete(ctx, tokenKey(id))
	if err != nil {
		return fmt.Errorf("store: revoke token %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("store: token %s: %w", id, ErrNotFound)
	}
	return nil
}

// Join spends one use of a join token of role and records a new
// generation for the identity role/name, in one transaction: a token
// used up, expired or of another role, or a name that is a member and
// not revoked, changes nothing.
func (s *Store) Join(ctx context.Context, token, role, name string) (int64, error) {
	id, secret, ok := SplitToken(token)
	if !ok {
		return 0, fmt.Errorf("%w: not a Berth token", ErrTokenInvalid)
	}
	for range 10 {
		resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(tokenKey(id)), clientv3.OpGet(identityKey(role, name))).Commit()
		if err != nil {
			return 0, fmt.Errorf("store: join: %w", err)
		}
		tk := resp.Responses[0].GetResponseRange().Kvs
		if len(tk) == 0 {
			return 0, fmt.Errorf("%w: unknown or revoked", ErrTokenInvalid)
		}
		var t Token
		if err := json.Unmarshal(tk[0].Value, &t); err != nil || !MatchToken(t, secret) {
			return 0, fmt.Errorf("%w: unknown or revoked", ErrTokenInvalid)
		}
		now := s.now().UTC()
		if t.Expired(now) {
			return 0, fmt.Errorf("%w: expired at %s", ErrTokenInvalid, t.ExpiresAt.Format(time.RFC3339))
		}
		if t.Role != role {
			return 0, fmt.Errorf("%w: it is a %s token, not a %s join token", ErrTokenInvalid, t.Role, role)
		}
		rec := IdentityRecord{}
		cmpIdent := clientv3.Compare(clientv3.CreateRevision(identityKey(role, name)), "=", 0)
		if ik := resp.Responses[1].GetResponseRange().Kvs; len(ik) > 0 {
			if err := json.Unmarshal(ik[0].Value, &rec); err != nil {
				return 0, fmt.Errorf("store: identity %s/%s: %w", role, name, err)
			}
			if !rec.Revoked {
				return 0, fmt.Errorf("%s %s: %w", role, name, ErrIdentityTaken)
			}
			cmpIdent = clientv3.Compare(clientv3.ModRevision(identityKey(role, name)), "=", ik[0].ModRevision)
		}
		rec = IdentityRecord{Generation: rec.Generation + 1, JoinedAt: now}
		ops := []clientv3.Op{clientv3.OpPut(identityKey(role, name), mustJSON(rec))}
		switch {
		case t.UsesLeft == 1:
			ops = append(ops, clientv3.OpDelete(tokenKey(id)))
		case t.UsesLeft > 1:
			t.UsesLeft--
			ops = append(ops, clientv3.OpPut(tokenKey(id), mustJSON(t), clientv3.WithIgnoreLease()))
		}
		txn, err := s.cli.Txn(ctx).If(cmpIdent, clientv3.Compare(clientv3.ModRevision(tokenKey(id)), "=", tk[0].ModRevision)).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("store: join: %w", err)
		}
		if txn.Succeeded {
			return rec.Generation, nil
		}
	}
	return 0, fmt.Errorf("store: join %s/%s: %w", role, name, ErrConflict)
}

// EnsureIdentity records role/name if it has no record yet (parts the
// control plane issues certificates to itself: replicas, `berth dev`'s
// agent and gateway) and returns its generation. A revoked identity stays
// revoked.
func (s *Store) EnsureIdentity(ctx context.Context, role, name string) (IdentityRecord, error) {
	key := identityKey(role, name)
	rec := IdentityRecord{Generation: 1, JoinedAt: s.now().UTC()}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, mustJSON(rec))).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return rec, fmt.Errorf("store: identity %s/%s: %w", role, name, err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 || json.Unmarshal(kvs[0].Value, &rec) != nil {
			return rec, fmt.Errorf("store: identity %s/%s: unreadable", role, name)
		}
	}
	return rec, nil
}

// RevokeIdentity refuses every certificate issued to role/name from now
// on. It fails with ErrNotFound when the identity never joined.
func (s *Store) RevokeIdentity(ctx context.Context, role, name string) error {
	key := identityKey(role, name)
	for range 10 {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("store: revoke %s/%s: %w", role, name, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("store: %s %s: %w", role, name, ErrNotFound)
		}
		var rec IdentityRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
			return fmt.Errorf("store: identity %s/%s: %w", role, name, err)
		}
		if rec.Revoked {
			return nil
		}
		rec.Revoked, rec.RevokedAt = true, s.now().UTC()
		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(key, mustJSON(rec))).Commit()
		if err != nil {
			return fmt.Errorf("store: revoke %s/%s: %w", role, name, err)
		}
		if txn.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("store: revoke %s/%s: %w", role, name, ErrConflict)
}

// KeySealer seals the CA's private key before it goes to etcd and opens
// it again (the secrets key, which every replica holds, does both): a
// copy of etcd alone mints no certificates.
type KeySealer interface {
	SealKey(keyPEM []byte) (json.RawMessage, error)
	OpenKey(sealed json.RawMessage) ([]byte, error)
}

// caRecord is the cluster CA in etcd. Key is the plain private key of
// records from before it was sealed; such a record is sealed when read.
type caRecord struct {
	Cert      string
	Key       string          `json:",omitempty"`
	SealedKey json.RawMessage `json:",omitempty"`
}

// EnsureCA stores the CA made by create unless one is stored already, and
// returns the stored one: the first replica's CA is every replica's. The
// private key is stored sealed by sealer.
func (s *Store) EnsureCA(ctx context.Context, sealer KeySealer, create func() (certPEM, keyPEM []byte, err error)) (certPEM, keyPEM []byte, err error) {
	get := func() ([]byte, []byte, bool, error) {
		resp, err := s.cli.Get(ctx, CAKey)
		if err != nil || len(resp.Kvs) == 0 {
			return nil, nil, false, err
		}
		var v caRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
			return nil, nil, false, fmt.Errorf("store: CA record: %w", err)
		}
		if len(v.SealedKey) > 0 {
			k, err := sealer.OpenKey(v.SealedKey)
			if err != nil {
				return nil, nil, false, fmt.Errorf("store: the cluster CA's key: %w", err)
			}
			return []byte(v.Cert), k, true, nil
		}
		// A plain key from before: seal it in place.
		sealed, err := sealer.SealKey([]byte(v.Key))
		if err != nil {
			return nil, nil, false, err
		}
		rec := mustJSON(caRecord{Cert: v.Cert, SealedKey: sealed})
		if _, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(CAKey), "=", resp.Kvs[0].ModRevision)).Then(clientv3.OpPut(CAKey, rec)).Commit(); err != nil {
			return nil, nil, false, fmt.Errorf("store: seal the CA key: %w", err)
		}
		return []byte(v.Cert), []byte(v.Key), true, nil
	}
	c, k, ok, err := get()
	if err != nil {
		return nil, nil, fmt.Errorf("store: CA: %w", err)
	}
	if ok {
		return c, k, nil
	}
	c, k, err = create()
	if err != nil {
		return nil, nil, err
	}
	sealed, err := sealer.SealKey(k)
	if err != nil {
		return nil, nil, err
	}
	val := mustJSON(caRecord{Cert: string(c), SealedKey: sealed})
	if _, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(CAKey), "=", 0)).Then(clientv3.OpPut(CAKey, val)).Commit(); err != nil {
		return nil, nil, fmt.Errorf("store: CA: %w", err)
	}
	c, k, ok, err = get()
	if err != nil || !ok {
		return nil, nil, fmt.Errorf("store: CA: not stored (%v)", err)
	}
	return c, k, nil
}

// AuthCache follows AuthRoot: tokens and identities, read on every API
// call without a round trip to etcd. A revocation reaches it within a
// watch event; Changed wakes those who cut streams of revoked parts.
type AuthCache struct {
	cli    *clientv3.Client
	logger *slog.Logger

	mu         sync.RWMutex
	tokens     map[string]Token
	identities map[string]IdentityRecord
	// revs is the mod revision of the newest value seen per key (deleted
	// keys too): a watch event older than a read-through never undoes it.
	revs      map[string]int64
	ready     chan struct{}
	readyOnce sync.Once
	subs      []chan struct{}

	// readLimit bounds read-throughs of keys the cache misses: a flood of
	// made-up token ids costs etcd at most this many reads a second.
	readLimit      *rate.Limiter
	reads, limited atomic.Uint64
}

// Read-throughs a second (and burst) for keys the cache misses: plenty
// for credentials made a moment ago on another replica.
const (
	readThroughRate  = 50
	readThroughBurst = 100
)

// NewAuthCache returns a cache; Run fills and follows it.
func NewAuthCache(cli *clientv3.Client, logger *slog.Logger) *AuthCache {
	return &AuthCache{cli: cli, logger: logger.With("component", "authcache"), tokens: map[string]Token{}, identities: map[string]IdentityRecord{}, revs: map[string]int64{}, ready: make(chan struct{}),
		readLimit: rate.NewLimiter(readThroughRate, readThroughBurst)}
}

// Ready is closed after the first load.
func (a *AuthCache) Ready() <-chan struct{} { return a.ready }

// Token returns the token with id. A token the cache does not hold yet
// (created a moment ago, its watch event still on the way) is read from
// etcd.
func (a *AuthCache) Token(id string) (Token, bool) {
	a.mu.RLock()
	t, ok := a.tokens[id]
	a.mu.RUnlock()
	if !ok && a.readThrough(tokenKey(id)) {
		a.mu.RLock()
		t, ok = a.tokens[id]
		a.mu.RUnlock()
	}
	return t, ok
}

// Identity returns the record of role/name, read from etcd when the
// cache does not hold it yet.
func (a *AuthCache) Identity(role, name string) (IdentityRecord, bool) {
	a.mu.RLock()
	r, ok := a.identities[role+"/"+name]
	a.mu.RUnlock()
	if !ok && a.readThrough(identityKey(role, name)) {
		a.mu.RLock()
		r, ok = a.identities[role+"/"+name]
		a.mu.RUnlock()
	}
	return r, ok
}

// readThrough reads one key the cache missed, so a credential made a
// moment ago works at once. Unknown keys cost a read each, so reads are
// rate-limited (readThroughRate): beyond it a miss is a miss, and the
// watch still brings a new credential within moments.
func (a *AuthCache) readThrough(key string) bool {
	if !a.readLimit.Allow() {
		a.limited.Add(1)
		return false
	}
	a.reads.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return a.fetch(ctx, key, false)
}

// LimitReadThroughs changes the read-through limit (per second, burst);
// tokens already saved up stay.
func (a *AuthCache) LimitReadThroughs(perSecond float64, burst int) {
	a.readLimit.SetLimit(rate.Limit(perSecond))
	a.readLimit.SetBurst(burst)
}

// ReadThroughs counts the reads of missed keys made and those refused by
// the rate limit.
func (a *AuthCache) ReadThroughs() (reads, limited uint64) {
	return a.reads.Load(), a.limited.Load()
}

// RefreshIdentity reads role/name from etcd now instead of waiting for
// its watch event, and wakes the stream cutters: a revocation made
// through this replica is refused here before the call that made it
// returns.
func (a *AuthCache) RefreshIdentity(ctx context.Context, role, name string) {
	a.fetch(ctx, identityKey(role, name), true)
}

// RefreshToken is RefreshIdentity for a token (its deletion).
func (a *AuthCache) RefreshToken(ctx context.Context, id string) {
	a.fetch(ctx, tokenKey(id), true)
}

// fetch reads key from etcd into the cache and reports whether it
// exists. A refresh also records its absence and wakes the stream
// cutters; a read-through of a missing key records nothing. A failed
// read changes nothing: the watch event still comes.
func (a *AuthCache) fetch(ctx context.Context, key string, refresh bool) bool {
	resp, err := a.cli.Get(ctx, key)
	if err != nil || (len(resp.Kvs) == 0 && !refresh) {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(resp.Kvs) == 0 {
		a.set(key, nil, resp.Header.Revision)
	} else {
		a.set(key, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	}
	if refresh {
		a.notifyLocked()
	}
	return len(resp.Kvs) > 0
}

// CheckCertificate refuses a part's certificate whose identity the
// cluster does not know, revoked, or of an older generation. Replicas
// hold the CA key and are not revoked one by one.
func (a *AuthCache) CheckCertificate(id pki.Identity) error {
	if id.Role == pki.RoleReplica {
		return nil
	}
	rec, ok := a.Identity(string(id.Role), id.Name)
	if ok && rec.Generation < id.Generation && a.readThrough(identityKey(string(id.Role), id.Name)) {
		rec, ok = a.Identity(string(id.Role), id.Name) // joined again a moment ago
	}
	switch {
	case !ok:
		return fmt.Errorf("certificate of %s: the cluster has no record of this identity (removed?)", id)
	case rec.Revoked:
		return fmt.Errorf("certificate of %s: revoked at %s", id, rec.RevokedAt.Format(time.RFC3339))
	case rec.Generation != id.Generation:
		return fmt.Errorf("certificate of %s: generation %d was revoked (current %d)", id, id.Generation, rec.Generation)
	}
	return nil
}

// Changed returns a channel woken (coalesced) on every change, and a
// function to stop.
func (a *AuthCache) Changed() (<-chan struct{}, func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan struct{}, 1)
	a.subs = append(a.subs, ch)
	return ch, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.subs = slices.DeleteFunc(slices.Clone(a.subs), func(s chan struct{}) bool { return s == ch })
	}
}

// set records key's value (nil: deleted) as of etcd revision rev,
// unless a newer one is already held.
func (a *AuthCache) set(key string, value []byte, rev int64) {
	if rev < a.revs[key] {
		return
	}
	a.revs[key] = rev
	switch {
	case strings.HasPrefix(key, TokensPrefix):
		var t Token
		if value == nil || json.Unmarshal(value, &t) != nil {
			delete(a.tokens, strings.TrimPrefix(key, TokensPrefix))
			return
		}
		a.tokens[t.ID] = t
	case strings.HasPrefix(key, IdentitiesPrefix):
		var r IdentityRecord
		if value == nil || json.Unmarshal(value, &r) != nil {
			delete(a.identities, strings.TrimPrefix(key, IdentitiesPrefix))
			return
		}
		a.identities[strings.TrimPrefix(key, IdentitiesPrefix)] = r
	}
}

// Run loads and follows AuthRoot until ctx ends.
func (a *AuthCache) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		resp, err := a.cli.Get(ctx, AuthRoot, clientv3.WithPrefix())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.logger.Warn("load failed; retrying", "err", err)
			time.Sleep(500 * time.Millisecond)
			continue
		}
		a.mu.Lock()
		a.tokens, a.identities, a.revs = map[string]Token{}, map[string]IdentityRecord{}, map[string]int64{}
		for _, kv := range resp.Kvs {
			a.set(string(kv.Key), kv.Value, kv.ModRevision)
		}
		a.notifyLocked()
		a.mu.Unlock()
		a.readyOnce.Do(func() { close(a.ready) })
		wctx, cancel := context.WithCancel(ctx)
		for wr := range a.cli.Watch(wctx, AuthRoot, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			a.mu.Lock()
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					a.set(string(ev.Kv.Key), nil, ev.Kv.ModRevision)
				} else {
					a.set(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision)
				}
			}
			a.notifyLocked()
			a.mu.Unlock()
		}
		cancel()
	}
	return nil
}

func (a *AuthCache) notifyLocked() {
	for _, ch := range a.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
