package controlplane

import (
	"context"
	"strings"
	"testing"

	"github.com/berth-dev/berth/api/pb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// scale changes replicas only; rollout restart makes a new revision of
// the same template that a later apply of the unchanged manifest keeps
// (restartedAt is the server's); version answers.
func TestScaleRestartVersion(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	r, err := h.berth.Scale(ctx, &pb.ScaleRequest{Name: "hello", Replicas: 5})
	if err != nil || r.Action != "scaled" || r.Revision != 1 {
		t.Fatalf("scale: %v %v", r, err)
	}
	svc, _ := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if svc.Service.Spec.GetReplicas() != 5 {
		t.Fatalf("replicas after scale: %d", svc.Service.Spec.GetReplicas())
	}
	if _, err := h.berth.Scale(ctx, &pb.ScaleRequest{Name: "hello", Replicas: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("scale to -1: %v", err)
	}
	if _, err := h.berth.Scale(ctx, &pb.ScaleRequest{Name: "nope", Replicas: 1}); status.Code(err) != codes.NotFound {
		t.Fatalf("scale of a missing service: %v", err)
	}
	r, err = h.berth.Restart(ctx, &pb.RestartRequest{Name: "hello"})
	if err != nil || r.Revision != 2 || r.Action != "configured" {
		t.Fatalf("restart: %v %v", r, err)
	}
	svc, _ = h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if svc.Service.Spec.RestartedAt == nil || svc.Service.Status.GetRollbackTo() != 1 || svc.Service.Spec.GetReplicas() != 5 {
		t.Fatalf("after restart: %+v %+v", svc.Service.Spec, svc.Service.Status)
	}
	hist, _ := h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "hello"})
	if last := hist.Revisions[len(hist.Revisions)-1]; !strings.HasPrefix(last.Change, "rollout restart") {
		t.Fatalf("restart revision change %q", last.Change)
	}
	// The manifest applied again (replicas 5 as scaled) changes nothing.
	if r, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(5)}}); err != nil || r.Results[0].Action != "unchanged" {
		t.Fatalf("re-apply after restart: %v %v", r, err)
	}
	v, err := h.berth.Version(ctx, &pb.VersionRequest{})
	if err != nil || v.Version == "" || v.GoVersion == "" {
		t.Fatalf("version: %v %v", v, err)
	}
}
