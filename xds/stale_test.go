package xds

import (
	"context"
	"testing"
	"time"
)

// A client that never ACKs is SYNCING, then STALE after StaleAfter, and
// from then on holds no wait: one unresponsive gateway must not hold
// every drain and canary step for as long as it stays connected.
func TestAClientThatNeverAcksTurnsStale(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StaleAfter = 400 * time.Millisecond
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, s)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	silent := dialADS(t, s.Addr(), "gw-silent")
	silent.recvAll() // and never ACKs
	if err := s.Update(snapshotAt(2)); err != nil {
		t.Fatal(err)
	}
	state := func() string {
		for _, g := range s.Gateways() {
			if g.NodeID == "gw-silent" {
				return g.State
			}
		}
		return ""
	}
	if st := state(); st != StateSyncing {
		t.Fatalf("a client behind for a moment is %s, want %s", st, StateSyncing)
	}
	start := time.Now()
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := s.WaitForAck(wctx, 2); err != nil {
		t.Fatalf("WaitForAck held by a client that never ACKs: %v", err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("waited %v for a silent client", waited)
	}
	if st := state(); st != StateStale {
		t.Fatalf("a client behind past StaleAfter is %s, want %s", st, StateStale)
	}
}
