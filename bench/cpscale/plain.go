//go:build berthbench

package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/controlplane/apiserver"
)

// canPlain: this build (-tags berthbench, as make bench-cp-scale runs it)
// can run the control plane without TLS for the side-by-side figures.
const canPlain = true

func setPlaintext(on bool) { controlplane.SetBenchPlaintext(on) }

// dialPlain connects without TLS, every call carrying md (a token, or the
// node a simulated agent speaks as).
func dialPlain(addr string, md metadata.MD, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return invoker(metadata.NewOutgoingContext(ctx, md), method, req, reply, cc, o...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.NewOutgoingContext(ctx, md), desc, cc, method, o...)
		}))
	return grpc.NewClient(addr, opts...)
}

func nodeMD(name string) metadata.MD { return metadata.Pairs(apiserver.BenchNodeHeader, name) }
