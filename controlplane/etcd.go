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

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EmbeddedEtcd is an etcd member running inside the process. Its client
// endpoint is a Unix socket in the data directory (only this process
// talks to it). A single member also has its peer endpoint there, so
// nothing listens on the network; a member of a multi-member cluster
// (EtcdPeering) listens for its peers on TCP with mutual TLS.
type EmbeddedEtcd struct {
	etcd      *embed.Etcd
	endpoint  string
	closeOnce sync.Once
}

// EtcdPeerCN is the common name of etcd peer certificates. A member
// accepts only peers presenting it, signed by the cluster CA: a node's or
// a gateway's certificate (same CA, names limited to a-z0-9-_.) never
// has it.
const EtcdPeerCN = "berth etcd peer"

// EtcdPeering makes the embedded etcd one member of a multi-member
// cluster.
type EtcdPeering struct {
	// Name is the member's name (unique in the cluster).
	Name string
	// ListenAddr is host:port the member listens on for peers;
	// AdvertiseAddr host:port the others reach it at (default ListenAddr).
	ListenAddr, AdvertiseAddr string
	// InitialCluster is etcd's name=https://host:port,... for a member
	// joining a running cluster (Existing); empty: a new cluster of this
	// member alone (others join it).
	InitialCluster string
	Existing       bool
	// The member's peer certificate and key (CN EtcdPeerCN, server and
	// client use) and the CA its peers' certificates must chain to.
	CertFile, KeyFile, CAFile string
}

// PeerURL is the URL the other members reach this one at.
func (p EtcdPeering) PeerURL() string {
	a := p.AdvertiseAddr
	if a == "" {
		a = p.ListenAddr
	}
	return "https://" + a
}

// EtcdTuning selects election timing: fast for tests, default otherwise.
type EtcdTuning struct {
	TickMs, ElectionMs uint
	// MaxTxnOps limits operations per transaction (0: EmbeddedMaxTxnOps;
	// etcd's own default, what an external etcd has, is 128).
	MaxTxnOps uint
}

// StartEmbeddedEtcd starts a single-member etcd in dir and waits until it
// serves.
func StartEmbeddedEtcd(dir string, tuning EtcdTuning, logger *slog.Logger) (*EmbeddedEtcd, error) {
	return startEtcd(dir, nil, tuning, logger)
}

// StartEtcdMember starts a member of a multi-member etcd in dir and waits
// until it serves (a member joining waits until it caught up enough to
// serve, as a learner).
func StartEtcdMember(dir string, p EtcdPeering, tuning EtcdTuning, logger *slog.Logger) (*EmbeddedEtcd, error) {
	return startEtcd(dir, &p, tuning, logger)
}

// HasEtcdData reports whether dir holds an etcd member's data already (a
// restart: the member knows its cluster; nothing to join).
func HasEtcdData(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "data", "member", "wal"))
	return err == nil
}

func startEtcd(dir string, peering *EtcdPeering, tuning EtcdTuning, logger *slog.Logger) (*EmbeddedEtcd, error) {
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
	if p := peering; p != nil {
		listen, err := url.Parse("https://" + p.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("etcd: peer address %q: %w", p.ListenAddr, err)
		}
		adv, err := url.Parse(p.PeerURL())
		if err != nil {
			return nil, fmt.Errorf("etcd: advertised peer address %q: %w", p.AdvertiseAddr, err)
		}
		cfg.Name = p.Name
		cfg.ListenPeerUrls = []url.URL{*listen}
		cfg.AdvertisePeerUrls = []url.URL{*adv}
		cfg.InitialCluster = p.Name + "=" + adv.String()
		if p.InitialCluster != "" {
			cfg.InitialCluster = p.InitialCluster
		}
		if p.Existing {
			cfg.ClusterState = embed.ClusterStateFlagExisting
		}
		cfg.PeerTLSInfo = transport.TLSInfo{
			CertFile: p.CertFile, KeyFile: p.KeyFile, TrustedCAFile: p.CAFile,
			ClientCertFile: p.CertFile, ClientKeyFile: p.KeyFile,
			ClientCertAuth: true, AllowedCNs: []string{EtcdPeerCN},
		}
		// A member added by another replica is refused changes that would
		// leave fewer started members than a quorum (etcd's default, kept
		// explicit): removing a member never takes writes down.
		cfg.StrictReconfigCheck = true
	}
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

// RestoreBump is how far a restored cluster's revision is moved past the
// snapshot's (and marked compacted). Discovery versions are etcd
// revisions: agents and gateways that ran a version newer than the
// snapshot would otherwise take the restored cluster's publishes for old
// ones. etcd's documentation suggests this amount.
const RestoreBump = 1_000_000_000

// RestoreEtcdSnapshot makes dataDir (a `berth server --data-dir` with no
// etcd data yet) hold the cluster state of snapshot, as a new cluster of
// one member: name and peerAddr as that server will run (peerAddr ""
// for a single member on Unix sockets). The other replicas then join it
// with fresh data dirs.
func RestoreEtcdSnapshot(snapshotPath, dataDir, name, peerAddr string, logger *zap.Logger) error {
	dir := filepath.Join(dataDir, "etcd")
	if HasEtcdData(dir) {
		return fmt.Errorf("restore: %s holds etcd data already: restore into a new --data-dir", dir)
	}
	peerURL := (&url.URL{Scheme: "unix", Path: filepath.Join(dir, "peer.sock")}).String()
	if peerAddr != "" {
		peerURL = "https://" + peerAddr
	} else {
		name = "berth"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	err := snapshot.NewV3(logger).Restore(snapshot.RestoreConfig{
		SnapshotPath:   snapshotPath,
		Name:           name,
		OutputDataDir:  filepath.Join(dir, "data"),
		PeerURLs:       []string{peerURL},
		InitialCluster: name + "=" + peerURL,
		// A new cluster id: members of the old cluster cannot mix in.
		InitialClusterToken: fmt.Sprintf("berth-restored-%d", time.Now().UnixNano()),
		RevisionBump:        RestoreBump,
		MarkCompacted:       true,
	})
	if err != nil {
		return fmt.Errorf("restore %s: %w", snapshotPath, err)
	}
	return nil
}
