package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// tokenConn dials srv's API over TLS (verifying the cluster CA) with an
// API token; token "" presents no credential at all.
func tokenConn(t *testing.T, srv *Server, token string) *grpc.ClientConn {
	t.Helper()
	pool, err := pki.PoolFromPEM(srv.CA().CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.DialOption
	if token != "" {
		opts = pb.WithToken(token)
	}
	conn, err := pb.Dial(srv.APIAddr(), pki.ClientTLS(nil, pool), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// refused asserts err is a gRPC error with code whose message says want.
func refused(t *testing.T, what string, err error, code codes.Code, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: allowed, want refused (%s: %s)", what, code, want)
	}
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), want) {
		t.Fatalf("%s: refused with %s %q, want %s saying %q", what, st.Code(), st.Message(), code, want)
	}
}

func createToken(t *testing.T, h *harness, req *pb.CreateTokenRequest) *pb.CreateTokenResponse {
	t.Helper()
	resp, err := h.berth.CreateToken(context.Background(), req)
	if err != nil {
		t.Fatalf("create token %v: %v", req, err)
	}
	return resp
}

// Plain TCP, a TLS client without a credential, a made-up token and a
// certificate from another CA are all refused.
func TestCallersWithoutACredentialAreRefused(t *testing.T) {
	h := start(t)
	ctx := context.Background()

	plain, err := grpc.NewClient(h.srv.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = pb.NewBerthClient(plain).ListServices(cctx, &pb.ListServicesRequest{})
	if err == nil {
		t.Fatal("a plain-TCP client was served")
	}
	if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
		t.Fatalf("plain TCP: %v", err)
	}

	anon := pb.NewBerthClient(tokenConn(t, h.srv, ""))
	_, err = anon.ListServices(ctx, &pb.ListServicesRequest{})
	refused(t, "no credential", err, codes.Unauthenticated, "no credential")
	_, err = anon.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}})
	refused(t, "apply with no credential", err, codes.Unauthenticated, "no credential")
	_, err = anon.CreateToken(ctx, &pb.CreateTokenRequest{Role: "admin"})
	refused(t, "anyone minting a token", err, codes.Unauthenticated, "no credential")
	_, err = pb.NewNodeAgentClient(tokenConn(t, h.srv, "")).Register(ctx, &pb.RegisterRequest{Name: "intruder", Address: "127.0.0.1"})
	refused(t, "register with no credential", err, codes.Unauthenticated, "no credential")

	for _, tok := range []string{"berth-00000000.00000000000000000000000000000000", "garbage"} {
		_, err = pb.NewBerthClient(tokenConn(t, h.srv, tok)).ListServices(ctx, &pb.ListServicesRequest{})
		refused(t, "token "+tok, err, codes.Unauthenticated, "API token rejected")
	}

	// A node certificate from a CA that is not the cluster's.
	other, _, err := pki.NewCA("impostor", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := other.Issue(pki.Identity{Role: pki.RoleNode, Name: "node-1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged, err := enroll.FromPEM(h.srv.CA().CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	fconn, err := pb.Dial(h.srv.APIAddr(), forged.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer fconn.Close()
	_, err = pb.NewNodeAgentClient(fconn).Register(cctx, &pb.RegisterRequest{Name: "node-1", Address: "127.0.0.1"})
	if err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	if l, _ := h.berth.ListNodes(ctx, &pb.ListNodesRequest{}); len(l.GetNodes()) != 0 {
		t.Fatalf("nodes registered by refused callers: %v", l.GetNodes())
	}
}

// Each role may do its verbs and nothing else; a refusal says what was
// missing; a revoked token stops working at once.
func TestRolesAndNamespaces(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	inShop := func(replicas int32) *pb.Service {
		s := helloSpec(replicas)
		s.Metadata.Namespace = "shop"
		return s
	}

	viewer := pb.NewBerthClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "viewer", Description: "dashboards"}).Token))
	if _, err := viewer.ListServices(ctx, &pb.ListServicesRequest{}); err != nil {
		t.Fatalf("viewer list: %v", err)
	}
	_, err := viewer.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}})
	refused(t, "viewer apply", err, codes.PermissionDenied, `viewer token `)
	refused(t, "viewer apply", err, codes.PermissionDenied, `may not write in namespace default: the viewer role does not include "write"`)
	_, err = viewer.CreateToken(ctx, &pb.CreateTokenRequest{Role: "admin"})
	refused(t, "viewer minting an admin token", err, codes.PermissionDenied, `does not include "token.admin"`)

	dep := createToken(t, h, &pb.CreateTokenRequest{Role: "deployer", Namespaces: []string{"shop"}, Description: "shop ci"})
	deployer := pb.NewBerthClient(tokenConn(t, h.srv, dep.Token))
	if _, err := deployer.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{inShop(1)}}); err != nil {
		t.Fatalf("deployer apply in its namespace: %v", err)
	}
	_, err = deployer.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}})
	refused(t, "deployer apply outside its namespace", err, codes.PermissionDenied, "limited to namespaces shop")
	// One object outside the namespace refuses the whole apply.
	_, err = deployer.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{inShop(2), helloSpec(1)}})
	refused(t, "deployer apply across namespaces", err, codes.PermissionDenied, "in namespace default")
	_, err = deployer.ListServices(ctx, &pb.ListServicesRequest{})
	refused(t, "limited deployer listing every namespace", err, codes.PermissionDenied, "name one")
	if l, err := deployer.ListServices(ctx, &pb.ListServicesRequest{Namespace: "shop"}); err != nil || len(l.Services) != 1 || l.Services[0].GetDesired() != 1 {
		t.Fatalf("deployer list shop: %v %v", l, err)
	}
	_, err = deployer.DeleteService(ctx, &pb.DeleteServiceRequest{Name: "hello", Namespace: "default"})
	refused(t, "deployer delete outside its namespace", err, codes.PermissionDenied, "limited to namespaces shop")
	_, err = deployer.CreateToken(ctx, &pb.CreateTokenRequest{Role: "node"})
	refused(t, "deployer minting a join token", err, codes.PermissionDenied, `does not include "token.admin"`)
	_, err = deployer.DrainNode(ctx, &pb.DrainNodeRequest{Name: "n1"})
	refused(t, "deployer draining a node", err, codes.PermissionDenied, `does not include "node.admin"`)

	// A join token is not an API token.
	join := createToken(t, h, &pb.CreateTokenRequest{Role: "node"})
	_, err = pb.NewBerthClient(tokenConn(t, h.srv, join.Token)).ListServices(ctx, &pb.ListServicesRequest{})
	refused(t, "join token as API token", err, codes.Unauthenticated, "join token, not an API token")

	// Tokens are listed without secrets; a revoked one stops at once.
	l, err := h.berth.ListTokens(ctx, &pb.ListTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := proto.Marshal(l)
	for _, secret := range []string{dep.Token, join.Token} {
		_, s, _ := strings.Cut(secret, ".")
		if bytes.Contains(b, []byte(s)) {
			t.Fatalf("token list holds a secret")
		}
	}
	if _, err := h.berth.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: dep.Info.Id}); err != nil {
		t.Fatal(err)
	}
	_, err = deployer.ListServices(ctx, &pb.ListServicesRequest{Namespace: "shop"})
	refused(t, "revoked token", err, codes.Unauthenticated, "API token rejected")

	// Parts' certificates are not user credentials.
	for _, role := range []pki.Role{pki.RoleNode, pki.RoleGateway} {
		_, err = pb.NewBerthClient(partConn(t, h.srv, role, "p-"+string(role))).Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}})
		refused(t, string(role)+" certificate applying", err, codes.PermissionDenied, "may not write")
	}
}

// twoNodes registers n1 and n2 (each with its own certificate) and runs
// a two-replica service spread over them.
func twoNodes(t *testing.T, h *harness) (n1, n2 string) {
	t.Helper()
	ctx := context.Background()
	for _, n := range []string{"n1", "n2"} {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: n, Address: "127.0.0.1", Capacity: &pb.Capacity{MilliCpu: 2000, MemoryBytes: 1 << 30}}); err != nil {
			t.Fatal(err)
		}
		heartbeat(t, h, n)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one instance on each node", func() (bool, string) {
		p := placement(h, "hello")
		return p["n1"] == 1 && p["n2"] == 1, ""
	})
	return "n1", "n2"
}

func instanceOn(t *testing.T, h *harness, node string) string {
	t.Helper()
	l, err := h.berth.ListInstances(context.Background(), &pb.ListInstancesRequest{Service: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	for _, iv := range l.Instances {
		if iv.Instance.Node == node {
			return iv.Instance.Id
		}
	}
	t.Fatalf("no instance on %s", node)
	return ""
}

// A node's certificate speaks only for that node: n2 trying each node
// call for n1 is refused, and n2 cannot rewrite n1's instance or point
// its own at an address outside its subnet.
func TestANodeSpeaksOnlyForItself(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	n1, n2 := twoNodes(t, h)
	reportReady(t, h, n1)
	mine, theirs := instanceOn(t, h, n2), instanceOn(t, h, n1)
	as2 := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, n2))
	const speaks = "only for itself"

	_, err := as2.Register(ctx, &pb.RegisterRequest{Name: n1, Address: "10.9.9.9"})
	refused(t, "re-register another node", err, codes.PermissionDenied, speaks)
	_, err = as2.Heartbeat(ctx, &pb.HeartbeatRequest{Name: n1})
	refused(t, "heartbeat for another node", err, codes.PermissionDenied, speaks)
	_, err = as2.ReportStatus(ctx, &pb.ReportStatusRequest{Node: n1, Statuses: []*pb.InstanceStatus{{Id: theirs, Node: n1, Phase: "Running", Ip: "203.0.113.7", Ready: true}}})
	refused(t, "report for another node", err, codes.PermissionDenied, speaks)
	_, err = as2.ReportStatus(ctx, &pb.ReportStatusRequest{Node: n2, Statuses: []*pb.InstanceStatus{{Id: theirs, Node: n2, Phase: "Running", Ip: "203.0.113.7", Ready: true}}})
	refused(t, "report another node's instance as one's own", err, codes.PermissionDenied, "assigned to node \"n1\"")
	_, err = as2.ReportStatus(ctx, &pb.ReportStatusRequest{Node: n2, Statuses: []*pb.InstanceStatus{{Id: mine, Node: n2, Phase: "Running", Ip: "203.0.113.7", Ready: true}}})
	refused(t, "own instance at an outside address", err, codes.PermissionDenied, "outside its pod subnet")
	_, err = as2.VolumeDeleted(ctx, &pb.VolumeDeletedRequest{Node: n1})
	refused(t, "volume report for another node", err, codes.PermissionDenied, speaks)
	for name, open := range map[string]func() (interface{ RecvMsg(any) error }, error){
		"assignments": func() (interface{ RecvMsg(any) error }, error) {
			return as2.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: n1})
		},
		"discovery": func() (interface{ RecvMsg(any) error }, error) {
			return as2.WatchDiscovery(ctx, &pb.WatchDiscoveryRequest{Node: n1})
		},
	} {
		s, err := open()
		if err == nil {
			err = s.RecvMsg(new(pb.Assignments))
		}
		refused(t, "watch another node's "+name, err, codes.PermissionDenied, speaks)
	}
	// Its own calls work.
	w, err := as2.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: n2})
	if err != nil {
		t.Fatal(err)
	}
	a, err := w.Recv()
	if err != nil {
		t.Fatalf("own assignments: %v", err)
	}
	for _, in := range a.Instances {
		if in.Id != mine {
			t.Fatalf("n2 received instance %s, not its own", in.Id)
		}
	}
	// n1's instance still where n1 reported it.
	l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
	for _, iv := range l.Instances {
		if iv.Status.GetIp() == "203.0.113.7" {
			t.Fatalf("a refused report changed %s", iv.Instance.Id)
		}
	}
}

// A node fetches only images its instances run.
func TestANodeFetchesOnlyTheImagesItRuns(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	load := func(ref string) { mustUpload(t, h.berth, buildImage(t, ref, ref)) }
	load("berth.local/hello:v1")
	load("berth.local/secret-sauce:v1")
	twoNodes(t, h)
	fetch := func(node, ref string) error {
		s, err := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, node)).FetchImage(ctx, &pb.FetchImageRequest{Reference: ref})
		if err != nil {
			return err
		}
		for {
			if _, err := s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	if err := fetch("n2", "berth.local/hello:v1"); err != nil {
		t.Fatalf("a node fetching the image it runs: %v", err)
	}
	refused(t, "a node fetching an image it does not run", fetch("n2", "berth.local/secret-sauce:v1"), codes.PermissionDenied, "only images its instances run")
}

// A removed node's certificate is refused at once: calls and open
// streams; the name can join again with a new token.
func TestRemovedNodeIsRefusedAtOnce(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	n1, n2 := twoNodes(t, h)
	as1 := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, n1))
	w, err := as1.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: n1})
	if err != nil {
		t.Fatal(err)
	}
	// n2's stream is checked by the same re-check and must stay open.
	as2 := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, n2))
	w2, err := as2.WatchAssignments(ctx, &pb.WatchAssignmentsRequest{Node: n2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	resp, err := h.berth.RemoveNode(ctx, &pb.RemoveNodeRequest{Name: n1})
	if err != nil {
		t.Fatal(err)
	}
	if resp.InstancesReplaced != 1 {
		t.Errorf("removing n1 replaced %d instances, want 1", resp.InstancesReplaced)
	}
	_, err = as1.Heartbeat(ctx, &pb.HeartbeatRequest{Name: n1})
	refused(t, "removed node's heartbeat", err, codes.Unauthenticated, "revoked")
	for {
		_, err := w.Recv()
		if err != nil {
			refused(t, "removed node's open stream", err, codes.Unauthenticated, "revoked")
			break
		}
	}
	// n1's instance is replaced on n2: n2's stream, open through the
	// revocation, carries it.
	for {
		a, err := w2.Recv()
		if err != nil {
			t.Fatalf("n2's stream ended when n1 was removed: %v", err)
		}
		if len(a.GetInstances()) == 2 {
			break
		}
	}
	eventually(t, "n1 gone and its instance replaced on n2", func() (bool, string) {
		p := placement(h, "hello")
		return p["n1"] == 0 && p["n2"] == 2 && nodeState(h, n1) == "", ""
	})
	// The name joins again with a new token; the old certificate stays refused.
	tok := createToken(t, h, &pb.CreateTokenRequest{Role: "node"})
	if _, err := enroll.Join(ctx, enroll.Options{Server: h.srv.APIAddr(), Role: pki.RoleNode, Name: n1, JoinToken: tok.Token, CAHash: tok.CaHash, Logger: quietLogger()}); err != nil {
		t.Fatalf("rejoin after removal: %v", err)
	}
	_, err = as1.Heartbeat(ctx, &pb.HeartbeatRequest{Name: n1})
	refused(t, "the removed generation's certificate after a rejoin", err, codes.Unauthenticated, "")
}

// Join tokens: one use by default, a role, an expiry; a part never sends
// its token to a server that does not present the pinned CA.
func TestJoinTokens(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	join := func(tok *pb.CreateTokenResponse, role pki.Role, name string) error {
		_, err := enroll.Join(ctx, enroll.Options{Server: h.srv.APIAddr(), Role: role, Name: name, JoinToken: tok.Token, CAHash: tok.CaHash, Logger: quietLogger()})
		return err
	}
	once := createToken(t, h, &pb.CreateTokenRequest{Role: "node"})
	// A wrong CA hash: the client refuses the server, the token is not spent.
	wrong := &pb.CreateTokenResponse{Token: once.Token, CaHash: "sha256:" + strings.Repeat("0", 64)}
	if err := join(wrong, pki.RoleNode, "a"); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("join against an unpinned CA: %v", err)
	}
	if err := join(once, pki.RoleNode, "a"); err != nil {
		t.Fatalf("join: %v", err)
	}
	refused(t, "second use of a single-use token", join(once, pki.RoleNode, "b"), codes.Unauthenticated, "join token rejected")

	gw := createToken(t, h, &pb.CreateTokenRequest{Role: "gateway"})
	refused(t, "gateway token joining a node", join(gw, pki.RoleNode, "c"), codes.Unauthenticated, "join token rejected")

	twice := createToken(t, h, &pb.CreateTokenRequest{Role: "node", Uses: 3})
	refused(t, "joining under a member's name", join(twice, pki.RoleNode, "a"), codes.AlreadyExists, "already a member")
	refused(t, "an evil name", join(twice, pki.RoleNode, "../../etc"), codes.InvalidArgument, "may hold only")

	short := createToken(t, h, &pb.CreateTokenRequest{Role: "node", TtlSeconds: 1})
	time.Sleep(1100 * time.Millisecond) // the token's lifetime, not a timing assertion
	refused(t, "expired join token", join(short, pki.RoleNode, "d"), codes.Unauthenticated, "join token rejected")

	l, err := h.berth.ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil || len(l.Nodes) != 0 {
		t.Fatalf("joins registered nodes: %v %v", l, err)
	}
}

// A part's certificate is renewed before it expires over its live
// connection, without a restart; the renewed one names the same part.
func TestCertificatesRotateWithoutRestart(t *testing.T) {
	h := start(t, func(c *Config) { c.CertTTL = 3 * time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tok := createToken(t, h, &pb.CreateTokenRequest{Role: "node"})
	creds, err := enroll.Join(ctx, enroll.Options{Server: h.srv.APIAddr(), Role: pki.RoleNode, Name: "rot", JoinToken: tok.Token, CAHash: tok.CaHash, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	first := creds.KeyPair.Leaf()
	// New connections (as after a reconnect) present the current cert.
	cfg := creds.ClientTLS()
	cfg.ClientSessionCache = nil
	conn, err := pb.Dial(h.srv.APIAddr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go creds.KeepRenewed(ctx, conn, quietLogger())
	eventually(t, "a renewed certificate", func() (bool, string) {
		return creds.KeyPair.Leaf().SerialNumber.Cmp(first.SerialNumber) != 0, ""
	})
	renewed := creds.KeyPair.Leaf()
	id, _ := pki.IdentityOf(renewed)
	if id.Role != pki.RoleNode || id.Name != "rot" || !renewed.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewed certificate %v, expires %v (first %v)", id, renewed.NotAfter, first.NotAfter)
	}
	// After the first one expired, calls still work with the renewed one.
	time.Sleep(time.Until(first.NotAfter) + 100*time.Millisecond)
	fresh, err := pb.Dial(h.srv.APIAddr(), &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, GetClientCertificate: cfg.GetClientCertificate})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if _, err := pb.NewNodeAgentClient(fresh).Register(ctx, &pb.RegisterRequest{Name: "rot", Address: "127.0.0.1"}); err != nil {
		t.Fatalf("register with the renewed certificate after the first expired: %v", err)
	}
}

// A flood of calls with made-up (well-formed) tokens costs etcd a bounded
// number of reads: read-throughs of unknown ids are rate-limited. (The
// limit is set to no refill here, so the bound does not depend on how
// fast this machine is: at most the saved-up burst reaches etcd.) A token
// made meanwhile still works, by watch.
func TestUnknownTokensDoNotFloodEtcd(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	h.srv.auth.LimitReadThroughs(0, 100)
	reads0, limited0 := h.srv.auth.ReadThroughs()
	for i := range 400 {
		tok := fmt.Sprintf("berth-%08x.%032x", 0x10000000+i, i)
		_, err := pb.NewBerthClient(tokenConn(t, h.srv, tok)).ListServices(ctx, &pb.ListServicesRequest{})
		refused(t, "a made-up token", err, codes.Unauthenticated, "")
	}
	reads, limited := h.srv.auth.ReadThroughs()
	if reads-reads0 > 100 || limited-limited0 < 300 {
		t.Fatalf("400 made-up tokens: %d etcd reads (want at most the burst, 100), %d limited", reads-reads0, limited-limited0)
	}
	fresh := createToken(t, h, &pb.CreateTokenRequest{Role: "viewer"})
	viewer := pb.NewBerthClient(tokenConn(t, h.srv, fresh.Token))
	eventually(t, "a token made during the flood works", func() (bool, string) {
		_, err := viewer.ListServices(ctx, &pb.ListServicesRequest{})
		return err == nil, fmt.Sprint(err)
	})
}

// Every Berth process registers gzip (the discovery feed is compressed),
// so the API also takes compressed requests, before any authentication
// (gRPC decodes a message before the interceptors run). A gzip bomb from
// a client with no credentials at all, 32 MiB of one byte in 32 KiB on
// the wire, is refused at the 8 MiB message limit, and the API serves on.
func TestCompressedRequestsAreBounded(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bomb := helloSpec(1)
	bomb.Spec.Env = map[string]string{"A": strings.Repeat("a", 32<<20)}
	anonymous := pb.NewBerthClient(tokenConn(t, h.srv, ""))
	_, err := anonymous.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{bomb}}, pb.Compressed(), grpc.MaxCallSendMsgSize(64<<20))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 32 MiB request in gzip: %v, want ResourceExhausted (refused at the message limit)", err)
	}
	if _, err := h.berth.ListServices(ctx, &pb.ListServicesRequest{}); err != nil {
		t.Fatalf("the API after the bomb: %v", err)
	}
}
