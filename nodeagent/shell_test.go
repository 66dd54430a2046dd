package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/logs"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// NodeShell takes only control plane replicas: no certificate, another
// CA's replica, a node's or a gateway's certificate are refused at the
// handshake; and a replica refuses an agent whose certificate names
// another node (a node pointing the control plane at its neighbour).
func TestNodeShellTakesOnlyReplicas(t *testing.T) {
	now := time.Now()
	ca, _, err := pki.NewCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _, _ := pki.NewCA("evil", now)
	kp := func(ca *pki.CA, role pki.Role, name string) *pki.KeyPair {
		c, k, err := ca.Issue(pki.Identity{Role: role, Name: name}, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		p, err := pki.NewKeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	creds := &enroll.Credentials{KeyPair: kp(ca, pki.RoleNode, "n1"), Pool: ca.Pool()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newShellGRPC(creds, &shellServer{})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	call := func(opt grpc.DialOption) error {
		conn, err := grpc.NewClient(ln.Addr().String(), opt)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		s, err := pb.NewNodeShellClient(conn).Logs(ctx, &pb.LogsRequest{Instance: "x"})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	tlsAs := func(id *pki.KeyPair, node string) grpc.DialOption {
		return grpc.WithTransportCredentials(credentials.NewTLS(pki.ShellClientTLS(id, ca.Pool(), node)))
	}
	// The replica gets through TLS (the runtime is not up in this test).
	if err := call(tlsAs(kp(ca, pki.RoleReplica, "cp-1"), "n1")); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "runtime is not up") {
		t.Fatalf("replica: %v", err)
	}
	for name, opt := range map[string]grpc.DialOption{
		"plain text":            grpc.WithTransportCredentials(insecure.NewCredentials()),
		"node n2":               tlsAs(kp(ca, pki.RoleNode, "n2"), "n1"),
		"gateway":               tlsAs(kp(ca, pki.RoleGateway, "gw"), "n1"),
		"replica of another CA": grpc.WithTransportCredentials(credentials.NewTLS(pki.ShellClientTLS(kp(otherCA, pki.RoleReplica, "cp-1"), ca.Pool(), "n1"))),
	} {
		if err := call(opt); err == nil || strings.Contains(err.Error(), "runtime is not up") {
			t.Errorf("%s reached the shell: %v", name, err)
		}
	}
	// A replica expecting node n2 at this address refuses n1's certificate.
	if err := call(tlsAs(kp(ca, pki.RoleReplica, "cp-1"), "n2")); err == nil || !strings.Contains(err.Error(), "want node/n2") {
		t.Fatalf("replica dialing n2, n1 answering: %v", err)
	}
}

type fakeShellRuntime struct{ logs *logs.Store }

func (f fakeShellRuntime) Logs() *logs.Store { return f.logs }
func (fakeShellRuntime) Exec(context.Context, string, runtime.ExecOptions) (int, error) {
	return 0, errors.New("no exec here")
}
func (fakeShellRuntime) InstanceIP(context.Context, string) (string, error) {
	return "", runtime.ErrNotFound
}

type logSink struct {
	grpc.ServerStream
	lines []string
}

func (s *logSink) Context() context.Context { return context.Background() }
func (s *logSink) Send(l *pb.LogLine) error { s.lines = append(s.lines, string(l.Text)); return nil }

// A caller the control plane authorised for namespace a asks, by id, for
// the logs of a gone instance of namespace b (the control plane no longer
// knows it, so only the node can tell): not found, nothing sent.
func TestNodeShellLogsStayInTheirNamespace(t *testing.T) {
	st, err := logs.New(logs.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	run, _ := st.NewRun("secret-1", logs.Meta{Namespace: "b", Service: "secret"})
	fmt.Fprintln(run.Stdout(), "password=hunter2")
	st.Removed("secret-1")
	srv := &shellServer{rt: fakeShellRuntime{logs: st}}
	sink := &logSink{}
	err = srv.Logs(&pb.LogsRequest{Namespace: "a", Instance: "secret-1"}, sink)
	if status.Code(err) != codes.NotFound || len(sink.lines) != 0 {
		t.Fatalf("namespace a reading b's instance: %v, %q", err, sink.lines)
	}
	if err := srv.Logs(&pb.LogsRequest{Namespace: "b", Instance: "secret-1"}, sink); err != nil || len(sink.lines) != 1 {
		t.Fatalf("namespace b: %v, %q", err, sink.lines)
	}
	// A path for an instance id is no instance.
	if err := srv.Logs(&pb.LogsRequest{Namespace: "b", Instance: "../secret-1"}, &logSink{}); err == nil {
		t.Fatal("a path as an instance id was read")
	}
}
