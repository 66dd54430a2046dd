package apiserver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/internal/buildinfo"
	"github.com/berth-dev/berth/manifests"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ListRevisions lists a service's kept revisions.
func (s *Server) ListRevisions(ctx context.Context, req *pb.ListRevisionsRequest) (*pb.ListRevisionsResponse, error) {
	ns := nsOrDefault(req.Namespace)
	// A service deleted with --keep-history still has its history: no
	// revision is current then.
	var current int64
	svc, err := s.store.GetService(ctx, ns, req.Name)
	switch {
	case err == nil:
		current = svc.Status.Revision
	case !errors.Is(err, store.ErrNotFound):
		return nil, storeErr(err)
	}
	v := s.cache.View()
	revs, err := s.store.ListRevisions(ctx, ns, req.Name)
	if err != nil {
		return nil, storeErr(err)
	}
	if current == 0 && len(revs) == 0 {
		return nil, status.Errorf(codes.NotFound, "service %s/%s: not found (and no history kept)", ns, req.Name)
	}
	count := map[int64]int32{}
	for _, vi := range v.Instances {
		if vi.Instance.Namespace == ns && vi.Instance.Service == req.Name {
			count[vi.Instance.Revision]++
		}
	}
	out := &pb.ListRevisionsResponse{}
	for _, r := range revs {
		out.Revisions = append(out.Revisions, &pb.RevisionInfo{Number: r.Number, Image: r.Template.Image, Change: r.Change,
			CreatedAt: tsOf(r.CreatedAt), Current: r.Number == current, Instances: count[r.Number], RolledBack: r.RolledBack})
	}
	return out, nil
}

// Undo rolls a service back to an earlier revision as a new revision.
func (s *Server) Undo(ctx context.Context, req *pb.UndoRequest) (*pb.ApplyResult, error) {
	ns := nsOrDefault(req.Namespace)
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "undo: service name is required")
	}
	res, err := s.store.Undo(ctx, ns, req.Name, req.ToRevision)
	if err != nil {
		return nil, storeErr(err)
	}
	msg := fmt.Sprintf("rolled back: revision %d (%s)", res.Revision, res.Action)
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "service/" + req.Name, Reason: "RolledBack", Type: "Warning", Message: msg})
	s.logger.Info("rollback", "service", ns+"/"+req.Name, "revision", res.Revision, "action", res.Action)
	return &pb.ApplyResult{Kind: api.KindService, Namespace: ns, Name: req.Name, Action: res.Action, Revision: res.Revision}, nil
}

// Scale sets a service's replicas.
func (s *Server) Scale(ctx context.Context, req *pb.ScaleRequest) (*pb.ApplyResult, error) {
	ns := nsOrDefault(req.Namespace)
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "scale: service name is required")
	}
	if req.Replicas < 0 || req.Replicas > manifests.MaxReplicas {
		return nil, status.Errorf(codes.InvalidArgument, "scale: replicas %d: must be between 0 and %d", req.Replicas, manifests.MaxReplicas)
	}
	res, err := s.store.Scale(ctx, ns, req.Name, req.Replicas)
	if err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "service/" + req.Name, Reason: "Scaled", Message: fmt.Sprintf("scaled to %d replicas", req.Replicas)})
	if res.Written > 0 {
		s.cache.WaitFor(ctx, res.Written, 2*time.Second)
	}
	return &pb.ApplyResult{Kind: api.KindService, Namespace: ns, Name: req.Name, Action: res.Action, Revision: res.Revision}, nil
}

// Restart replaces every replica of a service through a new revision of
// its template.
func (s *Server) Restart(ctx context.Context, req *pb.RestartRequest) (*pb.ApplyResult, error) {
	ns := nsOrDefault(req.Namespace)
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "restart: service name is required")
	}
	res, err := s.store.Restart(ctx, ns, req.Name)
	if err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "service/" + req.Name, Reason: "Restarted", Message: fmt.Sprintf("rollout restart: revision %d replaces every replica", res.Revision)})
	if res.Written > 0 {
		s.cache.WaitFor(ctx, res.Written, 2*time.Second)
	}
	return &pb.ApplyResult{Kind: api.KindService, Namespace: ns, Name: req.Name, Action: res.Action, Revision: res.Revision}, nil
}

// Version is the server's build.
func (s *Server) Version(ctx context.Context, req *pb.VersionRequest) (*pb.VersionResponse, error) {
	v := buildinfo.Get()
	return &pb.VersionResponse{Version: v.Version, GoVersion: v.GoVersion, Commit: v.Commit, Caller: principalOf(ctx).String()}, nil
}
