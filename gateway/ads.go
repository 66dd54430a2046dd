package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	reconnect "github.com/berth-dev/berth/internal/backoff"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// adsClient follows the control plane over one aggregated stream at a
// time, delta (ads_delta.go) or state of the world, as Config.XDSProtocol
// says. Only its run goroutine touches state, held, stale, outage and
// stats (restore runs before it starts).
type adsClient struct {
	g    *Gateway
	conn *grpc.ClientConn
	node *core.Node

	state *xdsState
	// held is, on delta streams, the version of every accepted resource by
	// type URL and name (listeners the gateway does not serve included):
	// the initial_resource_versions of the next stream.
	held map[string]map[string]string
	// stale holds the types whose resources came from the state file
	// (saved.go) and that the control plane has not yet confirmed or
	// replaced.
	stale map[string]bool
	// saver keeps the state file; nil without Config.StateDir.
	saver *configSaver
	// outage is when the stream last failed after being up (or the first
	// attempt failed); zero while connected.
	outage time.Time
	stats  map[[2]string]*routeStats // (route, cluster) -> series
}

// connectParams bound gRPC's own reconnect backoff (its default grows to
// two minutes): a control plane back after an outage is found within
// about two seconds, and the jitter keeps a thousand gateways from
// redialling in step.
var connectParams = grpc.ConnectParams{
	Backoff:           grpcbackoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
	MinConnectTimeout: 5 * time.Second,
}

func newADSClient(g *Gateway) (*adsClient, error) {
	creds := insecure.NewCredentials()
	if g.cfg.XDSTLS != nil {
		creds = credentials.NewTLS(g.cfg.XDSTLS)
	}
	conn, err := grpc.NewClient(g.cfg.XDSAddr,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithConnectParams(connectParams),
	)
	if err != nil {
		return nil, fmt.Errorf("gateway: xds client for %s: %w", g.cfg.XDSAddr, err)
	}
	return &adsClient{
		g:     g,
		conn:  conn,
		node:  &core.Node{Id: g.cfg.NodeID, Cluster: "berth-gateway", UserAgentName: "berth-gateway"},
		state: newXDSState(),
		held:  map[string]map[string]string{},
		stale: map[string]bool{},
		stats: map[[2]string]*routeStats{},
	}, nil
}

func (c *adsClient) close() { c.conn.Close() }

// run keeps a stream open until ctx ends, reconnecting with jittered
// exponential backoff (Config.BackoffMin to BackoffMax), or at once when
// the connection comes back before the backoff has passed. The routing
// table stays as it is meanwhile. The first failure of an outage is a
// warning, the retries are debug records.
func (c *adsClient) run(ctx context.Context) {
	session := c.deltaSession
	if c.g.cfg.XDSProtocol == XDSStateOfTheWorld {
		session = c.session
	}
	retry := reconnect.Backoff{Base: c.g.cfg.BackoffMin, Max: c.g.cfg.BackoffMax}
	for {
		received, err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if received {
			retry.Reset()
		}
		wait := retry.Next()
		if c.outage.IsZero() {
			c.outage = time.Now()
			c.g.log.Warn("xds stream ended; serving the last configuration", "error", err, "retry_in", wait, "stale", c.g.stale.Load())
		} else {
			c.g.log.Debug("xds stream failed again", "error", err, "retry_in", wait)
		}
		c.pause(ctx, wait)
		if ctx.Err() != nil {
			return
		}
	}
}

// pause waits d, or less if the connection to the control plane becomes
// ready meanwhile (gRPC redials on its own backoff, connectParams). A
// connection that is ready all along (a server that ends each stream)
// waits the whole of d.
func (c *adsClient) pause(ctx context.Context, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	s := c.conn.GetState()
	for {
		if s == connectivity.Idle {
			c.conn.Connect()
		}
		if !c.conn.WaitForStateChange(ctx, s) {
			return
		}
		if s = c.conn.GetState(); s == connectivity.Ready {
			return
		}
	}
}

// streamUp is called with a stream's first response: it ends an outage.
func (c *adsClient) streamUp() {
	if !c.outage.IsZero() {
		c.g.log.Info("xds stream back", "down_for", time.Since(c.outage).Round(time.Millisecond))
		c.outage = time.Time{}
	}
}

// session runs one state-of-the-world stream. It reports whether any
// response arrived.
func (c *adsClient) session(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(c.conn).StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	c.g.metrics.xdsConnects.Inc()
	c.g.metrics.xdsUp.Set(1)
	defer c.g.metrics.xdsUp.Set(0)
	// Wildcard subscriptions, naming the versions already held so a
	// control plane may skip what has not changed; but none for types
	// still from the state file, whose first response must come.
	for _, t := range subscribedTypes {
		req := &discoverypb.DiscoveryRequest{Node: c.node, TypeUrl: t, VersionInfo: c.state.versions[t]}
		if c.stale[t] {
			req.VersionInfo = ""
		}
		if err := stream.Send(req); err != nil {
			return false, err
		}
	}
	received := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("control plane closed the stream")
			}
			return received, err
		}
		if !received {
			c.streamUp()
		}
		received = true
		if err := stream.Send(c.handle(resp)); err != nil {
			return received, err
		}
	}
}

// handle applies one response and returns its ACK or NACK. A rejected
// response changes nothing: the last good resources of its type stay.
func (c *adsClient) handle(resp *discoverypb.DiscoveryResponse) *discoverypb.DiscoveryRequest {
	t := resp.GetTypeUrl()
	req := &discoverypb.DiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	compiled, err := compile(resp, c.g.cfg.ListenerName)
	if err != nil {
		req.VersionInfo = c.state.versions[t]
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		c.g.metrics.xdsUpdates.WithLabelValues(typeLabel(t), "nack").Inc()
		c.g.log.Warn("rejected xds update", "type", t, "version", resp.GetVersionInfo(), "error", err)
		return req
	}
	c.state = c.state.with(t, resp.GetVersionInfo(), compiled)
	c.publish(resp.GetVersionInfo())
	c.saver.acceptedList(t, resp.GetVersionInfo(), resp.GetResources())
	c.confirmed(t) // a response replaces its type whole
	req.VersionInfo = resp.GetVersionInfo()
	c.g.metrics.xdsUpdates.WithLabelValues(typeLabel(t), "ack").Inc()
	c.g.log.Debug("applied xds update", "type", t, "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
	return req
}

// publish builds and swaps in the routing table for the current state.
func (c *adsClient) publish(version string) {
	used := map[[2]string]bool{}
	stats := func(route, cluster string) *routeStats {
		used[[2]string{route, cluster}] = true
		return c.routeStats(route, cluster)
	}
	c.g.table.Store(buildTable(c.state, c.g.cfg.ListenerName, version, stats, c.g.reg))
	c.g.reg.sweep() // endpoints that left (or drain) get no new requests; in-flight ones finish
	// Series of routes and clusters the table no longer has (a deleted
	// service, a revision gone) are removed, not kept at their last value.
	for k, s := range c.stats {
		if !used[k] {
			delete(c.stats, k)
			c.g.metrics.forget(s)
		}
	}
}

func (c *adsClient) routeStats(route, cluster string) *routeStats {
	k := [2]string{route, cluster}
	s, ok := c.stats[k]
	if !ok {
		s = c.g.metrics.stats(route, cluster)
		c.stats[k] = s
	}
	return s
}

func typeLabel(typeURL string) string {
	for i, name := range []string{"cluster", "endpoint", "listener", "route"} {
		if subscribedTypes[i] == typeURL {
			return name
		}
	}
	return "other"
}
