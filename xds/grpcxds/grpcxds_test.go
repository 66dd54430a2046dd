// Package grpcxds_test proves that a real grpc-go proxyless client follows
// Berth's xDS server: it resolves xds:///<service>.<namespace> through the
// API listener, splits RPCs across revisions by weight and follows a
// weight change. It is its own test binary because grpc-go's xDS client
// keeps process-wide state.
package grpcxds_test

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
)

// startBackends serves the health service on 127.0.0.1:P and 127.0.0.2:P,
// one port for both, as two endpoints of one service port.
func startBackends(t *testing.T) uint32 {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := a.Addr().(*net.TCPAddr).Port
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
		if err != nil {
			a.Close()
			continue
		}
		for _, l := range []net.Listener{a, b} {
			gs := grpc.NewServer()
			healthpb.RegisterHealthServer(gs, health.NewServer())
			go gs.Serve(l)
			t.Cleanup(gs.Stop)
		}
		return uint32(port)
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return 0
}

func snapshot(version uint64, port uint32, w1, w2 uint32) *discovery.Snapshot {
	return &discovery.Snapshot{Version: version, Services: []discovery.Service{{
		Namespace: "shop", Name: "web",
		Ports: []discovery.Port{{Name: "grpc", Port: port, Protocol: "grpc"}},
		Revisions: []discovery.Revision{
			{Number: 1, Weight: w1, Endpoints: []discovery.Endpoint{{Instance: "web-1-a", Node: "n1", IP: "127.0.0.1", Ready: true}}},
			{Number: 2, Weight: w2, Endpoints: []discovery.Endpoint{{Instance: "web-2-a", Node: "n2", IP: "127.0.0.2", Ready: true}}},
		},
	}}}
}

func TestProxylessGRPCFollowsWeights(t *testing.T) {
	port := startBackends(t)
	srv, err := xds.New(xds.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	if err := srv.Update(snapshot(1, port, 80, 20)); err != nil {
		t.Fatal(err)
	}

	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      srv.Addr(),
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": "proxyless-test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+xds.APIListenerName("shop", "web"),
		grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	split := func(n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for range n {
			var p peer.Peer
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true)); err != nil {
				t.Fatalf("RPC through xds: %v", err)
			}
			host, _, _ := net.SplitHostPort(p.Addr.String())
			got[host]++
		}
		return got
	}
	const n = 2000
	got := split(n)
	// 80/20: the 127.0.0.2 share has mean 400 and sd ~18; allow 5 sd.
	if got["127.0.0.2"] < 310 || got["127.0.0.2"] > 490 || got["127.0.0.1"]+got["127.0.0.2"] != n {
		t.Fatalf("split over %d RPCs = %v, want about 80/20", n, got)
	}
	t.Logf("80/20 split over %d RPCs: %v", n, got)

	if err := srv.WaitForAck(ctx, 1); err != nil {
		t.Fatalf("WaitForAck(1) with the proxyless client: %v", err)
	}
	gws := srv.Gateways()
	if len(gws) != 1 || !gws[0].Proxyless || gws[0].NodeID != "proxyless-test" || gws[0].State != xds.StateSynced {
		t.Fatalf("Gateways() = %+v", gws)
	}

	// Shift everything to revision 2; the client follows once it ACKs.
	if err := srv.Update(snapshot(2, port, 0, 100)); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitForAck(ctx, 2); err != nil {
		t.Fatalf("WaitForAck(2): %v", err)
	}
	// The ACK precedes the new picker by a moment (FACTS: 0.4-2 ms): poll
	// until revision 2 answers, then every RPC must go there.
	for split(50)["127.0.0.2"] != 50 {
		if ctx.Err() != nil {
			t.Fatal("the client never moved to revision 2")
		}
	}
	if got := split(200); got["127.0.0.2"] != 200 {
		t.Fatalf("after the shift to revision 2: %v", got)
	}
}
