package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
)

// applyServer stores applied services the way the API does for this test's
// purpose: the same spec again is "unchanged".
type applyServer struct {
	pb.UnimplementedBerthServer
	mu     sync.Mutex
	stored map[string][]byte // "ns/name" -> spec
	calls  int
}

func (s *applyServer) Apply(_ context.Context, req *pb.ApplyRequest) (*pb.ApplyResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	out := &pb.ApplyResponse{}
	for _, svc := range req.Services {
		ns := svc.Metadata.Namespace
		if ns == "" {
			ns = "default"
		}
		key := ns + "/" + svc.Metadata.Name
		spec, _ := proto.MarshalOptions{Deterministic: true}.Marshal(svc.Spec)
		action := "created"
		if old, ok := s.stored[key]; ok {
			action = "configured"
			if string(old) == string(spec) {
				action = "unchanged"
			}
		}
		s.stored[key] = spec
		out.Results = append(out.Results, &pb.ApplyResult{Namespace: ns, Name: svc.Metadata.Name, Action: action, Revision: 1})
	}
	return out, nil
}

// serveCLI runs srv on a TLS listener on port 0 with interceptor and
// returns a CLI configuration file that points at it.
func serveCLI(t *testing.T, srv pb.BerthServer, interceptor grpc.UnaryServerInterceptor) string {
	t.Helper()
	ca, _, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.Identity{Role: pki.RoleReplica, Name: "r1"}, time.Hour, time.Now(), pki.ServerName, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NewKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ServerTLS(kp, ca.Pool(), false))), grpc.UnaryInterceptor(interceptor))
	pb.RegisterBerthServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cfg := filepath.Join(t.TempDir(), "config")
	conf := fmt.Sprintf("server: %s\nca: |\n  %s\ntoken: test\n", lis.Addr(), strings.ReplaceAll(strings.TrimSpace(string(ca.CertPEM)), "\n", "\n  "))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A server that commits an apply and loses the answer (killed just after
// the commit, #16): the CLI retries, the second apply finds everything
// stored ("unchanged"), and the CLI succeeds saying the services are
// stored, not that it cannot reach the API.
func TestApplyRetriesALostAnswerAndReportsWhatIsStored(t *testing.T) {
	srv := &applyServer{stored: map[string][]byte{}}
	var lost sync.Once
	cfg := serveCLI(t, srv, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if info.FullMethod == pb.Berth_Apply_FullMethodName {
			broke := false
			lost.Do(func() { broke = true })
			if broke {
				return nil, status.Error(codes.Unavailable, "connection reset by peer")
			}
		}
		return resp, err
	})
	manifest := filepath.Join(t.TempDir(), "web.yaml")
	os.WriteFile(manifest, []byte("apiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  image: nginx:1\n  replicas: 2\n---\napiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: api\nspec:\n  image: api:1\n"), 0o600)

	out, err := run(t, "--config", cfg, "apply", "-f", manifest)
	if err != nil {
		t.Fatalf("apply after a lost answer: %v\n%s", err, out)
	}
	for _, want := range []string{"connection lost; retrying apply", "service/web stored (namespace default, revision 1)", "service/api stored (namespace default, revision 1)", "the connection broke before the server answered"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if srv.calls != 2 || len(srv.stored) != 2 {
		t.Fatalf("%d Apply calls, %d services stored; want 2 and 2", srv.calls, len(srv.stored))
	}

	// Without a lost answer, "unchanged" is what it says.
	out, err = run(t, "--config", cfg, "apply", "-f", manifest)
	if err != nil || !strings.Contains(out, "service/web unchanged") || strings.Contains(out, "retrying") {
		t.Fatalf("a plain second apply: %v\n%s", err, out)
	}
}

// A refusal is an answer: not retried.
func TestApplyDoesNotRetryARefusal(t *testing.T) {
	srv := &applyServer{stored: map[string][]byte{}}
	calls := 0
	cfg := serveCLI(t, srv, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		calls++
		return nil, status.Error(codes.InvalidArgument, "spec.image: required")
	})
	manifest := filepath.Join(t.TempDir(), "web.yaml")
	os.WriteFile(manifest, []byte("apiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  image: nginx:1\n"), 0o600)
	out, err := run(t, "--config", cfg, "apply", "-f", manifest)
	if err == nil || !strings.Contains(err.Error(), "spec.image: required") || calls != 1 || strings.Contains(out, "retrying") {
		t.Fatalf("refused apply: %v after %d calls\n%s", err, calls, out)
	}
}

// The retry gives up after its window, with the last error.
func TestRetryIdempotentGivesUp(t *testing.T) {
	var b strings.Builder
	calls := 0
	p := retryPolicy{First: time.Millisecond, Max: 4 * time.Millisecond, Window: 50 * time.Millisecond, Attempt: time.Second}
	start := time.Now()
	lost, err := retryIdempotent(context.Background(), &b, "get", p, func(context.Context) error {
		calls++
		return status.Error(codes.Unavailable, "no replica")
	})
	if !lost || status.Code(err) != codes.Unavailable || calls < 3 || time.Since(start) > time.Second {
		t.Fatalf("lost %v, err %v, %d calls in %s", lost, err, calls, time.Since(start))
	}
	if strings.Count(b.String(), "retrying get") != 1 {
		t.Fatalf("stderr: %q", b.String())
	}
}

// A first attempt that reached no server (a wrong address, no server
// running) fails at once: nothing was sent, so nothing can be stored.
// Once an answer was lost, refused connections (a replica restarting)
// are retried.
func TestRetryIdempotentFailsFastWithoutAServer(t *testing.T) {
	p := retryPolicy{First: time.Millisecond, Max: 4 * time.Millisecond, Window: 50 * time.Millisecond, Attempt: time.Second}
	var b strings.Builder
	calls := 0
	lost, err := retryIdempotent(context.Background(), &b, "get", p, func(context.Context) error {
		calls++
		return status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\"")
	})
	if lost || calls != 1 || b.Len() != 0 || status.Code(err) != codes.Unavailable {
		t.Fatalf("no server: lost %v after %d calls, err %v, stderr %q", lost, calls, err, b.String())
	}
	calls = 0
	lost, err = retryIdempotent(context.Background(), &b, "apply", p, func(context.Context) error {
		calls++
		if calls == 1 {
			return status.Error(codes.Unavailable, "error reading from server: EOF")
		}
		if calls < 4 {
			return status.Error(codes.Unavailable, "connect: connection refused")
		}
		return nil
	})
	if !lost || err != nil || calls != 4 {
		t.Fatalf("a replica restarting: lost %v, err %v after %d calls", lost, err, calls)
	}
}
