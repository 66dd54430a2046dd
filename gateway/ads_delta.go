package gateway

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
)

// deltaSession runs one delta (incremental) stream. It reports whether any
// response arrived.
//
// Each type is a wildcard subscription ("*"). The first request of a type
// names every resource held and its version (initial_resource_versions),
// so after a reconnect the control plane sends only what changed meanwhile
// and removes what left. Resources from the state file are named without
// a version (restore), so each is sent again or removed.
func (c *adsClient) deltaSession(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(c.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	c.g.metrics.xdsConnects.Inc()
	c.g.metrics.xdsUp.Set(1)
	defer c.g.metrics.xdsUp.Set(0)
	for _, t := range subscribedTypes {
		req := &discoverypb.DeltaDiscoveryRequest{
			Node: c.node, TypeUrl: t,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: maps.Clone(c.held[t]),
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
		if err := stream.Send(c.handleDelta(resp)); err != nil {
			return received, err
		}
	}
}

// handleDelta applies one delta response to its type as a whole and
// returns its ACK or NACK (which name only the response's nonce). A
// rejected response changes nothing: the last good resources of its type
// stay. system_version_info, the snapshot version the response brings the
// type to, becomes the type's version.
func (c *adsClient) handleDelta(resp *discoverypb.DeltaDiscoveryResponse) *discoverypb.DeltaDiscoveryRequest {
	t, version := resp.GetTypeUrl(), resp.GetSystemVersionInfo()
	req := &discoverypb.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	ch, err := compileDelta(resp, c.g.cfg.ListenerName)
	if err != nil {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		c.g.metrics.xdsUpdates.WithLabelValues(typeLabel(t), "nack").Inc()
		c.g.log.Warn("rejected xds update", "type", t, "version", version, "error", err)
		return req
	}
	held := c.held[t]
	if held == nil {
		held = map[string]string{}
		c.held[t] = held
	}
	for _, name := range ch.removed {
		delete(held, name)
	}
	maps.Copy(held, ch.versions)
	c.state = c.state.withDelta(t, version, ch)
	c.publish(version)
	c.saver.acceptedDelta(t, version, resp.GetResources(), ch.removed)
	if c.stale[t] && !slices.Contains(slices.Collect(maps.Values(held)), "") {
		c.confirmed(t) // each saved resource was sent again or removed
	}
	c.g.metrics.xdsUpdates.WithLabelValues(typeLabel(t), "ack").Inc()
	c.g.log.Debug("applied xds update", "type", t, "version", version,
		"updated", len(resp.GetResources()), "removed", len(ch.removed), "held", len(held))
	return req
}
