package controlplane

import (
	"context"
	"sync"
	"testing"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"google.golang.org/grpc"
)

// adminConn dials srv's API as the first admin, with the configuration
// file the server wrote.
func adminConn(t *testing.T, srv *Server) *grpc.ClientConn {
	t.Helper()
	cfg, err := ReadAdminConfig(srv.AdminConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pki.PoolFromPEM([]byte(cfg.CA))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pb.Dial(srv.APIAddr(), pki.ClientTLS(nil, pool), pb.WithToken(cfg.Token)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// partConn dials srv's API with a certificate for role/name issued by
// srv's CA (recorded as if the part had joined).
func partConn(t *testing.T, srv *Server, role pki.Role, name string) *grpc.ClientConn {
	t.Helper()
	certPEM, keyPEM, err := srv.IssuePart(context.Background(), role, name)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := enroll.FromPEM(srv.CA().CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pb.Dial(srv.APIAddr(), creds.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// nodeRouter is a NodeAgentClient that calls as whichever node the
// request names, each with its own certificate: tests that play several
// nodes keep one client.
type nodeRouter struct {
	t     *testing.T
	srv   *Server
	mu    sync.Mutex
	nodes map[string]pb.NodeAgentClient
}

func newNodeRouter(t *testing.T, srv *Server) *nodeRouter {
	return &nodeRouter{t: t, srv: srv, nodes: map[string]pb.NodeAgentClient{}}
}

func (r *nodeRouter) as(name string) pb.NodeAgentClient {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.nodes[name]; ok {
		return c
	}
	c := pb.NewNodeAgentClient(partConn(r.t, r.srv, pki.RoleNode, name))
	r.nodes[name] = c
	return c
}

func (r *nodeRouter) Register(ctx context.Context, in *pb.RegisterRequest, opts ...grpc.CallOption) (*pb.RegisterResponse, error) {
	return r.as(in.Name).Register(ctx, in, opts...)
}
func (r *nodeRouter) Heartbeat(ctx context.Context, in *pb.HeartbeatRequest, opts ...grpc.CallOption) (*pb.HeartbeatResponse, error) {
	return r.as(in.Name).Heartbeat(ctx, in, opts...)
}
func (r *nodeRouter) WatchAssignments(ctx context.Context, in *pb.WatchAssignmentsRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.Assignments], error) {
	return r.as(in.Node).WatchAssignments(ctx, in, opts...)
}
func (r *nodeRouter) ReportStatus(ctx context.Context, in *pb.ReportStatusRequest, opts ...grpc.CallOption) (*pb.ReportStatusResponse, error) {
	return r.as(in.Node).ReportStatus(ctx, in, opts...)
}
func (r *nodeRouter) WatchDiscovery(ctx context.Context, in *pb.WatchDiscoveryRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.DiscoverySnapshot], error) {
	return r.as(in.Node).WatchDiscovery(ctx, in, opts...)
}
func (r *nodeRouter) WatchNodes(ctx context.Context, in *pb.WatchNodesRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.NodeList], error) {
	return r.as("watcher").WatchNodes(ctx, in, opts...)
}
func (r *nodeRouter) FetchImage(ctx context.Context, in *pb.FetchImageRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.ImageChunk], error) {
	return r.as("node-1").FetchImage(ctx, in, opts...)
}
func (r *nodeRouter) VolumeDeleted(ctx context.Context, in *pb.VolumeDeletedRequest, opts ...grpc.CallOption) (*pb.VolumeDeletedResponse, error) {
	return r.as(in.Node).VolumeDeleted(ctx, in, opts...)
}

func (r *nodeRouter) InstanceSecrets(ctx context.Context, in *pb.InstanceSecretsRequest, opts ...grpc.CallOption) (*pb.InstanceSecretsResponse, error) {
	return r.as(in.Node).InstanceSecrets(ctx, in, opts...)
}

// Heartbeats: a stream's node is known only from its first message; tests
// open it with as(name).Heartbeats.
func (r *nodeRouter) Heartbeats(ctx context.Context, opts ...grpc.CallOption) (grpc.ClientStreamingClient[pb.HeartbeatRequest, pb.HeartbeatResponse], error) {
	panic("nodeRouter: open a Heartbeats stream with as(node).Heartbeats")
}
func (r *nodeRouter) WatchDiscoveryDeltas(ctx context.Context, in *pb.WatchDiscoveryRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.DiscoveryDelta], error) {
	return r.as(in.Node).WatchDiscoveryDeltas(ctx, in, opts...)
}
