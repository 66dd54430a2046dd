package controlplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A replica is ready while its etcd has a quorum and its cache is synced;
// with two of three external members gone it is not, saying why, and it
// is ready again when one returns.
func TestReadinessFollowsEtcdQuorum(t *testing.T) {
	x := startExternalEtcd(t)
	cfg := DefaultConfig()
	cfg.DataDir, cfg.APIAddr, cfg.EtcdEndpoints, cfg.Name = t.TempDir(), "127.0.0.1:0", x.endpoints, "one"
	cfg.SecretsKeyFile, cfg.ElectionTTL = filepath.Join(t.TempDir(), "secrets.key"), time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	check := func() error {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		return srv.CheckReady(cctx)
	}
	eventually(t, "ready", func() (bool, string) {
		err := check()
		return err == nil, fmt.Sprint(err)
	})
	x.stop(1)
	x.stop(2)
	eventually(t, "not ready without quorum", func() (bool, string) {
		err := check()
		return err != nil && strings.Contains(err.Error(), "etcd"), fmt.Sprint(err)
	})
	if err := x.start(1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready again with quorum", func() (bool, string) {
		err := check()
		return err == nil, fmt.Sprint(err)
	})
}
