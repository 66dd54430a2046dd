package ui

import (
	"testing"
	"time"
)

// Attack: a logged-in user logs in again and again to push everyone else
// out of the session table. Only their own oldest sessions go.
func TestOneUserCannotEvictOthersSessions(t *testing.T) {
	ss := newSessions(time.Hour, 40)
	now := time.Now()
	alice := ss.create("tok-a", "alice", now)
	for i := range 1000 {
		ss.create("tok-m", "mallory", now.Add(time.Duration(i+1)*time.Millisecond))
	}
	if ss.get(alice.id, now) == nil {
		t.Fatal("mallory's logins pushed alice's session out")
	}
	if n := ss.len(); n != 1+maxPerPrincipal {
		t.Fatalf("%d sessions, want alice's and mallory's newest %d", n, maxPerPrincipal)
	}
	// The table's own bound still holds across users: the oldest goes.
	for i := range 100 {
		ss.create("tok", "user-"+string(rune('a'+i%26))+string(rune('a'+i/26)), now.Add(time.Hour/2+time.Duration(i)*time.Millisecond))
	}
	if n := ss.len(); n != 40 {
		t.Fatalf("%d sessions, want the bound 40", n)
	}
}
