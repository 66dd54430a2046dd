// Package controlplane assembles Berth's control plane: etcd (embedded by
// default), the typed store and its watch-fed cache, the controllers, the
// discovery publisher and the gRPC API. It owns their lifecycle, not their
// logic; each part lives in its own sub-package. The xDS server and the
// host DNS server are fed through snapshot sinks, and report back through
// Config.Gateways (xDS clients) and Config.Loads (load reports), all
// passed in by the wiring in cmd/berth, so this package imports neither.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/apiserver"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/publish"
	"github.com/berth-dev/berth/controlplane/rollouthistory"
	"github.com/berth-dev/berth/controlplane/secrets"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/pki"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Config configures a control plane.
type Config struct {
	// DataDir holds embedded etcd's data and uploaded images.
	DataDir string
	// MinFreeDisk: with the embedded etcd, writes through the API are
	// refused, naming the disk, while DataDir's filesystem has less free
	// (0: apiserver.DefaultMinFreeDisk, 128 MiB).
	MinFreeDisk uint64
	// EtcdEndpoints selects an external etcd; empty runs it embedded.
	EtcdEndpoints []string
	// EtcdPeerAddr makes the embedded etcd a member of a multi-member
	// cluster, listening for its peers (mutual TLS, cluster CA) on this
	// host:port; EtcdAdvertisePeerAddr is where the others reach it
	// (default EtcdPeerAddr). Join lists running replicas' API addresses:
	// on its first start the member joins their cluster through one.
	EtcdPeerAddr, EtcdAdvertisePeerAddr string
	Join                                []string
	// Etcd tunes the embedded etcd's election timing.
	Etcd EtcdTuning
	// APIAddr is where the gRPC API listens (loopback unless configured).
	APIAddr string
	// ClusterCIDR is divided into node pod subnets of NodeSubnetBits.
	ClusterCIDR    string
	NodeSubnetBits int
	// DrainDelay is how long a drained endpoint stays out of discovery
	// before its container is stopped: at least the DNS TTL.
	DrainDelay        time.Duration
	HeartbeatInterval time.Duration
	// NodeTimeout: a node that misses heartbeats this long is NotReady and
	// its endpoints leave DNS and the gateways.
	NodeTimeout time.Duration
	// LostGrace: a node NotReady this long is Lost and its instances are
	// replaced on other nodes (default 6 s: with the 2 s node timeout, a
	// dead node's instances run elsewhere within 10 s).
	LostGrace time.Duration
	// EtcdTLS is the client TLS of an external etcd (nil: plain).
	EtcdTLS *tls.Config
	// CACertFile and CAKeyFile give the cluster CA; empty: the CA in
	// DataDir/pki, else the one in etcd, else a new one.
	CACertFile, CAKeyFile string
	// CertTTL is the lifetime of the certificates this control plane
	// issues to nodes, gateways and itself.
	CertTTL time.Duration
	// MaxNodes caps the nodes that may join (0: no cap).
	MaxNodes int
	// MaxImageSize bounds one image upload, ImageQuota all of them
	// (bytes; 0: 4 GiB and 20 GiB).
	MaxImageSize, ImageQuota int64
	// SecretsKeyFile holds the key Secrets are sealed with (created at
	// first start); default DataDir/secrets.key. Every replica needs the
	// same one.
	SecretsKeyFile string
	// AdminConfig is where the first admin credential is written (mode
	// 0600) for the CLI; default DataDir/admin.conf. "-": nowhere.
	AdminConfig string
	// Name identifies this replica in the leader election.
	Name string
	// AdvertiseAddr is the API address the other replicas reach this one
	// at (default: the address the API listens on).
	AdvertiseAddr string
	// ElectionTTL bounds how long a dead leader keeps the lead (and a dead
	// replica its nodes' liveness claims). Default 5 s: at 2 s a replica
	// busy with a 1,000-node deploy on two cores missed its own lease
	// renewals and dropped the lead twice in one run (Kubernetes' leader
	// lease is 15 s).
	ElectionTTL time.Duration
	// Gateways reports this replica's xDS clients (`berth get gateways`,
	// and etcd for the other replicas); GatewaysChanged, if set, wakes the
	// report when their ACK state moves (else it looks every second).
	Gateways        func() []api.GatewayStatus
	GatewaysChanged func() <-chan struct{}
	// Loads feeds canary analysis from the gateways' load reports.
	Loads      controller.LoadReader
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// DefaultConfig returns the defaults of `berth server`.
func DefaultConfig() Config {
	return Config{
		DataDir:           "/var/lib/berth/server",
		APIAddr:           "127.0.0.1:7400",
		ClusterCIDR:       "10.213.0.0/16",
		NodeSubnetBits:    24,
		DrainDelay:        5 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		NodeTimeout:       2 * time.Second,
		LostGrace:         6 * time.Second,
		CertTTL:           apiserver.DefaultCertTTL,
		MaxNodes:          5000,
		ElectionTTL:       5 * time.Second,
	}
}

// Server is a running control plane.
type Server struct {
	cfg       Config
	logger    *slog.Logger
	etcd      *EmbeddedEtcd
	cli       *clientv3.Client
	store     *store.Store
	cache     *store.Cache
	ctrl      *controller.Controller
	publisher *publish.Publisher
	history   *rollouthistory.Recorder
	liveness  *liveness
	api       *apiserver.Server
	grpc      *grpc.Server
	lis       net.Listener
	auth      *store.AuthCache
	ca        *pki.CA
	// replicaCert is this replica's certificate (with the CA in its
	// chain): the API's and xDS's server certificate, and its client
	// certificate towards the other replicas.
	replicaCert *pki.KeyPair
	// peering is the embedded etcd member's peer set-up (nil: a single
	// member on Unix sockets); its certificate is renewed with the
	// replica's, from peerCA.
	peering     *EtcdPeering
	peerCA      *pki.CA
	adminConfig string
	closeOnce   sync.Once
	leader      atomic.Bool
	// electionLease is the lease of the election session this replica
	// campaigns with (takeover.go tells its own from a predecessor's).
	electionLease atomic.Int64
}

// New starts etcd (or connects to it), binds the API listener and builds
// every part. sinks receive each discovery snapshot.
func New(ctx context.Context, cfg Config, sinks ...publish.Sink) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, logger: cfg.Logger.With("component", "controlplane")}
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) > 0 && (cfg.EtcdPeerAddr != "" || len(cfg.Join) > 0) {
		return nil, errors.New("controlplane: --etcd-peer-addr and --join are for the embedded etcd; with --etcd-endpoints, manage the etcd cluster's members with etcdctl")
	}
	if len(endpoints) == 0 {
		e, err := s.startEmbeddedEtcd(ctx)
		if err != nil {
			return nil, err
		}
		s.etcd = e
		endpoints = []string{e.Endpoint()}
	}
	cli, err := DialEtcd(ctx, endpoints, cfg.EtcdTLS)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.cli = cli
	s.store = store.New(cli)
	s.auth = store.NewAuthCache(cli, cfg.Logger)
	// Bound before the replica's certificate is made: the replica's name
	// defaults to the address it listens on.
	s.lis, err = net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("controlplane: listen on %s: %w", cfg.APIAddr, err)
	}
	keyFile := cfg.SecretsKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, "secrets.key")
	}
	box, err := secrets.LoadOrCreate(keyFile)
	if err != nil {
		s.Close()
		return nil, err
	}
	if err := s.setUpPKI(ctx, box); err != nil {
		s.Close()
		return nil, err
	}
	s.cache = store.NewCache(cli, cfg.Logger)
	ccfg := controller.DefaultConfig()
	ccfg.DrainDelay, ccfg.Logger, ccfg.Registerer = cfg.DrainDelay, cfg.Logger, cfg.Registerer
	if cfg.LostGrace > 0 {
		ccfg.LostGrace = cfg.LostGrace
	}
	ccfg.Loads = cfg.Loads
	// A control plane coming back (or a new leader) judges no node for
	// its own absence: agents get NodeTimeout plus a few heartbeats and
	// reconnects to be heard again.
	grace := cfg.NodeTimeout + 3*cfg.HeartbeatInterval + 2*time.Second
	ccfg.StartGrace = grace
	ccfg.JoinGrace = cfg.NodeTimeout
	if cfg.Registerer != nil {
		s.registerMembershipMetrics(cfg.Registerer)
	}
	s.publisher = publish.NewPublisher(s.cache, cfg.Logger, cfg.Registerer, sinks...)
	s.publisher.SetGrace(grace)
	ccfg.VersionFor = s.publisher.VersionFor
	s.ctrl = controller.New(ccfg, s.store.Tracked(), s.cache)
	// Every replica records the rollouts' history for the dashboard from
	// its own cache and load window (no leader, no etcd writes).
	hcfg := rollouthistory.DefaultConfig()
	hcfg.VersionFor, hcfg.Logger = s.publisher.VersionFor, cfg.Logger
	s.history = rollouthistory.New(hcfg, s.cache, cfg.Loads)
	s.liveness = newLiveness(cfg.NodeTimeout)
	guarded := "" // the embedded etcd's disk; an external one is not ours to watch
	if len(cfg.EtcdEndpoints) == 0 {
		guarded = cfg.DataDir
	}
	s.api, err = apiserver.New(apiserver.Config{
		DataDir:           guarded,
		MinFreeDisk:       cfg.MinFreeDisk,
		Liveness:          s.liveness,
		Secrets:           box,
		ImageDir:          filepath.Join(cfg.DataDir, "images"),
		ClusterCIDR:       cfg.ClusterCIDR,
		NodeSubnetBits:    cfg.NodeSubnetBits,
		HeartbeatInterval: cfg.HeartbeatInterval,
		NodeTimeout:       cfg.NodeTimeout,
		CA:                s.ca,
		Auth:              s.auth,
		CertTTL:           cfg.CertTTL,
		MaxNodes:          cfg.MaxNodes,
		MaxImageSize:      cfg.MaxImageSize,
		ImageQuota:        cfg.ImageQuota,
		ReplicaTLS:        pki.ClientTLS(s.replicaCert, s.ca.Pool()),
		ReplicaCert:       s.replicaCert,
		Gateways:          cfg.Gateways,
		Loads:             cfg.Loads,
		Members:           s,
		Logger:            cfg.Logger,
	}, s.store, s.cache, s.publisher)
	if err != nil {
		s.Close()
		return nil, err
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(8 << 20),
		// One connection per agent, mostly idle, sending small messages:
		// a 16 KiB read buffer (not 32) saves 16 MiB at 1,000 agents
		// (write buffers are shared by default).
		grpc.ReadBufferSize(16 << 10),
		grpc.ChainUnaryInterceptor(s.api.UnaryInterceptor),
		grpc.ChainStreamInterceptor(s.api.StreamInterceptor)}
	if !benchPlaintext {
		opts = append(opts, grpc.Creds(credentials.NewTLS(pki.ServerTLS(s.replicaCert, s.ca.Pool(), false))))
	}
	s.grpc = grpc.NewServer(opts...)
	pb.RegisterBerthServer(s.grpc, s.api)
	pb.RegisterNodeAgentServer(s.grpc, s.api)
	if s.adminConfig, err = s.writeAdminConfig(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.store.IndexImageReferences(ctx); err != nil {
		s.Close()
		return nil, err
	}
	// Services stored before route claims existed get theirs, oldest
	// first; a route two of them claim stays with the older.
	lost, err := s.store.ClaimExistingRoutes(ctx)
	if err != nil {
		s.Close()
		return nil, err
	}
	for _, l := range lost {
		cfg.Logger.Warn("route conflict in stored services", "conflict", l)
	}
	if err := s.api.SweepImages(ctx); err != nil {
		cfg.Logger.Warn("could not sweep the image directory", "err", err)
	}
	return s, nil
}

// benchPlaintext is false in every build but the berthbench one
// (bench_plaintext.go).
var benchPlaintext bool

// APIAddr is the address the API listens on.
func (s *Server) APIAddr() string { return s.lis.Addr().String() }

// AdminConfigPath is the CLI configuration written for the first admin
// ("" when disabled).
func (s *Server) AdminConfigPath() string { return s.adminConfig }

// Publisher gives access to the latest discovery snapshot.
func (s *Server) Publisher() *publish.Publisher { return s.publisher }

// Cache is the replica's watch-fed view of the cluster.
func (s *Server) Cache() *store.Cache { return s.cache }

// RolloutHistory is the replica's record of the rollouts it saw run (the
// dashboard's plots).
func (s *Server) RolloutHistory() *rollouthistory.Recorder { return s.history }

// Store exposes the typed store (for tests and tools).
func (s *Server) Store() *store.Store { return s.store }

// Run serves until ctx ends, then stops everything it started.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	// The parts run in one errgroup: the first to fail stops them all,
	// and its error, named, is Run's. The API joins them; it stops when
	// they do (gracefully, for at most 3 s).
	eg, gctx := errgroup.WithContext(ctx)
	run := func(name string, f func(context.Context) error) {
		eg.Go(func() error {
			if err := f(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}
	run("cache", s.cache.Run)
	run("auth cache", s.auth.Run)
	run("replica certificate", s.renewReplicaCert)
	run("controller", s.lead)
	run("publisher", s.publisher.Run)
	run("rollout history", s.history.Run)
	run("replica session", s.replicaSession)
	run("node liveness", s.runLiveness)
	run("node feed", s.api.RunNodeFeed)
	run("image copies", s.api.ReplicateImages)
	run("leader watch", s.watchLeader)
	run("api", func(context.Context) error {
		if err := s.grpc.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
	if s.etcd != nil {
		run("etcd", func(ctx context.Context) error {
			select {
			case err := <-s.etcd.Err():
				return err
			case <-ctx.Done():
				return nil
			}
		})
	}
	s.logger.Info("control plane serving", "api", s.APIAddr())
	<-gctx.Done() // shutdown, or a part failed
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		s.grpc.Stop()
	}
	// Parts write their goodbyes (records, resignation) with deadlines of
	// their own, but etcd's election resigns on the client's context
	// when a campaign is cancelled, which without quorum waits for ever:
	// after a grace the etcd client is closed, ending every call.
	waited := make(chan error, 1)
	go func() { waited <- eg.Wait() }()
	select {
	case err := <-waited:
		return err
	case <-time.After(5 * time.Second):
		s.logger.Warn("parts still waiting on etcd 5s after shutdown (no quorum?): closing the etcd client")
		s.cli.Close()
		return <-waited
	}
}

// ElectionPrefix is where control plane replicas campaign for the lead.
const ElectionPrefix = store.ElectionPrefix

// IsLeader reports whether this replica runs the controllers now.
func (s *Server) IsLeader() bool { return s.leader.Load() }

// lead campaigns for leadership and runs the controllers (scheduler
// included) only while this replica holds it; the API, discovery, DNS and
// xDS feeds run on every replica. A leader whose etcd session expires
// stops its controllers at once and campaigns again.
func (s *Server) lead(ctx context.Context) error {
	name := s.replicaName()
	for ctx.Err() == nil {
		sess, ok := s.newSession(ctx, "leader election")
		if !ok {
			return nil
		}
		s.electionLease.Store(int64(sess.Lease()))
		el := concurrency.NewElection(sess, ElectionPrefix)
		if err := el.Campaign(ctx, name); err != nil {
			sess.Close()
			if ctx.Err() != nil {
				return nil
			}
			s.logger.Warn("leader election: campaign failed, retrying", "err", err)
			continue
		}
		s.logger.Info("elected leader: running the scheduler and controllers", "replica", name)
		s.leader.Store(true)
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
				s.logger.Warn("lost the lead (etcd session expired): stopping controllers", "replica", name)
			case <-lctx.Done():
			}
			cancel()
		}()
		// The election key deleted (another replica revoked the lease,
		// takeover.go) ends the lead at once, not at the next keepalive.
		// Watched from the key's creation: a deletion before the watch
		// is set up is not missed.
		go func() {
			for wr := range s.cli.Watch(lctx, el.Key(), clientv3.WithFilterPut(), clientv3.WithRev(el.Rev()+1)) {
				if len(wr.Events) > 0 {
					s.logger.Warn("lost the lead (election key deleted: another replica took over): stopping controllers", "replica", name)
					cancel()
					return
				}
			}
		}()
		err := s.ctrl.Run(lctx)
		cancel()
		s.leader.Store(false)
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_ = el.Resign(rctx)
		rcancel()
		sess.Close()
		if err != nil && ctx.Err() == nil {
			s.logger.Warn("controllers stopped", "err", err)
		}
	}
	return nil
}

// Close releases etcd and the client; Run calls it on exit.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.cli != nil {
			s.cli.Close()
		}
		if s.etcd != nil {
			s.etcd.Close()
		}
		if s.lis != nil && s.grpc == nil {
			s.lis.Close() // never served
		}
	})
}
