package controlplane

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// A leader that dies (here: its API listener and its etcd client gone,
// as after kill -9: no resignation, no more keepalives) is replaced
// within a few seconds, not after its election lease of 10 s: the other
// replica sees the lease no longer kept alive and the API refuse
// connections, and revokes the lease.
func TestDeadLeaderIsReplacedBeforeItsLeaseExpires(t *testing.T) {
	etcd, err := StartEmbeddedEtcd(t.TempDir(), EtcdTuning{TickMs: 10, ElectionMs: 100}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	secretsKey := filepath.Join(t.TempDir(), "secrets.key")
	type replica struct {
		srv    *Server
		cancel context.CancelFunc
	}
	start := func(name string) *replica {
		cfg := DefaultConfig()
		cfg.DataDir, cfg.APIAddr, cfg.EtcdEndpoints, cfg.Name = t.TempDir(), "127.0.0.1:0", []string{etcd.Endpoint()}, name
		cfg.SecretsKeyFile, cfg.ElectionTTL = secretsKey, 10*time.Second
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return &replica{srv: srv, cancel: cancel}
	}
	r1, r2 := start("one"), start("two")
	eventually(t, "one leader", func() (bool, string) { return r1.srv.IsLeader() != r2.srv.IsLeader(), "" })
	leader, follower := r1, r2
	if r2.srv.IsLeader() {
		leader, follower = r2, r1
	}
	// Both records are written (the follower needs the leader's address).
	eventually(t, "the leader's server record", func() (bool, string) {
		rec, err := follower.srv.store.Server(context.Background(), leader.srv.replicaName())
		return err == nil && rec != nil, ""
	})
	// A live leader whose API refuses connections (a firewall that
	// rejects, a listener that failed) still keeps its lease alive: it
	// keeps the lead.
	leader.srv.grpc.Stop()
	time.Sleep(8 * time.Second) // more than two keepalive intervals of the 10-s lease
	if follower.srv.IsLeader() {
		t.Fatal("the follower took the lead from a leader that still beats")
	}
	died := time.Now()
	leader.srv.cli.Close()
	for !follower.srv.IsLeader() {
		if time.Since(died) > 7*time.Second {
			t.Fatalf("no takeover %s after the leader died (its lease: 10 s)", time.Since(died).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("took over %s after the leader died", time.Since(died).Round(time.Millisecond))
}
