package pb

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Dial connects to the control plane at servers: one API address, or
// several separated by commas (the replicas of one control plane). With
// several, calls go to the first replica that answers and move to another
// when it goes away. The connection is TLS with tlsCfg (see pki.ClientTLS
// and pki.PinnedTLS): the control plane accepts nothing else.
func Dial(servers string, tlsCfg *tls.Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if tlsCfg == nil {
		return nil, errors.New("dial control plane: no TLS configuration (the API accepts only TLS)")
	}
	var addrs []resolver.Address
	for a := range strings.SplitSeq(servers, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, resolver.Address{Addr: a})
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no control plane address in %q", servers)
	}
	// A control plane back after an outage is found within a second or
	// two: gRPC's default backoff grows to two minutes.
	opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}))
	if len(addrs) == 1 {
		return grpc.NewClient(addrs[0].Addr, opts...)
	}
	r := manual.NewBuilderWithScheme("berth-replicas")
	r.InitialState(resolver.State{Addresses: addrs})
	opts = append(opts, grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"pick_first": {}}]}`))
	return grpc.NewClient(r.Scheme()+":///replicas", opts...)
}
