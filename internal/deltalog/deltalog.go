// Package deltalog keeps a keyed set of values at a version, and which
// keys the last few versions changed, so that a follower holding an older
// version can be sent only what changed since (delta xDS's model), or
// everything when it is too far behind or new.
package deltalog

import (
	"maps"
	"slices"
	"sync"
)

// Log is a versioned keyed set. Its methods are safe for concurrent use.
type Log[V any] struct {
	keep  int
	equal func(a, b V) bool

	mu      sync.Mutex
	version uint64
	items   map[string]V
	// deltas: the keys each of the last keep updates touched, the first
	// applying to base.
	deltas []delta
	base   uint64
	wake   chan struct{} // closed and replaced on every update
}

type delta struct {
	version uint64
	touched []string
}

// New returns an empty log at version 0 that can catch a follower up over
// keep updates; equal decides whether a key's value changed.
func New[V any](keep int, equal func(a, b V) bool) *Log[V] {
	return &Log[V]{keep: keep, equal: equal, items: map[string]V{}, wake: make(chan struct{})}
}

// Update makes items the whole set at version, and records which keys
// differ from the set before. It changes nothing and returns false when
// no key differs or version is not newer than the log's.
func (l *Log[V]) Update(version uint64, items map[string]V) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var del []string
	for k := range l.items {
		if _, ok := items[k]; !ok {
			del = append(del, k)
		}
	}
	return l.apply(version, items, del)
}

// Apply brings the set to version by changing only the keys in set (to
// their values) and del (removed): keys whose value is unchanged are not
// recorded, and nothing changes (false) when no key did or version is not
// newer.
func (l *Log[V]) Apply(version uint64, set map[string]V, del []string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.apply(version, set, del)
}

func (l *Log[V]) apply(version uint64, set map[string]V, del []string) bool {
	if version <= l.version {
		return false
	}
	var touched []string
	for k, v := range set {
		if old, ok := l.items[k]; !ok || !l.equal(old, v) {
			touched = append(touched, k)
		}
	}
	for _, k := range del {
		if _, ok := l.items[k]; ok {
			if _, set := set[k]; !set {
				touched = append(touched, k)
			}
		}
	}
	if len(touched) == 0 && l.version != 0 {
		return false
	}
	if l.version == 0 {
		l.base = version
	} else {
		l.deltas = append(l.deltas, delta{version: version, touched: touched})
		if len(l.deltas) > l.keep {
			l.base = l.deltas[0].version
			l.deltas = slices.Delete(l.deltas, 0, 1)
		}
	}
	// In place: Since reads the set only under the lock (and hands out
	// copies).
	for _, k := range del {
		delete(l.items, k)
	}
	maps.Copy(l.items, set)
	l.version = version
	close(l.wake)
	l.wake = make(chan struct{})
	return true
}

// Version returns the log's version (0 before the first Update) and a
// channel closed at the next Update.
func (l *Log[V]) Version() (uint64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.version, l.wake
}

// Knows reports whether Since(base) answers with what changed rather than
// with everything: base is the log's version or one it remembers.
func (l *Log[V]) Knows(base uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if base == 0 {
		return false
	}
	if base == l.version || base == l.base {
		return true
	}
	for _, d := range l.deltas {
		if d.version == base {
			return true
		}
	}
	return false
}

// Since returns the log's version and what changed since version base:
// the values of the keys added or changed, and the keys removed (sorted).
// whole is true when base is 0 or older than the log remembers: then
// changed holds every value and removed is empty, and the follower must
// drop whatever it holds that changed does not.
func (l *Log[V]) Since(base uint64) (version uint64, changed map[string]V, removed []string, whole bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if base == l.version {
		return l.version, nil, nil, false
	}
	i := -1
	if base == l.base {
		i = 0
	} else {
		for j, d := range l.deltas {
			if d.version == base {
				i = j + 1
			}
		}
	}
	if base == 0 || i < 0 {
		return l.version, maps.Clone(l.items), nil, true
	}
	changed = map[string]V{}
	gone := map[string]bool{}
	for _, d := range l.deltas[i:] {
		for _, k := range d.touched {
			if v, ok := l.items[k]; ok {
				changed[k] = v
				delete(gone, k)
			} else {
				delete(changed, k)
				gone[k] = true
			}
		}
	}
	return l.version, changed, slices.Sorted(maps.Keys(gone)), false
}
