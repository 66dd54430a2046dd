package controlplane

// The control plane's own membership: the embedded etcd as one member of
// a multi-member cluster (formed by the first replica, joined by the
// others through a running replica's API), each replica's record in etcd,
// `berth get servers`, removal of a retired replica's member, and etcd
// snapshots.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/statemetrics"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/internal/atomicfile"
	"github.com/berth-dev/berth/internal/buildinfo"
	"github.com/berth-dev/berth/pki"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// memberName is this replica's etcd member name: --name, else the host's
// name.
func (s *Server) memberName() string {
	if s.cfg.Name != "" {
		return s.cfg.Name
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "berth"
	}
	return h
}

// startEmbeddedEtcd starts the replica's etcd member: alone on Unix
// sockets without --etcd-peer-addr; otherwise a member listening for its
// peers with mutual TLS, which forms a new cluster, or joins one through
// a replica of cfg.Join on its first start, or restarts from its data.
func (s *Server) startEmbeddedEtcd(ctx context.Context) (*EmbeddedEtcd, error) {
	cfg := s.cfg
	dir := filepath.Join(cfg.DataDir, "etcd")
	if cfg.EtcdPeerAddr == "" {
		if len(cfg.Join) > 0 {
			return nil, errors.New("controlplane: --join needs --etcd-peer-addr (the address this replica's etcd member listens on for its peers)")
		}
		return StartEmbeddedEtcd(dir, cfg.Etcd, s.logger)
	}
	restart := HasEtcdData(dir)
	joining := len(cfg.Join) > 0 && !restart
	ca, err := s.localCA(joining)
	if err != nil {
		return nil, err
	}
	p := EtcdPeering{Name: s.memberName(), ListenAddr: cfg.EtcdPeerAddr, AdvertiseAddr: cfg.EtcdAdvertisePeerAddr}
	if p.AdvertiseAddr == "" {
		if host, _, err := net.SplitHostPort(p.ListenAddr); err != nil {
			return nil, fmt.Errorf("controlplane: --etcd-peer-addr %q: %w", p.ListenAddr, err)
		} else if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return nil, fmt.Errorf("controlplane: --etcd-peer-addr %q binds every address: say which one the other members reach with --etcd-advertise-peer-addr", p.ListenAddr)
		}
	}
	if err := s.writePeerCert(ca, dir, &p); err != nil {
		return nil, err
	}
	s.peering, s.peerCA = &p, ca
	if !joining {
		e, err := StartEtcdMember(dir, p, cfg.Etcd, s.logger)
		if err != nil {
			return nil, err
		}
		if err := e.advertise(ctx, p.PeerURL()); err != nil {
			e.Close()
			return nil, err
		}
		return e, nil
	}
	return s.joinEtcd(ctx, ca, dir, p)
}

// joinEtcd adds this replica's member to the cluster of cfg.Join's
// replicas (as a learner), starts it, and has it promoted.
func (s *Server) joinEtcd(ctx context.Context, ca *pki.CA, dir string, p EtcdPeering) (*EmbeddedEtcd, error) {
	conns, err := s.dialReplicas(ca, s.cfg.Join)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// etcd refuses a new member while another joined a moment ago
	// ("unhealthy cluster", "too many learners"): ask again, through each
	// replica in turn.
	var client pb.BerthClient
	var resp *pb.JoinEtcdResponse
	joinBy := time.Now().Add(time.Minute)
	for attempt := 0; ; attempt++ {
		addr := s.cfg.Join[attempt%len(conns)]
		client = pb.NewBerthClient(conns[attempt%len(conns)])
		jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err = client.JoinEtcd(jctx, &pb.JoinEtcdRequest{Name: p.Name, PeerUrl: p.PeerURL()})
		cancel()
		if err == nil {
			break
		}
		// A refused handshake (another cluster's CA) is no outage.
		msg := status.Convert(err).Message()
		if c := status.Code(err); (c != codes.Unavailable && c != codes.DeadlineExceeded) || time.Now().After(joinBy) ||
			strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:") || !pause(ctx, time.Second) {
			return nil, fmt.Errorf("controlplane: join the etcd cluster through %s: %w", addr, err)
		}
		s.logger.Warn("join: asking again", "replica", addr, "err", err)
	}
	s.logger.Info("added as an etcd learner; starting the member", "member", fmt.Sprintf("%x", resp.MemberId), "initial-cluster", resp.InitialCluster)
	p.InitialCluster, p.Existing = resp.InitialCluster, true
	e, err := StartEtcdMember(dir, p, s.cfg.Etcd, s.logger)
	if err != nil {
		return nil, err
	}
	// A learner serves no reads the replica needs: it is promoted as soon
	// as it caught up with the leader (etcd refuses before).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := client.PromoteEtcdMember(pctx, &pb.PromoteEtcdMemberRequest{MemberId: resp.MemberId})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || !pause(ctx, 500*time.Millisecond) {
			e.Close()
			return nil, fmt.Errorf("controlplane: etcd member %s not promoted after 2m (it stays a learner; `berth controlplane remove %s` removes it): %w", p.Name, p.Name, err)
		}
		s.logger.Info("etcd learner catching up", "err", status.Convert(err).Message())
	}
	s.logger.Info("etcd member promoted to voter", "member", p.Name)
	return e, nil
}

// pause waits d, or less if ctx ends (false then).
func pause(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// advertise makes the member's recorded peer URL the one it advertises:
// a single member started before on Unix sockets, or a member whose
// address changed, is reached at its new address from now on.
func (e *EmbeddedEtcd) advertise(ctx context.Context, peerURL string) error {
	srv := e.etcd.Server
	id := uint64(srv.MemberID())
	m := srv.Cluster().Member(srv.MemberID())
	if m == nil || slices.Equal(m.PeerURLs, []string{peerURL}) {
		return nil
	}
	cli, err := DialEtcd(ctx, []string{e.endpoint}, nil)
	if err != nil {
		return err
	}
	defer cli.Close()
	uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.MemberUpdate(uctx, id, []string{peerURL}); err != nil {
		return fmt.Errorf("etcd: advertise peer URL %s (was %v): %w", peerURL, m.PeerURLs, err)
	}
	return nil
}

// localCA is the cluster CA from --ca-cert/--ca-key or --data-dir/pki; a
// first replica forming a cluster creates it there (setUpPKI stores it in
// etcd next). A replica joining must be given it: its peer certificate,
// and the replica certificate it joins with, are signed by it.
func (s *Server) localCA(joining bool) (*pki.CA, error) {
	certFile, keyFile := s.cfg.CACertFile, s.cfg.CAKeyFile
	dir := filepath.Join(s.cfg.DataDir, "pki")
	if certFile == "" {
		certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	}
	certPEM, err := os.ReadFile(certFile)
	if err == nil {
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("controlplane: CA key %s: %w", keyFile, err)
		}
		return pki.ParseCA(certPEM, keyPEM)
	}
	if !errors.Is(err, os.ErrNotExist) || s.cfg.CACertFile != "" {
		return nil, fmt.Errorf("controlplane: CA certificate %s: %w", certFile, err)
	}
	if joining {
		return nil, fmt.Errorf("controlplane: joining needs the cluster CA: copy ca.crt and ca.key from a running server's --data-dir/pki and pass them with --ca-cert and --ca-key (and the same --secrets-key-file)")
	}
	ca, keyPEM, err := pki.NewCA(s.memberName(), time.Now())
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("controlplane: CA key: %w", err)
	}
	if err := atomicfile.Write(certFile, ca.CertPEM, 0o644); err != nil {
		return nil, fmt.Errorf("controlplane: CA certificate: %w", err)
	}
	s.logger.Info("created the cluster CA", "dir", dir, "ca-hash", ca.Pin())
	return ca, nil
}

// writePeerCert issues the member's peer certificate (CN EtcdPeerCN, for
// the advertised and listened hosts) into dir/pki and points p at it.
// etcd reads the files at every handshake: rewriting them renews it.
func (s *Server) writePeerCert(ca *pki.CA, dir string, p *EtcdPeering) error {
	var hosts []string
	for _, a := range []string{p.ListenAddr, p.AdvertiseAddr} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hosts = append(hosts, h)
			}
		}
	}
	certPEM, keyPEM, err := ca.Issue(pki.Identity{Role: pki.RoleReplica, Name: EtcdPeerCN}, max(s.cfg.CertTTL, DefaultConfig().CertTTL), time.Now(), hosts...)
	if err != nil {
		return fmt.Errorf("controlplane: etcd peer certificate: %w", err)
	}
	pdir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pdir, 0o700); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	p.CertFile, p.KeyFile, p.CAFile = filepath.Join(pdir, "peer.crt"), filepath.Join(pdir, "peer.key"), filepath.Join(pdir, "ca.crt")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{p.KeyFile, keyPEM, 0o600}, {p.CertFile, certPEM, 0o644}, {p.CAFile, ca.CertPEM, 0o644}} {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return fmt.Errorf("controlplane: etcd peer certificate: %w", err)
		}
	}
	return nil
}

// dialReplicas makes a connection to each replica's API as a replica
// (one certificate of its own from the CA), checking the servers are ones.
func (s *Server) dialReplicas(ca *pki.CA, addrs []string) ([]*grpc.ClientConn, error) {
	certPEM, keyPEM, err := ca.Issue(pki.Identity{Role: pki.RoleReplica, Name: s.memberName()}, time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	kp, err := pki.NewKeyPair(pki.WithChain(certPEM, ca.CertPEM), keyPEM)
	if err != nil {
		return nil, err
	}
	creds := grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(kp, ca.Pool())))
	var conns []*grpc.ClientConn
	for _, addr := range addrs {
		conn, err := grpc.NewClient(addr, creds)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("controlplane: replica %s: %w", addr, err)
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

// JoinEtcd adds a replica's etcd member as a learner (it cannot change
// the quorum until promoted). Asking again for the same member (a joiner
// restarted before it started) answers the same.
func (s *Server) JoinEtcd(ctx context.Context, name, peerURL string) (*pb.JoinEtcdResponse, error) {
	if s.etcd == nil {
		return nil, status.Error(codes.FailedPrecondition, "this control plane uses an external etcd (--etcd-endpoints): add members with etcdctl")
	}
	if !strings.HasPrefix(peerURL, "https://") {
		return nil, status.Errorf(codes.InvalidArgument, "join: peer_url %q: want https://host:port", peerURL)
	}
	if name == "" || strings.ContainsAny(name, "=,") {
		return nil, status.Errorf(codes.InvalidArgument, "join: member name %q: want a non-empty name without '=' or ','", name)
	}
	list, err := s.cli.MemberList(ctx)
	if err != nil {
		return nil, etcdErr("join: list members", err)
	}
	var id uint64
	for _, m := range list.Members {
		switch {
		case slices.Contains(m.PeerURLs, peerURL) && (m.Name == "" || (m.IsLearner && m.Name == name)):
			id = m.ID // asked again: not started yet, or still a learner
		case slices.Contains(m.PeerURLs, peerURL):
			return nil, status.Errorf(codes.AlreadyExists, "join: %s is member %s (%x) already; if its data was lost, remove it first with `berth controlplane remove %s`", peerURL, m.Name, m.ID, m.Name)
		case m.Name == name:
			return nil, status.Errorf(codes.AlreadyExists, "join: a member named %s exists already (at %v): choose another --name, or remove it with `berth controlplane remove %s`", name, m.PeerURLs, name)
		}
	}
	if id == 0 {
		resp, err := s.cli.MemberAddAsLearner(ctx, []string{peerURL})
		if err != nil {
			return nil, etcdErr("join: add member", err)
		}
		id, list.Members = resp.Member.ID, resp.Members
		s.logger.Info("etcd member added as a learner", "member", name, "peer-url", peerURL)
		s.event(ctx, "Normal", "ServerJoining", fmt.Sprintf("server %s joins the control plane: etcd member %x at %s added as a learner", name, id, peerURL))
	}
	var ic []string
	for _, m := range list.Members {
		n := m.Name
		if m.ID == id {
			n = name
		}
		if n == "" { // another member added and not started: it is not in our cluster yet
			continue
		}
		for _, u := range m.PeerURLs {
			ic = append(ic, n+"="+u)
		}
	}
	return &pb.JoinEtcdResponse{MemberId: id, InitialCluster: strings.Join(ic, ",")}, nil
}

// PromoteEtcdMember makes a caught-up learner a voting member.
func (s *Server) PromoteEtcdMember(ctx context.Context, id uint64) error {
	if s.etcd == nil {
		return status.Error(codes.FailedPrecondition, "this control plane uses an external etcd")
	}
	if _, err := s.cli.MemberPromote(ctx, id); err != nil {
		return etcdErr("promote member", err)
	}
	s.event(ctx, "Normal", "ServerJoined", fmt.Sprintf("etcd member %x promoted to voter", id))
	return nil
}

// RemoveServer removes a retired replica: its etcd member (etcd refuses
// when the remaining started members would be fewer than a quorum) and
// its record.
func (s *Server) RemoveServer(ctx context.Context, name string) (*pb.RemoveServerResponse, error) {
	list, err := s.cli.MemberList(ctx)
	if err != nil {
		return nil, etcdErr("remove server: list members", err)
	}
	var id uint64
	for _, m := range list.Members {
		if m.Name == name {
			id = m.ID
		}
	}
	if id == 0 {
		return nil, status.Errorf(codes.NotFound, "remove server: no etcd member is named %s (see `berth get servers`)", name)
	}
	if s.etcd != nil && uint64(s.etcd.etcd.Server.MemberID()) == id {
		return nil, status.Errorf(codes.FailedPrecondition, "remove server: %s is the replica answering this call; ask another replica (berth --server) so that it can finish", name)
	}
	resp, err := s.cli.MemberRemove(ctx, id)
	if err != nil {
		return nil, etcdErr("remove member "+name, err)
	}
	_ = s.store.DeleteServer(ctx, name)
	s.event(ctx, "Normal", "ServerRemoved", fmt.Sprintf("server %s removed: etcd member %x left the cluster, %d remain", name, id, len(resp.Members)))
	return &pb.RemoveServerResponse{EtcdMemberId: id, MembersLeft: int32(len(resp.Members))}, nil
}

// event records a cluster event about the control plane, best effort.
func (s *Server) event(ctx context.Context, typ, reason, msg string) {
	if err := s.store.RecordEvent(ctx, store.Event{At: time.Now(), Object: "server", Reason: reason, Message: msg, Type: typ}); err != nil {
		s.logger.Debug("record event", "reason", reason, "err", err)
	}
}

// etcdErr turns an etcd client error into a gRPC status that says what
// was being done; no leader means no quorum.
func etcdErr(what string, err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader):
		return status.Errorf(codes.Unavailable, "%s: etcd has no leader (quorum lost: fewer than half of the members reachable)", what)
	case errors.Is(err, rpctypes.ErrUnhealthy), errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrTooManyLearners): // another member joining: try again
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	case errors.Is(err, rpctypes.ErrMemberNotLearner), errors.Is(err, rpctypes.ErrMemberLearnerNotReady):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		if strings.Contains(st.Message(), "no leader") || strings.Contains(st.Message(), "leader changed") {
			return status.Errorf(codes.Unavailable, "%s: etcd has no leader (quorum lost: fewer than half of the members reachable): %s", what, st.Message())
		}
		return status.Errorf(st.Code(), "%s: %s", what, st.Message())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Errorf(codes.Unavailable, "%s: etcd did not answer in time (quorum lost?): %v", what, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// reportServer keeps this replica's record fresh under sess's lease
// until the session or ctx ends.
func (s *Server) reportServer(ctx context.Context, sess *concurrency.Session, started time.Time) {
	t := time.NewTicker(store.ServerReportEvery)
	defer t.Stop()
	for {
		r := s.serverRecord(started)
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.store.PutServer(wctx, sess.Lease(), r)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.logger.Debug("server record", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
			return
		case <-t.C:
		}
	}
}

// serverRecord is this replica's record now.
func (s *Server) serverRecord(started time.Time) store.ServerRecord {
	r := store.ServerRecord{Name: s.replicaName(), APIAddress: s.AdvertiseAddr(), Version: buildinfo.Get().Version,
		StartedAt: started, ReportedAt: time.Now(), Leader: s.IsLeader()}
	if s.etcd != nil {
		srv := s.etcd.etcd.Server
		r.MemberID = uint64(srv.MemberID())
		r.EtcdLeader = srv.Leader() == srv.MemberID()
		r.RaftTerm, r.RaftIndex = srv.Term(), srv.CommittedIndex()
		r.DBSize = srv.Backend().Size()
		if srv.Leader() == 0 {
			r.EtcdError = "no leader"
		}
	}
	return r
}

// ListServers is `berth get servers`: the replicas' records, the leading
// replica, and every etcd member with its health.
func (s *Server) ListServers(ctx context.Context) (*pb.ListServersResponse, error) {
	out := &pb.ListServersResponse{Embedded: s.etcd != nil}
	// Without quorum, what this replica's member holds (stale records,
	// which then show as old) is still the best picture there is.
	var read []clientv3.OpOption
	recs, err := s.store.Servers(clientv3.WithRequireLeader(ctx))
	if err != nil {
		read = []clientv3.OpOption{clientv3.WithSerializable()}
		if recs, err = s.store.Servers(ctx, read...); err != nil {
			return nil, etcdErr("list servers", err)
		}
	}
	if resp, err := s.cli.Get(ctx, ElectionPrefix, append(read, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))...); err == nil && len(resp.Kvs) > 0 {
		out.Leader = string(resp.Kvs[0].Value)
	}
	if s.etcd != nil { // this replica's own member, first hand
		for i, r := range recs {
			if r.Name == s.replicaName() {
				recs[i] = s.serverRecord(r.StartedAt)
			}
		}
	}
	byMember := map[uint64]store.ServerRecord{}
	for _, r := range recs {
		out.Servers = append(out.Servers, &pb.Server{Name: r.Name, ApiAddress: r.APIAddress, Leader: r.Name == out.Leader,
			Version: r.Version, StartedAt: timestamppb.New(r.StartedAt), ReportedAt: timestamppb.New(r.ReportedAt), EtcdMemberId: r.MemberID})
		if r.MemberID != 0 {
			byMember[r.MemberID] = r
		}
	}
	list, err := s.cli.MemberList(ctx, read...)
	if err != nil {
		return nil, etcdErr("list etcd members", err)
	}
	slices.SortFunc(list.Members, func(a, b *etcdserverpb.Member) int { return strings.Compare(a.Name, b.Name) })
	for _, m := range list.Members {
		em := &pb.EtcdMember{Id: m.ID, Name: m.Name, PeerUrls: m.PeerURLs, Learner: m.IsLearner}
		if !m.IsLearner {
			out.Voters++
		}
		if r, ok := byMember[m.ID]; ok {
			em.Server = r.Name
			fresh := time.Since(r.ReportedAt) < 3*store.ServerReportEvery
			em.Healthy, em.Leader, em.RaftTerm, em.RaftIndex, em.DbSize, em.Error = fresh && r.EtcdError == "", r.EtcdLeader, r.RaftTerm, r.RaftIndex, r.DBSize, r.EtcdError
			if !fresh {
				em.Error = "its server's last report is " + time.Since(r.ReportedAt).Round(time.Second).String() + " old"
			}
		} else if len(m.ClientURLs) > 0 && !strings.HasPrefix(m.ClientURLs[0], "unix") {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := s.cli.Status(sctx, m.ClientURLs[0])
			cancel()
			if err != nil {
				em.Error = err.Error()
			} else {
				em.Healthy, em.Leader, em.RaftTerm, em.RaftIndex, em.DbSize = len(st.Errors) == 0, st.Leader == m.ID, st.RaftTerm, st.RaftIndex, st.DbSize
				em.Error = strings.Join(st.Errors, "; ")
			}
		} else {
			em.Error = "no server reports it (down, or not started)"
			if m.Name == "" {
				em.Error = "added, not started yet"
			}
		}
		out.Members = append(out.Members, em)
	}
	out.Quorum = out.Voters/2 + 1
	return out, nil
}

// Snapshot streams etcd's snapshot of the whole keyspace, and the
// revision it holds.
func (s *Server) Snapshot(ctx context.Context) (io.ReadCloser, int64, error) {
	resp, err := s.cli.Get(ctx, "/berth/", clientv3.WithLimit(1), clientv3.WithCountOnly())
	if err != nil {
		return nil, 0, etcdErr("snapshot", err)
	}
	rc, err := s.cli.Snapshot(ctx)
	if err != nil {
		return nil, 0, etcdErr("snapshot", err)
	}
	return rc, resp.Header.Revision, nil
}

// registerMembershipMetrics exports the cluster state (statemetrics) and
// whether this replica leads and, for
// an embedded member, whether its etcd has a leader (0: no quorum, writes
// fail), whether it is that leader, and its database size: what an
// operator alerts on.
func (s *Server) registerMembershipMetrics(reg prometheus.Registerer) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_controlplane_leader", Help: "1 while this replica holds the election and runs the controllers."},
			func() float64 { return b(s.IsLeader()) }),
	}
	if s.etcd != nil {
		srv := s.etcd.etcd.Server
		gauges = append(gauges,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_etcd_has_leader", Help: "1 while this replica's embedded etcd member knows a leader (0: no quorum; writes fail)."},
				func() float64 { return b(srv.Leader() != 0) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_etcd_is_leader", Help: "1 while this replica's embedded etcd member is the etcd leader."},
				func() float64 { return b(srv.Leader() == srv.MemberID()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_etcd_db_size_bytes", Help: "Size of this replica's etcd database file."},
				func() float64 { return float64(srv.Backend().Size()) }),
		)
	}
	// The cluster's state (services, rollouts, nodes), from the cache,
	// while this replica leads.
	gauges = append(gauges, statemetrics.New(s.cache.View, s.IsLeader))
	for _, g := range gauges {
		if err := reg.Register(g); err != nil {
			s.logger.Warn("membership metric not registered", "err", err)
		}
	}
}
