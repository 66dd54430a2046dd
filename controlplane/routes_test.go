package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A service in another namespace cannot take over a route: the apply is
// refused naming the owner (before, the alphabetically first
// namespace/name silently got the traffic); describe shows the owner; the
// claim goes when the owner drops the route or is deleted.
func TestRouteClaimsOldestWins(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	thief := helloSpec(1)
	thief.Metadata.Namespace, thief.Metadata.Name = "aaa", "thief"
	_, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{thief}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "already routed to service default/hello") ||
		!strings.Contains(err.Error(), "aaa/thief: spec.route: host hello.example.test path /") {
		t.Fatalf("conflicting apply: %v", err)
	}
	if _, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "aaa", Name: "thief"}); status.Code(err) != codes.NotFound {
		t.Fatalf("the refused service was stored: %v", err)
	}
	// A different path on the same host is no conflict; nor is re-applying
	// the owner.
	thief.Spec.Route.Paths = []string{"/other"}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{thief, helloSpec(2)}}); err != nil {
		t.Fatal(err)
	}
	d, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Name: "hello"})
	if err != nil || len(d.RouteOwners) != 1 || !strings.HasPrefix(d.RouteOwners[0], "hello.example.test / -> default/hello (claimed ") {
		t.Fatalf("describe route owners: %q %v", d.GetRouteOwners(), err)
	}
	// Two services in one apply claiming one route: refused.
	a, b := helloSpec(1), helloSpec(1)
	a.Metadata.Name, b.Metadata.Name = "a", "b"
	a.Spec.Route.Hosts, b.Spec.Route.Hosts = []string{"twice.example.test"}, []string{"twice.example.test"}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{a, b}}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "in the same apply") {
		t.Fatalf("one route twice in an apply: %v", err)
	}
	// The owner moves to another host: the old one is free.
	moved := helloSpec(2)
	moved.Spec.Route.Hosts = []string{"hello2.example.test"}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{moved}}); err != nil {
		t.Fatal(err)
	}
	thief.Spec.Route.Paths = nil
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{thief}}); err != nil {
		t.Fatalf("route freed by its owner: %v", err)
	}
	// Deleting the owner frees its route.
	other := helloSpec(1)
	other.Metadata.Name = "other"
	other.Spec.Route.Hosts = []string{"hello2.example.test"}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{other}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("route of a live service taken: %v", err)
	}
	if _, err := h.berth.DeleteService(ctx, &pb.DeleteServiceRequest{Name: "hello"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{other}}); err != nil {
		t.Fatalf("route of a deleted service: %v", err)
	}
}

// Deleting a service takes its revisions and rollout record with it
// (before, `rollout status` of a deleted service still said Succeeded);
// --keep-history keeps them; a re-created service never reuses a number.
func TestDeleteServiceTakesItsHistory(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 8000, MemoryBytes: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h, "a")
	apply := func(name, image string) *pb.ApplyResult {
		t.Helper()
		s := helloSpec(1)
		s.Metadata.Name, s.Spec.Image, s.Spec.Route = name, image, nil
		r, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{s}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Results[0]
	}
	for _, name := range []string{"gone", "kept"} {
		apply(name, "hello:v1")
		eventually(t, name+" ready", func() (bool, string) {
			reportReady(t, h, "a")
			l, _ := h.berth.ListServices(ctx, &pb.ListServicesRequest{})
			for _, s := range l.GetServices() {
				if s.Service.Metadata.Name == name {
					return s.Ready == 1, fmt.Sprint(s)
				}
			}
			return false, "no service"
		})
		apply(name, "hello:v2")
		eventually(t, "a rollout record for "+name, func() (bool, string) {
			_, err := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: name})
			return err == nil, status.Convert(err).Message()
		})
	}
	if _, err := h.berth.DeleteService(ctx, &pb.DeleteServiceRequest{Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.berth.DeleteService(ctx, &pb.DeleteServiceRequest{Name: "kept", KeepHistory: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: "gone"}); status.Code(err) != codes.NotFound {
		t.Fatalf("rollout status of a deleted service: %v", err)
	}
	if l, err := h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "gone"}); err == nil && len(l.Revisions) > 0 {
		t.Fatalf("revisions of a deleted service: %v", l)
	}
	if l, err := h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Name: "kept"}); err != nil || len(l.Revisions) != 2 {
		t.Fatalf("--keep-history: %v %v", l, err)
	}
	if _, err := h.berth.RolloutStatus(ctx, &pb.RolloutRequest{Name: "kept"}); err != nil {
		t.Fatalf("--keep-history rollout: %v", err)
	}
	if r := apply("gone", "hello:v1"); r.Revision != 3 {
		t.Fatalf("re-created service: revision %d, want 3 (numbers go on)", r.Revision)
	}
}

// An instance that stops being ready leaves an event saying why (the
// probe's error its agent reported).
func TestNotReadyIsAnEventWithItsReason(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: "a", Capacity: &pb.Capacity{MilliCpu: 8000, MemoryBytes: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h, "a")
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	var ready *pb.InstanceView
	eventually(t, "hello ready", func() (bool, string) {
		reportReady(t, h, "a")
		l, _ := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
		for _, iv := range l.GetInstances() {
			if iv.Status.GetReady() {
				ready = iv
				return true, ""
			}
		}
		return false, fmt.Sprint(l)
	})
	st := ready.Status
	st.Ready, st.LastError = false, "readiness probe failed: probe http://10.0.0.2:8080/healthz: status 503"
	if _, err := h.agent.ReportStatus(ctx, &pb.ReportStatusRequest{Node: "a", Statuses: []*pb.InstanceStatus{st}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a NotReady event with the reason", func() (bool, string) {
		evs, _ := h.berth.ListEvents(ctx, &pb.ListEventsRequest{})
		for _, e := range evs.GetEvents() {
			if e.Reason == "NotReady" && strings.Contains(e.Message, "status 503") {
				return true, ""
			}
		}
		return false, fmt.Sprint(evs)
	})
}

// Services stored before route claims existed get them at startup, the
// older service first; a second startup writes nothing.
func TestStoredRoutesAreClaimedOldestFirst(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	put := func(name string, created time.Time) {
		svc := api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Metadata: api.ObjectMeta{Namespace: "default", Name: name},
			Spec:   api.ServiceSpec{Image: "berth.local/hello:v1", Route: &api.Route{Hosts: []string{"old.example.test"}, Paths: []string{"/"}}},
			Status: api.ServiceStatus{Revision: 1, CreatedAt: created}}
		b, _ := json.Marshal(svc)
		if _, err := h.srv.Etcd().Put(ctx, store.ServicesPrefix+"default/"+name, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	put("aaa-newer", time.Unix(2_000_000_000, 0))
	put("zzz-older", time.Unix(1_000_000_000, 0))
	lost, err := h.srv.Store().ClaimExistingRoutes(ctx)
	if err != nil || len(lost) != 1 || !strings.Contains(lost[0], "aaa-newer") || !strings.Contains(lost[0], "default/zzz-older") {
		t.Fatalf("lost %q, %v", lost, err)
	}
	// (The controllers write meanwhile: the claims' own revisions tell.)
	claimRev := func() int64 {
		r, err := h.srv.Etcd().Get(ctx, store.RoutesPrefix, clientv3.WithPrefix())
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("route claims: %v %v", r, err)
		}
		if !strings.Contains(string(r.Kvs[0].Value), "zzz-older") {
			t.Fatalf("claim %s", r.Kvs[0].Value)
		}
		return r.Kvs[0].ModRevision
	}
	before := claimRev()
	if lost, err := h.srv.Store().ClaimExistingRoutes(ctx); err != nil || len(lost) != 1 || claimRev() != before {
		t.Fatalf("second run: lost %q, %v, claim revision %d -> %d", lost, err, before, claimRev())
	}
}
