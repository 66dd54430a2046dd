package gateway

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sort"
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
// (5xx or no response) since the last report, and those in progress.
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
			}},
			LoadReportInterval: durationpb.New(interval),
		})
	}
	return out
}
