package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/apierr"
	"github.com/berth-dev/berth/internal/atomicfile"
	"github.com/berth-dev/berth/pki"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// member is one replica of a multi-member control plane in a test.
type member struct {
	cfg    Config
	srv    *Server
	cancel context.CancelFunc
	done   chan error
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func memberConfig(t *testing.T, name string) Config {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.APIAddr, cfg.Name = t.TempDir(), "127.0.0.1:0", name
	cfg.EtcdPeerAddr = freePort(t)
	cfg.Etcd = EtcdTuning{TickMs: 20, ElectionMs: 200}
	cfg.ElectionTTL = 2 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Registerer = prometheus.NewRegistry()
	return cfg
}

func runMember(t *testing.T, cfg Config) *member {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("start %s: %v", cfg.Name, err)
	}
	m := &member{cfg: cfg, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- srv.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

// stop ends the replica (its etcd member with it); safe to call twice.
func (m *member) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
	m.cancel = nil
}

// joinConfig is a replica joining first's cluster: the cluster CA and
// secrets key copied from first's data dir, as the README says.
func joinConfig(t *testing.T, name string, first *member) Config {
	cfg := memberConfig(t, name)
	cfg.Join = []string{first.srv.APIAddr()}
	cfg.CACertFile = filepath.Join(first.cfg.DataDir, "pki", "ca.crt")
	cfg.CAKeyFile = filepath.Join(first.cfg.DataDir, "pki", "ca.key")
	cfg.SecretsKeyFile = filepath.Join(first.cfg.DataDir, "secrets.key")
	return cfg
}

func servers(t *testing.T, cli pb.BerthClient) *pb.ListServersResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := cli.ListServers(ctx, &pb.ListServersRequest{})
	if err != nil {
		t.Fatalf("list servers: %v", err)
	}
	return l
}

func healthyVoters(l *pb.ListServersResponse) int {
	n := 0
	for _, m := range l.GetMembers() {
		if m.GetHealthy() && !m.GetLearner() {
			n++
		}
	}
	return n
}

// TestThreeMemberControlPlane forms a three-member etcd from three
// replicas (the first forms it, the others join through its API), shows
// it in ListServers, keeps accepting writes when a member dies, refuses
// them naming quorum when two are down, and resumes when one returns.
func TestThreeMemberControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("three embedded etcd members")
	}
	began := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }
	one := runMember(t, memberConfig(t, "one"))
	step("one")
	two := runMember(t, joinConfig(t, "two", one))
	step("two")
	three := runMember(t, joinConfig(t, "three", one))
	step("three")

	cli3 := pb.NewBerthClient(adminConn(t, three.srv))
	gauge := func(reg *prometheus.Registry, name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	eventually(t, "three healthy voters", func() (bool, string) {
		l := servers(t, cli3)
		return l.GetVoters() == 3 && l.GetQuorum() == 2 && healthyVoters(l) == 3 && len(l.GetServers()) == 3 && l.GetLeader() != "", l.String()
	})

	step("A write through one replica")
	reg3 := three.cfg.Registerer.(*prometheus.Registry)
	if gauge(reg3, "berth_etcd_has_leader") != 1 {
		t.Fatal("berth_etcd_has_leader is not 1 with three healthy members")
	}
	// A write through one replica is read through another.
	ctx := context.Background()
	if _, err := cli3.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	cli2 := pb.NewBerthClient(adminConn(t, two.srv))
	if _, err := cli2.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "hello"}); err != nil {
		t.Fatalf("a service applied through three, read through two: %v", err)
	}

	// The cluster state's gauges come from the leading replica alone.
	eventually(t, "hello's desired replicas exported by the leader only", func() (bool, string) {
		var who []string
		for _, m := range []*member{one, two, three} {
			mfs, err := m.cfg.Registerer.(*prometheus.Registry).Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() == "berth_service_replicas_desired" && len(mf.GetMetric()) > 0 {
					who = append(who, fmt.Sprintf("%s (leader %v)", m.cfg.Name, m.srv.IsLeader()))
				}
			}
		}
		return len(who) == 1 && strings.HasSuffix(who[0], "(leader true)"), fmt.Sprint(who)
	})

	step("Joining under a name taken")
	// Joining under a name taken is refused, naming it.
	dup := joinConfig(t, "two", one)
	if srv, err := New(ctx, dup); err == nil || !strings.Contains(err.Error(), "named two exists") {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("a second member named two: %v", err)
	}

	step("One member down")
	// One member down (the first, which formed the cluster): writes go on.
	one.stop()
	eventually(t, "writes after one member died", func() (bool, string) {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := cli3.Scale(wctx, &pb.ScaleRequest{Namespace: "default", Name: "hello", Replicas: 2})
		return err == nil, fmt.Sprint(err)
	})
	eventually(t, "one reported unhealthy", func() (bool, string) {
		l := servers(t, cli3)
		return healthyVoters(l) == 2 && len(l.GetServers()) == 2, l.String()
	})

	step("Two down")
	// Two down: no quorum. Writes fail, saying so.
	two.stop()
	// Once the member knows it has no leader (an election timeout later;
	// a write before that waits for the proposal to time out).
	eventually(t, "berth_etcd_has_leader 0 without quorum", func() (bool, string) {
		return gauge(reg3, "berth_etcd_has_leader") == 0, ""
	})
	wctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	_, err := cli3.Scale(wctx, &pb.ScaleRequest{Namespace: "default", Name: "hello", Replicas: 3})
	cancel()
	if err == nil || !strings.Contains(err.Error(), "quorum") || !apierr.IsNoQuorum(err) {
		t.Fatalf("a write without quorum: %v, want an error naming quorum and marked as such (the CLI acts on the mark)", err)
	}
	// get servers is for this moment: it answers from this member.
	l := servers(t, cli3)
	var threeSays string
	for _, m := range l.GetMembers() {
		if m.GetName() == "three" {
			threeSays = m.GetError()
		}
	}
	if l.GetVoters() != 3 || healthyVoters(l) != 0 || threeSays != "no leader" {
		t.Fatalf("servers without quorum: %v", l)
	}

	step("One returns")
	// One returns (from its data: no join): writes resume.
	restart := two.cfg
	restart.Registerer = prometheus.NewRegistry() // a process of its own
	two = runMember(t, restart)
	eventually(t, "writes after a member returned", func() (bool, string) {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := cli3.Scale(wctx, &pb.ScaleRequest{Namespace: "default", Name: "hello", Replicas: 3})
		return err == nil, fmt.Sprint(err)
	})

	step("The retired first")
	// The retired first replica is removed; two members remain, both
	// healthy, and its name can join again with a new data dir.
	if _, err := cli3.RemoveServer(ctx, &pb.RemoveServerRequest{Name: "one"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two voters after the removal", func() (bool, string) {
		l := servers(t, cli3)
		return l.GetVoters() == 2 && healthyVoters(l) == 2, l.String()
	})
	_, err = cli3.RemoveServer(ctx, &pb.RemoveServerRequest{Name: "nobody"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("removing an unknown server: %v", err)
	}

	// A replica stopped while its etcd has no quorum stops (etcd's
	// election resigns on the client's context, which waited for ever).
	// The follower, campaigning, is the one that waited: stop the leader
	// first.
	leader, follower := three, two
	if two.srv.IsLeader() {
		leader, follower = two, three
	}
	leader.stop()
	// The follower may have won while the leader resigned; without
	// quorum its session expires and it campaigns again.
	eventually(t, "the follower campaigning", func() (bool, string) { return !follower.srv.IsLeader(), "" })
	began = time.Now()
	follower.stop()
	if d := time.Since(began); d > 20*time.Second {
		t.Fatalf("stopping a replica without quorum took %s", d)
	}
}

// TestEtcdPeersAcceptOnlyPeerCertificates attacks a member's peer
// listener: without a certificate, with a node's and with a replica's
// certificate from the same cluster CA. Only a peer certificate gets an
// answer; etcd's peer API hands out the member list and, to a member,
// the whole keyspace.
func TestEtcdPeersAcceptOnlyPeerCertificates(t *testing.T) {
	if testing.Short() {
		t.Skip("embedded etcd member")
	}
	one := runMember(t, memberConfig(t, "one"))
	ca := one.srv.CA()
	peerURL := "https://" + one.cfg.EtcdPeerAddr + "/members"
	get := func(cert *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
		resp, err := c.Get(peerURL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
		}
		return nil
	}
	issue := func(id pki.Identity) *tls.Certificate {
		certPEM, keyPEM, err := ca.Issue(id, time.Hour, time.Now(), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no certificate", nil},
		{"a node's certificate", issue(pki.Identity{Role: pki.RoleNode, Name: "n1", Generation: 1})},
		{"a gateway's certificate", issue(pki.Identity{Role: pki.RoleGateway, Name: "gw", Generation: 1})},
		{"a replica's certificate", issue(pki.Identity{Role: pki.RoleReplica, Name: "two"})},
	} {
		if err := get(tc.cert); err == nil {
			t.Errorf("%s: the peer listener answered", tc.name)
		}
	}
	// The certificate a member has does get in (the refusals above are
	// about the certificate, not a listener that answers nobody).
	if err := get(issue(pki.Identity{Role: pki.RoleReplica, Name: EtcdPeerCN})); err != nil {
		t.Fatalf("a peer certificate: %v", err)
	}
	// A join with another CA's replica certificate is refused by the API.
	other, otherKey, err := pki.NewCA("other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	stranger := memberConfig(t, "stranger")
	stranger.Join = []string{one.srv.APIAddr()}
	dir := t.TempDir()
	stranger.CACertFile, stranger.CAKeyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := atomicfile.Write(stranger.CACertFile, other.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(stranger.CAKeyFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if srv, err := New(ctx, stranger); err == nil {
		srv.Close()
		t.Fatal("a replica with another cluster's CA joined")
	}
	l := servers(t, pb.NewBerthClient(adminConn(t, one.srv)))
	if len(l.GetMembers()) != 1 {
		t.Fatalf("members after the refused join: %v", l)
	}
}

// TestSnapshotSaveAndRestore saves etcd's snapshot through the API,
// changes the cluster, and starts a server on a data dir restored from
// the snapshot: the state is the snapshot's, and its revision is past
// every version agents and gateways saw before.
func TestSnapshotSaveAndRestore(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	stream, err := h.berth.Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "snap.db")
	var data []byte
	var rev int64
	for {
		c, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 {
			rev = c.Revision
		}
		data = append(data, c.Data...)
	}
	if rev == 0 || len(data) < 4096 {
		t.Fatalf("snapshot: %d bytes, revision %d", len(data), rev)
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// After the snapshot: hello deleted.
	if _, err := h.berth.DeleteService(ctx, &pb.DeleteServiceRequest{Namespace: "default", Name: "hello"}); err != nil {
		t.Fatal(err)
	}
	// A viewer may not take the snapshot: it holds every secret, sealed.
	viewer := tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "viewer"}).Token)
	if s, err := pb.NewBerthClient(viewer).Snapshot(ctx, &pb.SnapshotRequest{}); err == nil {
		if _, err = s.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("a viewer's snapshot: %v", err)
		}
	}

	restored := t.TempDir()
	if err := RestoreEtcdSnapshot(file, restored, "", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := RestoreEtcdSnapshot(file, restored, "", "", nil); err == nil || !strings.Contains(err.Error(), "holds etcd data already") {
		t.Fatalf("a second restore into the same dir: %v", err)
	}
	r := start(t, func(c *Config) {
		c.DataDir = restored
		c.SecretsKeyFile = filepath.Join(h.srv.cfg.DataDir, "secrets.key")
	})
	svc, err := r.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "hello"})
	if err != nil {
		t.Fatalf("hello after the restore: %v", err)
	}
	if svc.GetService().GetMetadata().GetName() != "hello" {
		t.Fatalf("restored service: %v", svc)
	}
	eventually(t, "a publish past the bump", func() (bool, string) {
		l := r.srv.Publisher().Latest()
		return l != nil && l.Version > RestoreBump, fmt.Sprint(l)
	})
}
