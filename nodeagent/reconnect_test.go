package nodeagent

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// assignmentsServer is a control plane that only serves WatchAssignments:
// one empty set, then the stream stays open.
type assignmentsServer struct {
	pb.UnimplementedNodeAgentServer
}

func (assignmentsServer) WatchAssignments(_ *pb.WatchAssignmentsRequest, s grpc.ServerStreamingServer[pb.Assignments]) error {
	if err := s.Send(&pb.Assignments{}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

// An agent whose control plane is away for over 10 s follows its assignments
// again within 3 s of the control plane's return (gRPC's default backoff
// would have grown towards two minutes; the agent's own retries to 5 s).
func TestAgentReconnectsSoonAfterTheControlPlaneReturns(t *testing.T) {
	now := time.Now()
	ca, _, err := pki.NewCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	keyPair := func(role pki.Role, name string) *pki.KeyPair {
		c, k, err := ca.Issue(pki.Identity{Role: role, Name: name}, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := pki.NewKeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	serverTLS := credentials.NewTLS(pki.ServerTLS(keyPair(pki.RoleReplica, "cp-1"), ca.Pool(), false))
	serve := func(ln net.Listener) *grpc.Server {
		srv := grpc.NewServer(grpc.Creds(serverTLS))
		pb.RegisterNodeAgentServer(srv, assignmentsServer{})
		go srv.Serve(ln)
		return srv
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	srv := serve(ln)

	cfg := DefaultConfig()
	cfg.Name, cfg.ServerAddr, cfg.Logger = "n1", addr, slog.New(slog.DiscardHandler)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := a.dial(&enroll.Credentials{KeyPair: keyPair(pki.RoleNode, "n1"), Pool: ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan *pb.Assignments, 1)
	done := make(chan struct{})
	go func() { defer close(done); a.followAssignments(ctx, out) }()
	defer func() { cancel(); <-done }()
	select {
	case <-out:
	case <-time.After(5 * time.Second):
		t.Fatal("no assignments from the control plane")
	}

	srv.Stop() // the control plane goes away: listener and streams closed
	// The outage itself: a little over 10 s, so that an agent retrying on
	// a 5 s step (0.1, 0.3, ... 6.3, 11.3, 16.3 s) has just missed it.
	time.Sleep(11500 * time.Millisecond)
	var ln2 net.Listener
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ln2, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	back := time.Now()
	srv = serve(ln2)
	defer srv.Stop()
	select {
	case <-out:
		t.Logf("assignments again %s after the control plane came back", time.Since(back).Round(time.Millisecond))
	case <-time.After(3 * time.Second):
		t.Fatal("the agent did not follow its assignments again within 3s of the control plane's return")
	}
}
