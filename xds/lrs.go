package xds

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsgrpc "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// LoadStats is what gateways reported for one service revision over a
// window, summed over every reporting gateway and locality.
type LoadStats struct {
	// Window is the span the figures cover (the asked window, capped at
	// Config.LoadWindow).
	Window time.Duration
	// Requests is the number of requests issued to the revision.
	Requests uint64
	// Successes and Errors are the requests that completed, by outcome
	// (Envoy counts a 5xx, or a gRPC error status, as an error).
	Successes uint64
	Errors    uint64
	// ErrorRate is Errors / (Successes + Errors), 0 when nothing completed.
	ErrorRate float64
}

// Load sums the load reports received for a service revision over the last
// window (at most Config.LoadWindow), for rollout analysis.
func (s *Server) Load(namespace, service string, revision int64, window time.Duration) LoadStats {
	return s.loads.sum(ClusterName(namespace, service, revision), window)
}

// loadStore keeps, per cluster (= revision), a ring of per-second buckets
// of reported counts: a sliding window of the last len(buckets) seconds.
type loadStore struct {
	bucket time.Duration
	n      int
	now    func() time.Time

	mu       sync.Mutex
	clusters map[string][]loadBucket
}

type loadBucket struct {
	slot                      int64 // time / bucket; identifies the second held
	issued, successes, errors uint64
}

func newLoadStore(window, bucket time.Duration) *loadStore {
	n := max(1, int(window/bucket))
	return &loadStore{bucket: bucket, n: n, now: time.Now, clusters: map[string][]loadBucket{}}
}

func (l *loadStore) window() time.Duration { return time.Duration(l.n) * l.bucket }

// record adds one report's counts (deltas since the gateway's previous
// report) to the bucket of the time it arrived.
func (l *loadStore) record(cluster string, issued, successes, errors uint64) {
	slot := l.now().UnixNano() / int64(l.bucket)
	l.mu.Lock()
	defer l.mu.Unlock()
	ring := l.clusters[cluster]
	if ring == nil {
		ring = make([]loadBucket, l.n)
		l.clusters[cluster] = ring
	}
	b := &ring[int(slot%int64(l.n))]
	if b.slot != slot {
		*b = loadBucket{slot: slot}
	}
	b.issued += issued
	b.successes += successes
	b.errors += errors
}

func (l *loadStore) sum(cluster string, window time.Duration) LoadStats {
	window = min(window, l.window())
	out := LoadStats{Window: window}
	if window <= 0 {
		return out
	}
	slot := l.now().UnixNano() / int64(l.bucket)
	oldest := slot - int64((window+l.bucket-1)/l.bucket) + 1
	l.mu.Lock()
	for _, b := range l.clusters[cluster] {
		if b.slot >= oldest && b.slot <= slot {
			out.Requests += b.issued
			out.Successes += b.successes
			out.Errors += b.errors
		}
	}
	l.mu.Unlock()
	if done := out.Successes + out.Errors; done > 0 {
		out.ErrorRate = float64(out.Errors) / float64(done)
	}
	return out
}

// lrsServer is the Load Reporting Service: gateways open a stream, are
// told to report every cluster every LoadReportInterval, and send their
// per-cluster counts.
type lrsServer struct {
	s   *Server
	ctx context.Context // the server's: its end ends every stream
}

func (l *lrsServer) StreamLoadStats(stream lrsgrpc.LoadReportingService_StreamLoadStatsServer) error {
	s := l.s
	s.metrics.lrsStreams.Inc()
	defer s.metrics.lrsStreams.Dec()

	ctx := stream.Context()
	reqs := make(chan *lrsgrpc.LoadStatsRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var node string
	for {
		select {
		case <-l.ctx.Done():
			return nil
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req := <-reqs:
			if node == "" {
				node = req.GetNode().GetId()
				s.log.Info("load reports from", "node", node)
				// Ask for every cluster at the configured interval.
				if err := stream.Send(&lrsgrpc.LoadStatsResponse{
					SendAllClusters:       true,
					LoadReportingInterval: durationpb.New(s.cfg.LoadReportInterval),
				}); err != nil {
					return err
				}
			}
			s.recordLoad(node, req.GetClusterStats())
		}
	}
}

func (s *Server) recordLoad(node string, stats []*endpoint.ClusterStats) {
	if len(stats) == 0 {
		return
	}
	s.metrics.lrsReports.Inc()
	for _, cs := range stats {
		var issued, ok, bad uint64
		for _, ls := range cs.GetUpstreamLocalityStats() {
			issued += ls.GetTotalIssuedRequests()
			ok += ls.GetTotalSuccessfulRequests()
			bad += ls.GetTotalErrorRequests()
		}
		name := cs.GetClusterName()
		if _, _, _, err := ParseClusterName(name); err != nil {
			s.metrics.lrsUnknown.Inc()
			s.log.Debug("load report for a cluster Berth does not serve", "node", node, "cluster", name)
			continue
		}
		s.loads.record(name, issued, ok, bad)
		s.metrics.lrsRequests.WithLabelValues("issued").Add(float64(issued))
		s.metrics.lrsRequests.WithLabelValues("success").Add(float64(ok))
		s.metrics.lrsRequests.WithLabelValues("error").Add(float64(bad))
	}
}
