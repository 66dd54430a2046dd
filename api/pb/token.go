package pb

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// JoinTokenHeader is the metadata key that carries an agent's join token.
const JoinTokenHeader = "x-berth-join-token"

// WithJoinToken returns dial options that send token on every call, as
// agents must on the NodeAgent service.
func WithJoinToken(token string) []grpc.DialOption {
	if token == "" {
		return nil
	}
	add := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, JoinTokenHeader, token)
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(add(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(add(ctx), desc, cc, method, opts...)
		}),
	}
}
