package pb

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func serveHealth(t *testing.T, name string) (addr string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String(), s.Stop
}

// With several replicas, calls keep working when the one in use goes away.
func TestDialMovesToAnotherReplica(t *testing.T) {
	a, stopA := serveHealth(t, "a")
	b, _ := serveHealth(t, "b")
	conn, err := Dial(a + ", " + b)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cli := healthpb.NewHealthClient(conn)
	which := func() string {
		t.Helper()
		for _, name := range []string{"a", "b"} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := cli.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
			cancel()
			if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				return name
			}
		}
		return ""
	}
	if got := which(); got != "a" {
		t.Fatalf("first call went to %q, want the first replica a", got)
	}
	stopA()
	deadline := time.Now().Add(10 * time.Second)
	for which() != "b" {
		if time.Now().After(deadline) {
			t.Fatal("calls did not move to replica b after a stopped")
		}
	}
	if _, err := Dial(" , "); err == nil {
		t.Fatal("an empty address list was accepted")
	}
}
