//go:build berthbench

package apiserver

import (
	"context"

	"github.com/berth-dev/berth/controlplane/authz"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// BenchNodeHeader names, on a plaintext connection to a control plane
// built with the berthbench tag (bench-cp-scale's mTLS-off run only), the
// node a simulated agent speaks as. No other build has it: Berth's own
// binaries know no identity but a certificate's.
const BenchNodeHeader = "x-berth-bench-node"

func init() {
	benchIdentity = func(ctx context.Context) (authz.Principal, bool) {
		if p, ok := peer.FromContext(ctx); !ok || p.AuthInfo != nil {
			return authz.Anonymous, false // TLS: certificates only
		}
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get(BenchNodeHeader); len(v) == 1 && v[0] != "" {
			return authz.Principal{Role: pki.RoleNode, Name: v[0]}, true
		}
		return authz.Anonymous, false
	}
}
