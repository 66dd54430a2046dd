package xds

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/berth-dev/berth/pki"
)

// authWorld is an xDS server with authentication on, a cluster CA, and a
// revocation list the test edits.
type authWorld struct {
	t   *testing.T
	s   *Server
	ca  *pki.CA
	mu  sync.Mutex
	rev map[string]bool
	sub []chan struct{}
}

func startAuthServer(t *testing.T) *authWorld {
	t.Helper()
	ca, _, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w := &authWorld{t: t, ca: ca, rev: map[string]bool{}}
	certPEM, keyPEM, err := ca.Issue(pki.Identity{Role: pki.RoleReplica, Name: "r1"}, time.Hour, time.Now(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NewKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.SetAuth(Auth{
		TLS: pki.ServerTLS(kp, ca.Pool(), true),
		Check: func(id pki.Identity) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.rev[id.String()] {
				return grpcstatus.Errorf(codes.Unauthenticated, "certificate of %s: revoked", id)
			}
			return nil
		},
		Changed: func() (<-chan struct{}, func()) {
			w.mu.Lock()
			defer w.mu.Unlock()
			ch := make(chan struct{}, 1)
			w.sub = append(w.sub, ch)
			return ch, func() {}
		},
	})
	runServer(t, s)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	w.s = s
	return w
}

func (w *authWorld) revoke(id pki.Identity) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rev[id.String()] = true
	for _, ch := range w.sub {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// tlsFor is a client configuration presenting a certificate for id from
// ca (nil: no certificate) and trusting the cluster CA.
func (w *authWorld) tlsFor(ca *pki.CA, id *pki.Identity) *tls.Config {
	w.t.Helper()
	var kp *pki.KeyPair
	if id != nil {
		certPEM, keyPEM, err := ca.Issue(*id, time.Hour, time.Now())
		if err != nil {
			w.t.Fatal(err)
		}
		if kp, err = pki.NewKeyPair(certPEM, keyPEM); err != nil {
			w.t.Fatal(err)
		}
	}
	return pki.ClientTLS(kp, w.ca.Pool())
}

func (w *authWorld) dial(creds credentials.TransportCredentials) *grpc.ClientConn {
	w.t.Helper()
	conn, err := grpc.NewClient(w.s.Addr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { conn.Close() })
	return conn
}

// ads opens an ADS stream as nodeID over conn and returns the first
// response or the error that ended the stream.
func ads(ctx context.Context, conn *grpc.ClientConn, nodeID string) (discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discoverypb.DiscoveryResponse, error) {
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &core.Node{Id: nodeID}, TypeUrl: TypeURLs[0]}); err != nil {
		_, err = stream.Recv()
		return nil, nil, err
	}
	resp, err := stream.Recv()
	return stream, resp, err
}

func wantCode(t *testing.T, what string, err error, code codes.Code, say string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: served, want refused with %s", what, code)
	}
	st, _ := grpcstatus.FromError(err)
	if code != codes.Unknown && st.Code() != code || !strings.Contains(st.Message(), say) {
		t.Fatalf("%s: %s %q, want %s saying %q", what, st.Code(), st.Message(), code, say)
	}
}

// Only a gateway certificate from the cluster CA, naming the node id it
// claims, receives resources; a revoked one is cut at once.
func TestXDSServesOnlyGateways(t *testing.T) {
	w := startAuthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gw1 := &pki.Identity{Role: pki.RoleGateway, Name: "gw-1"}

	_, _, err := ads(ctx, w.dial(insecure.NewCredentials()), "gw-1")
	wantCode(t, "plain TCP", err, codes.Unavailable, "")

	_, _, err = ads(ctx, w.dial(credentials.NewTLS(w.tlsFor(nil, nil))), "gw-1")
	wantCode(t, "TLS without a client certificate", err, codes.Unavailable, "")

	impostor, _, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ads(ctx, w.dial(credentials.NewTLS(w.tlsFor(impostor, gw1))), "gw-1")
	wantCode(t, "a gateway certificate from another CA", err, codes.Unavailable, "")

	_, _, err = ads(ctx, w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleNode, Name: "gw-1"}))), "gw-1")
	wantCode(t, "a node's certificate", err, codes.PermissionDenied, "is not a gateway")

	conn := w.dial(credentials.NewTLS(w.tlsFor(w.ca, gw1)))
	_, _, err = ads(ctx, conn, "gw-2")
	wantCode(t, "gw-1 claiming to be gw-2", err, codes.PermissionDenied, `node id "gw-2" is not this certificate's gateway "gw-1"`)

	stream, resp, err := ads(ctx, conn, "gw-1")
	if err != nil || resp.GetVersionInfo() != "1" {
		t.Fatalf("gw-1 as itself: %v %v", resp, err)
	}
	// A later request on the same stream claiming another id is refused too.
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &core.Node{Id: "gw-2"}, TypeUrl: TypeURLs[0], VersionInfo: "1", ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, "switching node id mid-stream", err, codes.PermissionDenied, "is not this certificate's gateway")

	stream, _, err = ads(ctx, conn, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	w.revoke(*gw1)
	_, err = stream.Recv()
	wantCode(t, "an open stream of a revoked gateway", err, codes.Unauthenticated, "revoked")
	_, _, err = ads(ctx, conn, "gw-1")
	wantCode(t, "a revoked gateway reconnecting", err, codes.Unauthenticated, "revoked")
}

// Load reports decide canaries: a forged client's reports, however bad
// or good, change nothing; an authenticated gateway's count.
func TestForgedLoadReportsCountForNothing(t *testing.T) {
	w := startAuthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cluster := ClusterName("shop", "web", 2)
	report := func(conn *grpc.ClientConn, nodeID string, issued, bad uint64) error {
		stream, err := lrspb.NewLoadReportingServiceClient(conn).StreamLoadStats(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&lrspb.LoadStatsRequest{Node: &core.Node{Id: nodeID}}); err != nil {
			_, err = stream.Recv()
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
		if err := stream.Send(&lrspb.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{{
			ClusterName: cluster,
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{{
				Locality: &core.Locality{SubZone: "n1"}, TotalIssuedRequests: issued, TotalSuccessfulRequests: issued - bad, TotalErrorRequests: bad,
			}},
		}}}); err != nil {
			return err
		}
		return stream.CloseSend()
	}
	impostor, _, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forgers := map[string]*grpc.ClientConn{
		"plain TCP":                          w.dial(insecure.NewCredentials()),
		"TLS without a certificate":          w.dial(credentials.NewTLS(w.tlsFor(nil, nil))),
		"another CA's gateway":               w.dial(credentials.NewTLS(w.tlsFor(impostor, &pki.Identity{Role: pki.RoleGateway, Name: "gw-1"}))),
		"a node's certificate":               w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleNode, Name: "n1"}))),
		"gw-2's certificate claiming gw-1's": w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleGateway, Name: "gw-2"}))),
	}
	for what, conn := range forgers {
		if err := report(conn, "gw-1", 1000, 1000); err == nil {
			t.Errorf("%s: a 100%% error report was accepted", what)
		}
	}
	// The honest gateway's report is what counts.
	honest := w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleGateway, Name: "gw-1"})))
	if err := report(honest, "gw-1", 100, 1); err != nil {
		t.Fatal(err)
	}
	for w.s.Load("shop", "web", 2, time.Minute).Requests == 0 {
		if ctx.Err() != nil {
			t.Fatal("the authenticated gateway's report never counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := w.s.Load("shop", "web", 2, time.Minute); got.Requests != 100 || got.Errors != 1 {
		t.Fatalf("load = %+v, want only the authenticated gateway's 100 requests and 1 error", got)
	}
}

// A gateway (with a valid certificate) reporting 10,000 made-up clusters
// leaves nothing behind, and a flood of reports counts only the first
// ones of each interval.
func TestLoadReportsAreBounded(t *testing.T) {
	w := startAuthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleGateway, Name: "gw-1"})))
	stream := openLRS(ctx, t, conn, "gw-1")
	made := &lrspb.LoadStatsRequest{}
	for i := range 10000 {
		made.ClusterStats = append(made.ClusterStats, &endpoint.ClusterStats{
			ClusterName:           ClusterName("made", fmt.Sprintf("up-%d", i), 1),
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{{TotalIssuedRequests: 1, TotalErrorRequests: 1}},
		})
	}
	if err := stream.Send(made); err != nil {
		t.Fatal(err)
	}
	real := ClusterName("shop", "web", 2)
	for range 100 {
		if err := stream.Send(&lrspb.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{{
			ClusterName:           real,
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{{TotalIssuedRequests: 10, TotalSuccessfulRequests: 10}},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	for metricValue(t, w.s.metrics.lrsDropped) == 0 {
		if ctx.Err() != nil {
			t.Fatal("a flood of reports was never throttled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.s.loads.mu.Lock()
	n := len(w.s.loads.clusters)
	w.s.loads.mu.Unlock()
	if n > 1 {
		t.Errorf("the load store holds %d clusters after reports for made-up ones, want only the real one", n)
	}
	if got := w.s.Load("shop", "web", 2, time.Minute).Requests; got > 10*maxReportsPerInterval {
		t.Errorf("a flood counted %d requests, want at most %d (%d reports of 10)", got, 10*maxReportsPerInterval, maxReportsPerInterval)
	}
}

// One gateway identity holds a bounded number of streams; a stream that
// ends frees its slot.
func TestStreamsPerGatewayAreCapped(t *testing.T) {
	w := startAuthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleGateway, Name: "gw-1"})))
	var cancels []context.CancelFunc
	for i := range w.s.auth.MaxStreamsPerGateway {
		sctx, scancel := context.WithCancel(ctx)
		cancels = append(cancels, scancel)
		if _, _, err := ads(sctx, conn, "gw-1"); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	_, _, err := ads(ctx, conn, "gw-1")
	wantCode(t, "one stream too many", err, codes.ResourceExhausted, "already holds 8 streams")
	// Another gateway is not affected.
	other := w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleGateway, Name: "gw-2"})))
	if _, _, err := ads(ctx, other, "gw-2"); err != nil {
		t.Fatalf("another gateway: %v", err)
	}
	cancels[0]()
	for {
		sctx, scancel := context.WithCancel(ctx)
		_, _, err := ads(sctx, conn, "gw-1")
		scancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("a closed stream's slot was never freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range cancels {
		c()
	}
}

// A report with more requests completed than the gateway issued since its
// last report plus what it then had in flight cannot be true: it counts
// as impossible (analysis holds on it), not as traffic. Consistent ones,
// in-flight requests completing later included, count.
func TestImpossibleLoadReportsAreFlagged(t *testing.T) {
	w := startAuthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cluster := ClusterName("shop", "web", 2)
	conn := w.dial(credentials.NewTLS(w.tlsFor(w.ca, &pki.Identity{Role: pki.RoleGateway, Name: "gw-1"})))
	stream := openLRS(ctx, t, conn, "gw-1")
	send := func(issued, ok, bad, inFlight uint64) {
		t.Helper()
		if err := stream.Send(&lrspb.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{{
			ClusterName: cluster,
			UpstreamLocalityStats: []*endpoint.UpstreamLocalityStats{{
				Locality: &core.Locality{SubZone: "n1"}, TotalIssuedRequests: issued, TotalSuccessfulRequests: ok, TotalErrorRequests: bad, TotalRequestsInProgress: inFlight,
			}},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	send(100, 90, 0, 10) // 10 still in flight
	send(0, 10, 0, 0)    // they complete: consistent
	send(5, 0, 1000, 0)  // 1,000 errors out of 5 issued and none in flight
	for w.s.Load("shop", "web", 2, time.Minute).Impossible == 0 {
		if ctx.Err() != nil {
			t.Fatal("the impossible report was never flagged")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := w.s.Load("shop", "web", 2, time.Minute); got.Requests != 100 || got.Successes != 100 || got.Errors != 0 || got.Impossible != 1 {
		t.Fatalf("load = %+v, want the 100 consistent requests and 1 impossible report (its 1,000 errors not counted)", got)
	}
}

// openLRS opens a load-report stream as gateway node and waits for the
// server's first answer (the interval it wants).
func openLRS(ctx context.Context, t *testing.T, conn *grpc.ClientConn, node string) lrspb.LoadReportingService_StreamLoadStatsClient {
	t.Helper()
	stream, err := lrspb.NewLoadReportingServiceClient(conn).StreamLoadStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&lrspb.LoadStatsRequest{Node: &core.Node{Id: node}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	return stream
}
