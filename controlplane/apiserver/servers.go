package apiserver

import (
	"context"
	"errors"
	"io"

	"github.com/berth-dev/berth/api/pb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Members is the control plane's own membership (controlplane.Server):
// replicas, etcd members, snapshots.
type Members interface {
	ListServers(ctx context.Context) (*pb.ListServersResponse, error)
	RemoveServer(ctx context.Context, name string) (*pb.RemoveServerResponse, error)
	JoinEtcd(ctx context.Context, name, peerURL string) (*pb.JoinEtcdResponse, error)
	PromoteEtcdMember(ctx context.Context, id uint64) error
	Snapshot(ctx context.Context) (io.ReadCloser, int64, error)
}

func (s *Server) members() (Members, error) {
	if s.cfg.Members == nil {
		return nil, status.Error(codes.Unimplemented, "this API server does not manage the control plane's membership")
	}
	return s.cfg.Members, nil
}

// ListServers lists the control plane's replicas and etcd members.
func (s *Server) ListServers(ctx context.Context, _ *pb.ListServersRequest) (*pb.ListServersResponse, error) {
	m, err := s.members()
	if err != nil {
		return nil, err
	}
	return m.ListServers(ctx)
}

// RemoveServer removes a retired replica's etcd member.
func (s *Server) RemoveServer(ctx context.Context, req *pb.RemoveServerRequest) (*pb.RemoveServerResponse, error) {
	m, err := s.members()
	if err != nil {
		return nil, err
	}
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "remove server: name is empty")
	}
	return m.RemoveServer(ctx, req.GetName())
}

// JoinEtcd adds a joining replica's etcd member as a learner.
func (s *Server) JoinEtcd(ctx context.Context, req *pb.JoinEtcdRequest) (*pb.JoinEtcdResponse, error) {
	m, err := s.members()
	if err != nil {
		return nil, err
	}
	return m.JoinEtcd(ctx, req.GetName(), req.GetPeerUrl())
}

// PromoteEtcdMember promotes a caught-up learner.
func (s *Server) PromoteEtcdMember(ctx context.Context, req *pb.PromoteEtcdMemberRequest) (*pb.PromoteEtcdMemberResponse, error) {
	m, err := s.members()
	if err != nil {
		return nil, err
	}
	if err := m.PromoteEtcdMember(ctx, req.GetMemberId()); err != nil {
		return nil, err
	}
	return &pb.PromoteEtcdMemberResponse{}, nil
}

// snapshotChunk is the size of the pieces a snapshot is streamed in.
const snapshotChunk = 1 << 20

// Snapshot streams etcd's snapshot.
func (s *Server) Snapshot(_ *pb.SnapshotRequest, stream grpc.ServerStreamingServer[pb.SnapshotChunk]) error {
	m, err := s.members()
	if err != nil {
		return err
	}
	rc, rev, err := m.Snapshot(stream.Context())
	if err != nil {
		return err
	}
	defer rc.Close()
	s.logger.Info("etcd snapshot requested", "caller", principalOf(stream.Context()).String(), "revision", rev)
	buf := make([]byte, snapshotChunk)
	first := true
	for {
		n, err := io.ReadFull(rc, buf)
		if n > 0 {
			c := &pb.SnapshotChunk{Data: buf[:n]}
			if first {
				c.Revision, first = rev, false
			}
			if serr := stream.Send(c); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return status.Errorf(codes.Unavailable, "snapshot: reading from etcd: %v", err)
		}
	}
}
