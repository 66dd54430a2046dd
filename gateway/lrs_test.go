package gateway

import (
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// lrsServer is a minimal Load Reporting Service: it asks for every
// cluster every 50 ms and sums what it gets.
type lrsServer struct {
	lrsv3.UnimplementedLoadReportingServiceServer
	mu      sync.Mutex
	node    string
	issued  map[string]uint64
	success map[string]uint64
	errors  map[string]uint64
}

func (s *lrsServer) StreamLoadStats(stream lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.node = first.GetNode().GetId()
	s.mu.Unlock()
	if err := stream.Send(&lrsv3.LoadStatsResponse{SendAllClusters: true, LoadReportingInterval: durationpb.New(50 * time.Millisecond)}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		s.mu.Lock()
		for _, cs := range req.GetClusterStats() {
			for _, l := range cs.GetUpstreamLocalityStats() {
				s.issued[cs.GetClusterName()] += l.GetTotalIssuedRequests()
				s.success[cs.GetClusterName()] += l.GetTotalSuccessfulRequests()
				s.errors[cs.GetClusterName()] += l.GetTotalErrorRequests()
			}
		}
		s.mu.Unlock()
	}
}

func TestLoadReports(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &lrsServer{issued: map[string]uint64{}, success: map[string]uint64{}, errors: map[string]uint64{}}
	gs := grpc.NewServer()
	lrsv3.RegisterLoadReportingServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	ok := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(500)
		}
	})
	g := testGateway(t, func(c *Config) {
		c.XDSAddr, c.LoadReporting = lis.Addr().String(), true
		c.BackoffMin, c.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	})
	install(g, nil, ok.URL)
	for i := 0; i < 7; i++ {
		get(t, http.DefaultClient, "http://"+g.Addr()+"/")
	}
	for i := 0; i < 3; i++ {
		get(t, http.DefaultClient, "http://"+g.Addr()+"/fail")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv.mu.Lock()
		issued, success, errs, node := srv.issued["c"], srv.success["c"], srv.errors["c"], srv.node
		srv.mu.Unlock()
		if issued == 10 && success == 7 && errs == 3 {
			if node != "test" {
				t.Errorf("node %q", node)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reports: issued %d, successful %d, errors %d; want 10, 7, 3", issued, success, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
