package controlplane

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// sharedEtcd starts an embedded single-member etcd for replicas that use
// it as an external one (--etcd-endpoints), and a secrets key file they
// all share.
func sharedEtcd(t *testing.T) (endpoints []string, secretsKey string) {
	t.Helper()
	etcd, err := StartEmbeddedEtcd(t.TempDir(), EtcdTuning{TickMs: 10, ElectionMs: 100}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	return []string{etcd.Endpoint()}, filepath.Join(t.TempDir(), "secrets.key")
}

// testReplica is a running replica of a multi-replica test.
type testReplica struct {
	srv     *Server
	dataDir string
	// stop ends it (once; also at the test's end).
	stop func()
}

// startReplica runs a replica named name on the etcd at endpoints with
// the cluster's secrets key and an election lease of ttl.
func startReplica(t *testing.T, endpoints []string, secretsKey, name string, ttl time.Duration) *testReplica {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir, cfg.APIAddr, cfg.EtcdEndpoints, cfg.Name = t.TempDir(), "127.0.0.1:0", endpoints, name
	cfg.SecretsKeyFile, cfg.ElectionTTL = secretsKey, ttl
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return &testReplica{srv: srv, dataDir: cfg.DataDir, stop: stop}
}
