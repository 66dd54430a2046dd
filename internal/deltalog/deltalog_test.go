package deltalog

import (
	"maps"
	"slices"
	"testing"
)

func eq(a, b string) bool { return a == b }

// follower applies what Since says to what it holds, as an agent does.
type follower struct {
	version uint64
	items   map[string]string
}

func (f *follower) catchUp(t *testing.T, l *Log[string]) (whole bool, sent int) {
	t.Helper()
	v, changed, removed, whole := l.Since(f.version)
	if whole {
		f.items = map[string]string{}
	}
	maps.Copy(f.items, changed)
	for _, k := range removed {
		delete(f.items, k)
	}
	f.version = v
	return whole, len(changed) + len(removed)
}

func TestFollowersConverge(t *testing.T) {
	l := New(3, eq)
	if v, _, _, _ := l.Since(0); v != 0 {
		t.Fatalf("empty log at version %d", v)
	}
	sets := []map[string]string{
		{"a": "1", "b": "1"},
		{"a": "1", "b": "2", "c": "1"}, // b changed, c added
		{"a": "1", "c": "1"},           // b removed
		{"a": "1", "c": "1"},           // nothing: no new version
		{"a": "2", "b": "3", "c": "1"}, // b back
		{"a": "2", "b": "3"},
	}
	var followers []*follower
	for i, set := range sets {
		changed := l.Update(uint64(10+i), maps.Clone(set))
		if changed == (i == 3) {
			t.Fatalf("update %d: changed %v", i, changed)
		}
		// A new follower at every step, so each catches up over a
		// different number of updates.
		followers = append(followers, &follower{items: map[string]string{}})
		for j, f := range followers {
			f.catchUp(t, l)
			if !maps.Equal(f.items, set) {
				t.Fatalf("after update %d, follower %d holds %v, want %v", i, j, f.items, set)
			}
		}
	}
}

func TestDeltaSendsOnlyWhatChanged(t *testing.T) {
	l := New(64, eq)
	set := map[string]string{}
	for i := range 1000 {
		set[string(rune('a'+i%26))+string(rune(i))] = "x"
	}
	l.Update(1, maps.Clone(set))
	f := &follower{items: map[string]string{}}
	if whole, n := f.catchUp(t, l); !whole || n != 1000 {
		t.Fatalf("first catch-up: whole %v, %d sent", whole, n)
	}
	set["new"] = "y"
	l.Update(2, maps.Clone(set))
	if whole, n := f.catchUp(t, l); whole || n != 1 {
		t.Fatalf("one change: whole %v, %d sent; want one", whole, n)
	}
}

func TestTooFarBehindGetsEverything(t *testing.T) {
	l := New(2, eq)
	for i := range 6 {
		l.Update(uint64(i+1), map[string]string{"k": string(rune('a' + i))})
	}
	_, changed, removed, whole := l.Since(2)
	if !whole || changed["k"] != "f" || len(removed) != 0 {
		t.Fatalf("Since(2) at version 6 keeping 2: whole %v changed %v removed %v", whole, changed, removed)
	}
	// A version the log never had (another replica's) is also whole.
	if _, _, _, whole := l.Since(5 << 40); !whole {
		t.Fatal("unknown version not answered whole")
	}
	if _, _, _, whole := l.Since(5); whole {
		t.Fatal("version 5 is within the last 2 updates")
	}
}

func TestWakeOnUpdate(t *testing.T) {
	l := New(2, eq)
	_, wake := l.Version()
	l.Update(1, map[string]string{"a": "1"})
	select {
	case <-wake:
	default:
		t.Fatal("not woken by an update")
	}
	_, wake = l.Version()
	l.Update(2, map[string]string{"a": "1"}) // same content
	select {
	case <-wake:
		t.Fatal("woken by an update that changed nothing")
	default:
	}
	if v, _ := l.Version(); v != 1 {
		t.Fatalf("version %d after an empty update, want 1", v)
	}
	if _, _, removed, _ := l.Since(1); !slices.Equal(removed, nil) {
		t.Fatal("removed at the current version")
	}
}

// Apply (only the keys that changed) gives followers what Update (the
// whole set) would.
func TestApplyMatchesUpdate(t *testing.T) {
	whole, part := New(8, eq), New(8, eq)
	set := map[string]string{"a": "1", "b": "1", "c": "1"}
	whole.Update(1, maps.Clone(set))
	part.Apply(1, maps.Clone(set), nil)
	steps := []struct {
		set map[string]string
		del []string
	}{
		{map[string]string{"a": "2"}, nil},
		{nil, []string{"b"}},
		{map[string]string{"b": "3", "c": "1"}, []string{"a"}}, // c unchanged
		{map[string]string{"c": "1"}, nil},                     // nothing: no version
	}
	fw, fp := &follower{items: map[string]string{}}, &follower{items: map[string]string{}}
	fw.catchUp(t, whole)
	fp.catchUp(t, part)
	for i, st := range steps {
		maps.Copy(set, st.set)
		for _, k := range st.del {
			delete(set, k)
		}
		cw := whole.Update(uint64(i+2), maps.Clone(set))
		cp := part.Apply(uint64(i+2), st.set, st.del)
		if cw != cp {
			t.Fatalf("step %d: Update changed %v, Apply %v", i, cw, cp)
		}
		fw.catchUp(t, whole)
		_, sent := fp.catchUp(t, part)
		if !maps.Equal(fw.items, set) || !maps.Equal(fp.items, set) {
			t.Fatalf("step %d: followers hold %v and %v, want %v", i, fw.items, fp.items, set)
		}
		if i == 2 && sent != 2 {
			t.Fatalf("step 2 sent %d keys, want 2 (b set, a removed; c unchanged)", sent)
		}
	}
}
