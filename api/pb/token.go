package pb

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// bearer sends an API token on every call; gRPC refuses to send it
// without TLS.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

var _ credentials.PerRPCCredentials = bearer("")

// WithToken returns dial options that present an API token on every call.
func WithToken(token string) []grpc.DialOption {
	if token == "" {
		return nil
	}
	return []grpc.DialOption{grpc.WithPerRPCCredentials(bearer(token))}
}

// TokenCall presents an API token on one call: a connection shared by
// several users (the dashboard's to its own replica) sends each call with
// its user's token.
func TokenCall(token string) grpc.CallOption { return grpc.PerRPCCredentials(bearer(token)) }
