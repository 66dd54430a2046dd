package nodeagent

import (
	"context"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/backoff"
	"google.golang.org/grpc"
)

// Retries of the agent's streams to the control plane: jittered, so that
// a thousand agents do not come back in step, and capped at about two
// seconds, so that an agent is back within a second or two of the control
// plane's return (gRPC's own default grows to two minutes; pb.Dial caps
// the connection's backoff the same way).
const (
	retryBase = 100 * time.Millisecond
	retryMax  = 2 * time.Second
)

// newRetryBackoff is the delay between attempts of one of the agent's
// loops.
func newRetryBackoff() backoff.Backoff { return backoff.Backoff{Base: retryBase, Max: retryMax} }

// waitForReady opens the agent's long-lived streams with WaitForReady:
// while the control plane is away the call waits for the connection
// (which gRPC re-establishes on its capped backoff) instead of failing at
// once and leaving the retry loop to poll, so a stream is open again as
// soon as the connection is. Unary calls and FetchImage still fail fast:
// an image the node already has runs without the control plane.
type waitForReady struct{ pb.NodeAgentClient }

func withWait(opts []grpc.CallOption) []grpc.CallOption {
	return append(opts, grpc.WaitForReady(true))
}

func (c waitForReady) WatchAssignments(ctx context.Context, in *pb.WatchAssignmentsRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.Assignments], error) {
	return c.NodeAgentClient.WatchAssignments(ctx, in, withWait(opts)...)
}

func (c waitForReady) WatchDiscovery(ctx context.Context, in *pb.WatchDiscoveryRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.DiscoverySnapshot], error) {
	return c.NodeAgentClient.WatchDiscovery(ctx, in, withWait(opts)...)
}

func (c waitForReady) WatchDiscoveryDeltas(ctx context.Context, in *pb.WatchDiscoveryRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.DiscoveryDelta], error) {
	return c.NodeAgentClient.WatchDiscoveryDeltas(ctx, in, withWait(opts)...)
}

func (c waitForReady) WatchNodes(ctx context.Context, in *pb.WatchNodesRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.NodeList], error) {
	return c.NodeAgentClient.WatchNodes(ctx, in, withWait(opts)...)
}

func (c waitForReady) Heartbeats(ctx context.Context, opts ...grpc.CallOption) (grpc.ClientStreamingClient[pb.HeartbeatRequest, pb.HeartbeatResponse], error) {
	return c.NodeAgentClient.Heartbeats(ctx, withWait(opts)...)
}
