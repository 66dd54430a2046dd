package gateway

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// loadReporter speaks the Load Reporting Service
// (envoy.service.load_stats.v3) to the control plane on the ADS
// connection: it announces the node, learns from each LoadStatsResponse
// which clusters to report (or all) and how often, and sends per cluster
// the requests issued, completed successfully, completed with an error
// (5xx or no response) since the last report, and those in progress, and
// the upstream latency histogram of the requests completed since the last
// report (see latencyHistogram).
type loadReporter struct {
	g    *Gateway
	conn *grpc.ClientConn
	node *core.Node
}

// run keeps a stream open until ctx ends, reconnecting with backoff. A
// control plane without LRS answers Unimplemented: then it retries at the
// maximum backoff, quietly.
func (l *loadReporter) run(ctx context.Context) {
	backoff := l.g.cfg.BackoffMin
	for {
		sent, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if sent {
			backoff = l.g.cfg.BackoffMin
		}
		l.g.log.Debug("load report stream ended", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, l.g.cfg.BackoffMax)
	}
}

type lrsPlan struct {
	all      bool
	clusters []string
	interval time.Duration
}

func (l *loadReporter) session(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := lrsv3.NewLoadReportingServiceClient(l.conn).StreamLoadStats(ctx)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&lrsv3.LoadStatsRequest{Node: l.node}); err != nil {
		return false, err
	}
	plans := make(chan lrsPlan, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = errors.New("control plane closed the load report stream")
				}
				recvErr <- err
				return
			}
			p := lrsPlan{all: resp.GetSendAllClusters(), clusters: resp.GetClusters(), interval: resp.GetLoadReportingInterval().AsDuration()}
			if p.interval <= 0 {
				p.interval = 10 * time.Second
			}
			select { // keep only the newest plan
			case <-plans:
			default:
			}
			plans <- p
		}
	}()
	var plan lrsPlan
	var tick <-chan time.Time
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	last := time.Now()
	sent := false
	for {
		select {
		case <-ctx.Done():
			return sent, ctx.Err()
		case err := <-recvErr:
			return sent, err
		case plan = <-plans:
			if ticker != nil {
				ticker.Stop()
			}
			ticker = time.NewTicker(plan.interval)
			tick = ticker.C
		case now := <-tick:
			req := &lrsv3.LoadStatsRequest{Node: l.node, ClusterStats: l.g.reg.loadReport(plan, now.Sub(last))}
			last = now
			if err := stream.Send(req); err != nil {
				return sent, err
			}
			sent = true
		}
	}
}

// loadReport drains the counters of the clusters plan asks for.
func (r *registry) loadReport(plan lrsPlan, interval time.Duration) []*endpointv3.ClusterStats {
	r.mu.Lock()
	var states []*clusterState
	if plan.all {
		for _, c := range r.clusters {
			states = append(states, c)
		}
	} else {
		for _, name := range plan.clusters {
			if c, ok := r.clusters[name]; ok {
				states = append(states, c)
			}
		}
	}
	r.mu.Unlock()
	sort.Slice(states, func(i, j int) bool { return states[i].name < states[j].name })
	out := make([]*endpointv3.ClusterStats, 0, len(states))
	for _, c := range states {
		out = append(out, &endpointv3.ClusterStats{
			ClusterName: c.name,
			UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{{
				Locality:                &core.Locality{},
				TotalIssuedRequests:     c.issued.Swap(0),
				TotalSuccessfulRequests: c.succeeded.Swap(0),
				TotalErrorRequests:      c.failed.Swap(0),
				TotalRequestsInProgress: uint64(max(0, c.active.Load())),
				LoadMetricStats:         c.latency.drain(),
			}},
			LoadReportInterval: durationpb.New(interval),
		})
	}
	return out
}

// latencyBoundsMs are the upper bounds (inclusive, in milliseconds) of the
// latency histogram's buckets; a last bucket holds what lies above. The
// control plane keeps the same bounds (xds.LatencyBuckets).
var latencyBoundsMs = [...]int64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}

// latencyMetricPrefix names the buckets in load reports:
// "berth.latency_ms.le_50", ..., "berth.latency_ms.le_inf".
const latencyMetricPrefix = "berth.latency_ms.le_"

// latencyHistogram counts a cluster's completed requests by upstream
// latency: the time from when the gateway starts forwarding the request
// (endpoint pick and connect included) until the head of the response the
// client gets has arrived from the upstream, retries and their back-off
// included; for a request the gateway answers itself because no response
// came (502, 504, 499), until it gave up. The response body is left out,
// so streams, WebSockets, big downloads and slow clients do not count as
// slow upstreams. Every request counted as succeeded or failed has one
// sample. Counts and sums are atomic and reset by each load report.
type latencyHistogram struct {
	n     [len(latencyBoundsMs) + 1]atomic.Uint64
	sumUs [len(latencyBoundsMs) + 1]atomic.Uint64 // latencies, in microseconds
}

// observe counts one request; it does not allocate.
func (h *latencyHistogram) observe(d time.Duration) {
	i := 0
	for i < len(latencyBoundsMs) && d > time.Duration(latencyBoundsMs[i])*time.Millisecond {
		i++
	}
	h.n[i].Add(1)
	h.sumUs[i].Add(uint64(max(0, d.Microseconds())))
}

// drain returns the non-empty buckets as load metrics (the requests and
// the sum of their latencies in milliseconds since the last drain) and
// resets them. A request observed during a drain may have its count in
// this report and its latency in the next.
func (h *latencyHistogram) drain() []*endpointv3.EndpointLoadMetricStats {
	var out []*endpointv3.EndpointLoadMetricStats
	for i := range h.n {
		n := h.n[i].Swap(0)
		sum := h.sumUs[i].Swap(0)
		if n == 0 && sum == 0 {
			continue
		}
		name := latencyMetricPrefix + "inf"
		if i < len(latencyBoundsMs) {
			name = latencyMetricPrefix + strconv.FormatInt(latencyBoundsMs[i], 10)
		}
		out = append(out, &endpointv3.EndpointLoadMetricStats{
			MetricName:                    name,
			NumRequestsFinishedWithMetric: n,
			TotalMetricValue:              float64(sum) / 1000,
		})
	}
	return out
}
