package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-dev/berth/controlplane/store"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EmbeddedEtcd is a single-member etcd running inside the process, its
// client and peer endpoints on Unix sockets in the data directory so that
// several instances never fight over ports and nothing listens on the
// network.
type EmbeddedEtcd struct {
	etcd      *embed.Etcd
	endpoint  string
	closeOnce sync.Once
}

// EtcdTuning selects election timing: fast for tests, default otherwise.
type EtcdTuning struct {
	TickMs, ElectionMs uint
	// MaxTxnOps limits operations per transaction (0: EmbeddedMaxTxnOps;
	// etcd's own default, what an external etcd has, is 128).
	MaxTxnOps uint
}

// StartEmbeddedEtcd starts etcd in dir and waits until it serves.
func StartEmbeddedEtcd(dir string, tuning EtcdTuning, logger *slog.Logger) (*EmbeddedEtcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd: data dir: %w", err)
	}
	clientSock := filepath.Join(dir, "client.sock")
	peerSock := filepath.Join(dir, "peer.sock")
	// Sockets left by a killed process would make the listen fail.
	_ = os.Remove(clientSock)
	_ = os.Remove(peerSock)
	cfg := embed.NewConfig()
	cfg.Name = "berth"
	cfg.Dir = filepath.Join(dir, "data")
	clientURL := url.URL{Scheme: "unix", Path: clientSock}
	peerURL := url.URL{Scheme: "unix", Path: peerSock}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.Logger = "zap"
	// etcd logs its own listeners closing as errors on every clean
	// shutdown; real failures still reach us through Err().
	cfg.LogLevel = "fatal"
	cfg.ListenMetricsUrls = nil
	if tuning.TickMs > 0 {
		cfg.TickMs, cfg.ElectionMs = tuning.TickMs, tuning.ElectionMs
	}
	// An apply is one transaction: allow large ones (etcd's default is 128
	// operations).
	cfg.MaxTxnOps = store.EmbeddedMaxTxnOps
	if tuning.MaxTxnOps > 0 {
		cfg.MaxTxnOps = tuning.MaxTxnOps
	}
	// Keep the history small: compact hourly.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: start in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd: not ready after 60s in %s", dir)
	}
	logger.Info("embedded etcd ready", "dir", dir)
	return &EmbeddedEtcd{etcd: e, endpoint: clientURL.String()}, nil
}

// Endpoint is the client URL ("unix:///...").
func (e *EmbeddedEtcd) Endpoint() string { return e.endpoint }

// Err reports a fatal etcd error.
func (e *EmbeddedEtcd) Err() <-chan error { return e.etcd.Err() }

// Close stops etcd; safe to call more than once (embed's Close panics on
// a second call in 3.7.3).
func (e *EmbeddedEtcd) Close() {
	e.closeOnce.Do(e.etcd.Close)
}

// DialEtcd connects a client to endpoints, over TLS when tlsCfg is set
// (an external etcd's client certificate and CA).
func DialEtcd(ctx context.Context, endpoints []string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: connect to %v: %w", endpoints, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Status(sctx, endpoints[0]); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd: %v not reachable: %w", endpoints, err)
	}
	return cli, nil
}
