package xds

import (
	"context"
	"errors"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
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
	// Impossible counts the reports in the window whose figures cannot be
	// true: more requests completed than were issued since the gateway's
	// last report plus those it had in progress then. Analysis does not
	// judge a revision on such data.
	Impossible uint64

	// LatencySamples is the number of completed requests whose latency a
	// gateway reported (Berth's gateway reports one per completed request;
	// Envoy reports none). 0 means no latency is known: LatencyMean and
	// LatencyP99 are then 0 too.
	LatencySamples uint64
	// LatencyMean is the exact mean of the reported latencies.
	LatencyMean time.Duration
	// LatencyP99 is the 99th percentile estimated from the summed latency
	// buckets by linear interpolation within the bucket it falls in (as
	// Prometheus' histogram_quantile does), so it is off by at most that
	// bucket's width. In the last, unbounded bucket it is the mean of that
	// bucket's samples, or its lower bound (LatencyBuckets' last) if that
	// is larger.
	LatencyP99 time.Duration
}

// Gateways report latency in their load reports as load_metric_stats
// (EndpointLoadMetricStats) of each UpstreamLocalityStats, one entry per
// non-empty histogram bucket: metric_name LatencyMetricPrefix + the
// bucket's upper bound in milliseconds ("berth.latency_ms.le_50") or
// "inf", num_requests_finished_with_metric the requests completed in the
// interval whose latency fell in the bucket, total_metric_value the sum of
// their latencies in milliseconds. Envoy's own consumers ignore the names.
const LatencyMetricPrefix = "berth.latency_ms.le_"

// LatencyBuckets are the upper bounds (inclusive) of the latency buckets
// the load store keeps; one more bucket holds what lies above the last.
// Berth's gateway reports with the same bounds; a bound the store does not
// know is counted in the first bucket that contains it (an
// overestimate, never an underestimate).
func LatencyBuckets() []time.Duration { return slices.Clone(latencyBounds[:]) }

var latencyBounds = [...]time.Duration{
	1 * time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	1 * time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// latencyHistogram is a count and a sum (in milliseconds) per bucket; the
// last bucket is the unbounded one.
type latencyHistogram [len(latencyBounds) + 1]struct {
	n     uint64
	sumMs float64
}

// latencyBucket maps a load metric name to the bucket it counts in; ok is
// false for a name that is not a Berth latency bucket.
func latencyBucket(name string) (i int, ok bool) {
	bound, ok := strings.CutPrefix(name, LatencyMetricPrefix)
	if !ok {
		return 0, false
	}
	if bound == "inf" {
		return len(latencyBounds), true
	}
	ms, err := strconv.ParseFloat(bound, 64)
	if err != nil || !(ms >= 0) {
		return 0, false
	}
	for i, b := range latencyBounds {
		if ms <= float64(b)/float64(time.Millisecond) {
			return i, true
		}
	}
	return len(latencyBounds), true
}

// add counts one load_metric_stats entry if it is a latency bucket with a
// finite, non-negative total (a NaN would poison the whole window).
func (h *latencyHistogram) add(m *endpoint.EndpointLoadMetricStats) {
	i, ok := latencyBucket(m.GetMetricName())
	v := m.GetTotalMetricValue()
	if !ok || !(v >= 0) || math.IsInf(v, 1) {
		return
	}
	h[i].n += m.GetNumRequestsFinishedWithMetric()
	h[i].sumMs += v
}

func (h *latencyHistogram) merge(o *latencyHistogram) {
	for i := range h {
		h[i].n += o[i].n
		h[i].sumMs += o[i].sumMs
	}
}

// summary is the sample count, the mean and the estimated 99th percentile.
func (h *latencyHistogram) summary() (samples uint64, mean, p99 time.Duration) {
	var sumMs float64
	for _, b := range h {
		samples += b.n
		sumMs += b.sumMs
	}
	if samples == 0 {
		return 0, 0, 0
	}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	rank := 0.99 * float64(samples)
	var below float64 // samples in the buckets before i
	for i, b := range h {
		if b.n == 0 || below+float64(b.n) < rank {
			below += float64(b.n)
			continue
		}
		if i == len(latencyBounds) {
			return samples, ms(sumMs / float64(samples)), max(latencyBounds[i-1], ms(b.sumMs/float64(b.n)))
		}
		lower := time.Duration(0)
		if i > 0 {
			lower = latencyBounds[i-1]
		}
		frac := (rank - below) / float64(b.n)
		p99 = lower + time.Duration(frac*float64(latencyBounds[i]-lower))
		break
	}
	return samples, ms(sumMs / float64(samples)), p99
}

// Load sums the load reports received for a service revision over the last
// window (at most Config.LoadWindow), for rollout analysis.
func (s *Server) Load(namespace, service string, revision int64, window time.Duration) LoadStats {
	return s.loads.sum(ClusterName(namespace, service, revision), window)
}

// LoadTotals are a cluster's counts since this server started, from the
// load reports of its own gateways: what a control plane replica shares
// with the others so each sees the load of the whole cluster.
type LoadTotals struct {
	Issued    uint64 `json:"issued"`
	Successes uint64 `json:"successes"`
	Errors    uint64 `json:"errors"`
	// Impossible: reports whose figures cannot be true (LoadStats).
	Impossible uint64 `json:"impossible,omitempty"`
	// Latency has one entry per LatencyBuckets bound and one more for the
	// unbounded bucket.
	Latency []LatencyCount `json:"latency,omitempty"`
}

// LatencyCount is one latency bucket: requests and their summed latency.
type LatencyCount struct {
	N     uint64  `json:"n"`
	SumMs float64 `json:"sumMs"`
}

func (c *loadCounts) totals() LoadTotals {
	t := LoadTotals{Issued: c.issued, Successes: c.successes, Errors: c.errors, Impossible: c.impossible, Latency: make([]LatencyCount, len(c.latency))}
	for i, b := range c.latency {
		t.Latency[i] = LatencyCount{N: b.n, SumMs: b.sumMs}
	}
	return t
}

// Since returns what t counted after earlier (both totals of one server
// run): the counts to add for the time between them. A counter that went
// down (another run) counts from zero.
func (t LoadTotals) Since(earlier LoadTotals) LoadTotals {
	sub := func(a, b uint64) uint64 {
		if a < b {
			return a
		}
		return a - b
	}
	d := LoadTotals{Issued: sub(t.Issued, earlier.Issued), Successes: sub(t.Successes, earlier.Successes), Errors: sub(t.Errors, earlier.Errors), Impossible: sub(t.Impossible, earlier.Impossible)}
	for i, b := range t.Latency {
		var e LatencyCount
		if i < len(earlier.Latency) {
			e = earlier.Latency[i]
		}
		if b.N < e.N || b.SumMs < e.SumMs {
			e = LatencyCount{}
		}
		d.Latency = append(d.Latency, LatencyCount{N: b.N - e.N, SumMs: b.SumMs - e.SumMs})
	}
	return d
}

// LocalLoadTotals returns the totals of every cluster whose count changed
// within maxAge (0: all), from this server's own gateways only.
func (s *Server) LocalLoadTotals(maxAge time.Duration) map[string]LoadTotals {
	return s.loads.localTotals(maxAge)
}

// RecordRemoteLoad adds counts another control plane replica's gateways
// reported (the difference between two of its LoadTotals) to the window
// Load sums, so analysis sees the whole cluster's traffic.
func (s *Server) RecordRemoteLoad(cluster string, delta LoadTotals) {
	if _, _, _, err := ParseClusterName(cluster); err != nil || !s.servesCluster(cluster) {
		return
	}
	c := loadCounts{issued: delta.Issued, successes: delta.Successes, errors: delta.Errors, impossible: delta.Impossible}
	for i, b := range delta.Latency {
		if i < len(c.latency) && b.SumMs >= 0 && !math.IsInf(b.SumMs, 0) && !math.IsNaN(b.SumMs) {
			c.latency[i].n, c.latency[i].sumMs = b.N, b.SumMs
		}
	}
	s.loads.record(cluster, &c, false)
}

// loadStore keeps, per cluster (= revision), a ring of per-second buckets
// of reported counts: a sliding window of the last len(buckets) seconds.
// A bucket holds a fixed latency histogram, so memory is bounded by
// clusters x seconds whatever gateways send. It also keeps each cluster's
// totals from this server's own gateways, for the other replicas.
type loadStore struct {
	bucket time.Duration
	n      int
	now    func() time.Time

	mu       sync.Mutex
	clusters map[string][]loadBucket
	totals   map[string]*localTotal
}

type localTotal struct {
	loadCounts
	changed time.Time
}

func (l *loadStore) localTotals(maxAge time.Duration) map[string]LoadTotals {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]LoadTotals, len(l.totals))
	for name, t := range l.totals {
		if maxAge <= 0 || now.Sub(t.changed) <= maxAge {
			out[name] = t.totals()
		}
	}
	return out
}

// loadCounts are the counts of one report, or of a second's reports.
type loadCounts struct {
	issued, successes, errors uint64
	impossible                uint64
	latency                   latencyHistogram
}

func (c *loadCounts) add(o *loadCounts) {
	c.issued += o.issued
	c.successes += o.successes
	c.errors += o.errors
	c.impossible += o.impossible
	c.latency.merge(&o.latency)
}

type loadBucket struct {
	slot int64 // time / bucket; identifies the second held
	loadCounts
}

func newLoadStore(window, bucket time.Duration) *loadStore {
	n := max(1, int(window/bucket))
	return &loadStore{bucket: bucket, n: n, now: time.Now, clusters: map[string][]loadBucket{}, totals: map[string]*localTotal{}}
}

func (l *loadStore) window() time.Duration { return time.Duration(l.n) * l.bucket }

// record adds one report's counts (deltas since the gateway's previous
// report) to the bucket of the time it arrived; local counts (from this
// server's own gateways) also go into the cluster's totals.
func (l *loadStore) record(cluster string, c *loadCounts, local bool) {
	now := l.now()
	slot := now.UnixNano() / int64(l.bucket)
	l.mu.Lock()
	defer l.mu.Unlock()
	if local {
		t := l.totals[cluster]
		if t == nil {
			t = &localTotal{}
			l.totals[cluster] = t
		}
		t.add(c)
		t.changed = now
	}
	ring := l.clusters[cluster]
	if ring == nil {
		ring = make([]loadBucket, l.n)
		l.clusters[cluster] = ring
	}
	b := &ring[int(slot%int64(l.n))]
	if b.slot != slot {
		*b = loadBucket{slot: slot}
	}
	b.add(c)
}

func (l *loadStore) sum(cluster string, window time.Duration) LoadStats {
	window = min(window, l.window())
	out := LoadStats{Window: window}
	if window <= 0 {
		return out
	}
	slot := l.now().UnixNano() / int64(l.bucket)
	oldest := slot - int64((window+l.bucket-1)/l.bucket) + 1
	var total loadCounts
	l.mu.Lock()
	for i := range l.clusters[cluster] {
		if b := &l.clusters[cluster][i]; b.slot >= oldest && b.slot <= slot {
			total.add(&b.loadCounts)
		}
	}
	l.mu.Unlock()
	out.Requests, out.Successes, out.Errors, out.Impossible = total.issued, total.successes, total.errors, total.impossible
	if done := out.Successes + out.Errors; done > 0 {
		out.ErrorRate = float64(out.Errors) / float64(done)
	}
	out.LatencySamples, out.LatencyMean, out.LatencyP99 = total.latency.summary()
	return out
}

// lrsServer is the Load Reporting Service: gateways open a stream, are
// told to report every cluster every LoadReportInterval, and send their
// per-cluster counts.
type lrsServer struct {
	s   *Server
	ctx context.Context // the server's: its end ends every stream
}

// maxReportsPerInterval bounds the load reports one stream may send in a
// report interval (Envoy sends one).
const maxReportsPerInterval = 20

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
	// inProgress is, per cluster, what this gateway last said it had in
	// flight: a report may complete at most those plus what it issued.
	inProgress := map[string]uint64{}
	// A gateway reports once per interval; beyond maxReportsPerInterval
	// in one interval reports are dropped, not added up.
	var windowStart time.Time
	inWindow := 0
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
			if now := time.Now(); now.Sub(windowStart) >= s.cfg.LoadReportInterval {
				windowStart, inWindow = now, 0
			}
			if inWindow++; inWindow > maxReportsPerInterval {
				s.metrics.lrsDropped.Inc()
				continue
			}
			s.recordLoad(node, req.GetClusterStats(), inProgress)
		}
	}
}

// recordLoad adds one report of a gateway's stream. inProgress holds,
// per cluster, the requests in flight the stream's previous report gave
// (updated here); a cluster's first report on a stream is not checked,
// since what was in flight before it is unknown.
func (s *Server) recordLoad(node string, stats []*endpoint.ClusterStats, inProgress map[string]uint64) {
	if len(stats) == 0 {
		return
	}
	s.metrics.lrsReports.Inc()
	for _, cs := range stats {
		var c loadCounts
		var flight uint64
		for _, ls := range cs.GetUpstreamLocalityStats() {
			c.issued += ls.GetTotalIssuedRequests()
			c.successes += ls.GetTotalSuccessfulRequests()
			c.errors += ls.GetTotalErrorRequests()
			flight += ls.GetTotalRequestsInProgress()
			for _, m := range ls.GetLoadMetricStats() {
				c.latency.add(m) // other metrics are not Berth's: ignored
			}
		}
		name := cs.GetClusterName()
		if _, _, _, err := ParseClusterName(name); err != nil || !s.servesCluster(name) {
			s.metrics.lrsUnknown.Inc()
			s.log.Debug("load report for a cluster Berth does not serve", "node", node, "cluster", name)
			continue
		}
		prev, known := inProgress[name]
		inProgress[name] = flight
		if done := c.successes + c.errors; (known && done > c.issued+prev) || done < c.errors {
			// Completions no request could have made (or a counter that
			// wrapped): the report counts as impossible, not as traffic.
			s.metrics.lrsImpossible.Inc()
			s.log.Warn("impossible load report: more requests completed than were issued", "node", node, "cluster", name,
				"completed", done, "issued", c.issued, "in_progress_before", prev)
			s.loads.record(name, &loadCounts{impossible: 1}, true)
			continue
		}
		s.loads.record(name, &c, true)
		s.metrics.lrsRequests.WithLabelValues("issued").Add(float64(c.issued))
		s.metrics.lrsRequests.WithLabelValues("success").Add(float64(c.successes))
		s.metrics.lrsRequests.WithLabelValues("error").Add(float64(c.errors))
	}
}
