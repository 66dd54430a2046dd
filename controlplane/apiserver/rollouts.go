package apiserver

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RolloutStatus shows a service's canary: revision, step, weights, pause
// left, ready replicas and the traffic each side got.
func (s *Server) RolloutStatus(ctx context.Context, req *pb.RolloutRequest) (*pb.Rollout, error) {
	ns := nsOrDefault(req.Namespace)
	vr, err := s.store.GetRollout(ctx, ns, req.Name)
	if err != nil {
		return nil, storeErr(err)
	}
	r := vr.Rollout
	out := pb.FromRollout(&r)
	v := s.cache.View()
	if svc := v.Service(ns, req.Name); svc != nil {
		out.Replicas = svc.Spec.ReplicaCount()
		if at := r.DeadlineAt(svc.Spec.Rollout); !at.IsZero() {
			out.DeadlineLeft = max(time.Until(at), 0).Round(time.Second).String()
		}
	}
	if svc := v.Service(ns, req.Name); svc != nil && svc.Spec.Rollout != nil && r.Canary() {
		steps := svc.Spec.Rollout.Steps
		out.Steps = int32(len(steps))
		if r.Active() && r.Step < len(steps) && r.Weight == steps[r.Step].Weight {
			if d, ok := steps[r.Step].Pause.Duration(); ok {
				if left := time.Until(r.StepStartedAt.Add(d)); left > 0 {
					out.PauseLeft = left.Round(time.Second).String()
				}
			} else if steps[r.Step].Pause == api.PauseUntilPromoted {
				out.PauseLeft = "until promoted"
			}
		}
	}
	// The service's own instances (the view's index): the dashboard asks
	// this of every service on a refresh, and a scan of every instance of
	// the cluster per call made that services x instances.
	for _, vi := range v.ServiceInstances(ns + "/" + req.Name) {
		in := vi.Instance
		if !in.Live() || !in.ReadyWith(v.Statuses[in.ID]) {
			continue
		}
		switch in.Revision {
		case r.Revision:
			out.CanaryReady++
		case r.Stable:
			out.StableReady++
		}
	}
	for _, gw := range s.gateways().Gateways {
		line := fmt.Sprintf("%s: %s version %d", gw.NodeId, gw.State, gw.Version)
		if gw.Replica != "" {
			line = fmt.Sprintf("%s (via %s): %s version %d", gw.NodeId, gw.Replica, gw.State, gw.Version)
		}
		out.Gateways = append(out.Gateways, line)
	}
	for _, n := range v.Nodes {
		if v.LiveNodes[n.Name] {
			out.Nodes = append(out.Nodes, fmt.Sprintf("%s: version %d", n.Name, v.DNSVersions[n.Name]))
		}
	}
	// The controllers' own answer to "has everyone applied the weight?".
	out.WeightSynced, out.DnsSynced = true, true
	if r.WeightRevision > 0 {
		sync := controller.SyncOf(v, r.WeightRevision, s.publisher.VersionFor)
		out.WeightSynced, out.DnsSynced = sync.GatewaysApplied(), sync.DNSApplied()
	}
	if s.cfg.Loads != nil {
		window := time.Minute
		if !r.StepStartedAt.IsZero() {
			window = max(time.Since(r.StepStartedAt), time.Second)
		}
		canary := s.cfg.Loads.RevisionLoad(ns, req.Name, r.Revision, window)
		stable := s.cfg.Loads.RevisionLoad(ns, req.Name, r.Stable, window)
		out.CanaryRequests, out.CanaryErrors = canary.Requests, canary.Errors
		out.StableRequests, out.StableErrors = stable.Requests, stable.Errors
		if canary.LatencySamples > 0 {
			out.CanaryP99 = canary.P99.Round(time.Millisecond).String()
		}
		if stable.LatencySamples > 0 {
			out.StableP99 = stable.P99.Round(time.Millisecond).String()
		}
	}
	return out, nil
}

// RolloutAction records the user's pause, resume, promote or abort on
// the rollout; the controller acts on it in its next pass (abort: the
// one-step rollback, all traffic to stable at once, then the canary
// drains).
func (s *Server) RolloutAction(ctx context.Context, req *pb.RolloutActionRequest) (*pb.Rollout, error) {
	ns := nsOrDefault(req.Namespace)
	var msg string
	r, err := s.store.UpdateRollout(ctx, ns, req.Name, func(r *api.Rollout) error {
		if !r.Active() {
			return status.Errorf(codes.FailedPrecondition, "the rollout of %s/%s is %s, not in progress", ns, req.Name, r.Phase)
		}
		if !r.Canary() && req.Action != "abort" {
			return status.Errorf(codes.FailedPrecondition, "%s/%s is in a rolling update, which can only be aborted (`berth rollout abort`); pause, resume and promote are for canaries", ns, req.Name)
		}
		switch req.Action {
		case "pause":
			r.Pause, r.Resume, msg = true, false, "pause requested by the user"
		case "resume":
			r.Resume, msg = true, "resume requested by the user"
		case "promote":
			r.Promote, r.PromoteFull, msg = true, req.Full, "promoted by the user"
			if req.Full {
				msg = "promoted to 100% by the user"
			}
		case "abort":
			r.Abort, msg = true, "abort requested by the user; rolling back to revision "+fmt.Sprint(r.Stable)
		default:
			return status.Errorf(codes.InvalidArgument, "rollout action %q: use pause, resume, promote or abort", req.Action)
		}
		r.Message = msg
		return nil
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "service/" + req.Name, Reason: "Rollout", Message: fmt.Sprintf("%s (%s)", msg, principalOf(ctx))})
	return pb.FromRollout(r), nil
}
