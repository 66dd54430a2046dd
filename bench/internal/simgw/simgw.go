// Package simgw is the benchmarks' simulated gateway: one ADS stream, delta
// or state of the world, that subscribes to every resource type and ACKs
// every response, as a gateway that accepts everything does. The xDS
// benchmark and the control plane scale benchmark share it.
package simgw

import (
	"context"
	"errors"
	"io"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Delta runs a delta ADS stream until ctx ends; count gets the number of
// resources of each response.
func Delta(ctx context.Context, c discoverypb.AggregatedDiscoveryServiceClient, node *core.Node, types []string, count func(int)) error {
	stream, err := c.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, t := range types {
		if err := stream.Send(&discoverypb.DeltaDiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return ignoreEnd(ctx, err)
		}
		count(len(resp.Resources))
		if err := stream.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
	}
}

// SotW runs a state-of-the-world ADS stream until ctx ends.
func SotW(ctx context.Context, c discoverypb.AggregatedDiscoveryServiceClient, node *core.Node, types []string, count func(int)) error {
	stream, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, t := range types {
		if err := stream.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return ignoreEnd(ctx, err)
		}
		count(len(resp.Resources))
		if err := stream.Send(&discoverypb.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
	}
}

// ignoreEnd: the stream ending because ctx did is not an error.
func ignoreEnd(ctx context.Context, err error) error {
	if errors.Is(err, io.EOF) || ctx.Err() != nil || status.Code(err) == codes.Canceled {
		return nil
	}
	return err
}
