package controller

import (
	"fmt"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

func svc(replicas int32, rev int64) *api.Service {
	return &api.Service{Metadata: api.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: api.ServiceSpec{Image: "img", Replicas: &replicas}, Status: api.ServiceStatus{Revision: rev}}
}

func vinst(id string, rev int64, node string, created int) store.VersionedInstance {
	return store.VersionedInstance{Instance: api.Instance{ID: id, Namespace: "default", Service: "web", Revision: rev, Node: node,
		Desired: api.DesiredRunning, CreatedAt: time.Unix(int64(created), 0)}, ModRevision: int64(created)}
}

func ids(vs []store.VersionedInstance) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Instance.ID)
	}
	return out
}

func seq() func(string) string {
	n := 0
	return func(s string) string { n++; return fmt.Sprintf("%s-new%d", s, n) }
}

func readyAll(nodes map[string]string) map[string]api.InstanceStatus {
	m := map[string]api.InstanceStatus{}
	for id, node := range nodes {
		m[id] = api.InstanceStatus{ID: id, Node: node, Ready: true, IP: "10.0.0.1"}
	}
	return m
}

func TestPlanCreatesMissingReplicas(t *testing.T) {
	plan := PlanReplicas(svc(3, 1), []store.VersionedInstance{vinst("a", 1, "n1", 1)}, nil, time.Now(), seq())
	if len(plan.Create) != 2 || len(plan.Drain) != 0 {
		t.Fatalf("plan = %+v", plan)
	}
	for _, in := range plan.Create {
		if in.Revision != 1 || in.Desired != api.DesiredRunning || in.Node != "" || in.Template.Image != "img" {
			t.Fatalf("bad new instance %+v", in)
		}
	}
}

func TestPlanScaleDownDrainsLeastUsefulFirst(t *testing.T) {
	instances := []store.VersionedInstance{vinst("old-ready", 1, "n1", 1), vinst("unplaced", 1, "", 2), vinst("not-ready", 1, "n1", 3), vinst("new-ready", 1, "n1", 4)}
	statuses := readyAll(map[string]string{"old-ready": "n1", "new-ready": "n1"})
	plan := PlanReplicas(svc(2, 1), instances, statuses, time.Now(), seq())
	got := ids(plan.Drain)
	if len(got) != 2 || got[0] != "unplaced" || got[1] != "not-ready" {
		t.Fatalf("drained %v, want [unplaced not-ready]", got)
	}
}

func TestPlanKeepsOldRevisionUntilNewIsReady(t *testing.T) {
	instances := []store.VersionedInstance{vinst("v1-a", 1, "n1", 1), vinst("v1-b", 1, "n1", 2), vinst("v2-a", 2, "n1", 3)}
	statuses := readyAll(map[string]string{"v1-a": "n1", "v1-b": "n1"})
	plan := PlanReplicas(svc(2, 2), instances, statuses, time.Now(), seq())
	if len(plan.Create) != 1 || len(plan.Drain) != 0 {
		t.Fatalf("while v2 is not ready: plan = create %d drain %v", len(plan.Create), ids(plan.Drain))
	}
	instances = append(instances, vinst("v2-b", 2, "n1", 4))
	statuses = readyAll(map[string]string{"v1-a": "n1", "v1-b": "n1", "v2-a": "n1", "v2-b": "n1"})
	plan = PlanReplicas(svc(2, 2), instances, statuses, time.Now(), seq())
	if len(plan.Create) != 0 || len(plan.Drain) != 2 {
		t.Fatalf("once v2 is ready: plan = create %d drain %v", len(plan.Create), ids(plan.Drain))
	}
}

func TestPlanDeletedServiceDrainsAll(t *testing.T) {
	instances := []store.VersionedInstance{vinst("a", 1, "n1", 1), vinst("b", 1, "n1", 2)}
	instances[1].Instance.Draining = true
	plan := PlanReplicas(nil, instances, nil, time.Now(), seq())
	if got := ids(plan.Drain); len(got) != 1 || got[0] != "a" {
		t.Fatalf("drained %v, want [a] (b is already draining)", got)
	}
}

func TestPlanReadinessOnOtherNodeDoesNotCount(t *testing.T) {
	// A status left by a node the instance is no longer on is stale.
	instances := []store.VersionedInstance{vinst("v1", 1, "n1", 1), vinst("v2", 2, "n2", 2)}
	statuses := readyAll(map[string]string{"v1": "n1", "v2": "n1"})
	plan := PlanReplicas(svc(1, 2), instances, statuses, time.Now(), seq())
	if len(plan.Drain) != 0 {
		t.Fatalf("drained %v although v2 is not ready on its node", ids(plan.Drain))
	}
}

func TestPlanDrainsOldReplicasThatServeNothing(t *testing.T) {
	instances := []store.VersionedInstance{vinst("v1-ready", 1, "n1", 1), vinst("v1-crashing", 1, "n1", 2), vinst("v1-unplaced", 1, "", 3)}
	statuses := readyAll(map[string]string{"v1-ready": "n1"})
	plan := PlanReplicas(svc(3, 2), instances, statuses, time.Now(), seq())
	got := ids(plan.Drain)
	if len(plan.Create) != 3 || len(got) != 2 || got[0] != "v1-crashing" || got[1] != "v1-unplaced" {
		t.Fatalf("create %d, drain %v", len(plan.Create), got)
	}
}

func rollingSvc(replicas int32, rev int64, surge, unavailable string) *api.Service {
	s := svc(replicas, rev)
	s.Spec.Rollout = &api.RolloutSpec{Strategy: api.StrategyRolling}
	if surge != "" {
		s.Spec.Rollout.MaxSurge = &api.IntOrPercent{}
		_ = s.Spec.Rollout.MaxSurge.UnmarshalJSON([]byte(`"` + surge + `"`))
	}
	if unavailable != "" {
		s.Spec.Rollout.MaxUnavailable = &api.IntOrPercent{}
		_ = s.Spec.Rollout.MaxUnavailable.UnmarshalJSON([]byte(`"` + unavailable + `"`))
	}
	return s
}

func TestRollingUpdatePacesSurgeAndUnavailability(t *testing.T) {
	var old []store.VersionedInstance
	nodes := map[string]string{}
	for i := 0; i < 4; i++ {
		id := fmt.Sprintf("v1-%d", i)
		old = append(old, vinst(id, 1, "n1", i))
		nodes[id] = "n1"
	}
	statuses := readyAll(nodes)
	// maxSurge 1, maxUnavailable 0: one new replica at a time, nothing drained yet.
	plan := PlanReplicas(rollingSvc(4, 2, "1", "0"), old, statuses, time.Now(), seq())
	if len(plan.Create) != 1 || len(plan.Drain) != 0 {
		t.Fatalf("surge 1: create %d drain %v", len(plan.Create), ids(plan.Drain))
	}
	// Once that one is ready, one old replica may go.
	withNew := append(append([]store.VersionedInstance{}, old...), vinst("v2-0", 2, "n1", 10))
	statuses["v2-0"] = api.InstanceStatus{ID: "v2-0", Node: "n1", Ready: true}
	plan = PlanReplicas(rollingSvc(4, 2, "1", "0"), withNew, statuses, time.Now(), seq())
	if len(plan.Create) != 0 || len(plan.Drain) != 1 {
		t.Fatalf("after one is ready: create %d drain %v", len(plan.Create), ids(plan.Drain))
	}
	// maxUnavailable 50%, maxSurge 0: two old replicas drain first, two new ones start only as room frees.
	plan = PlanReplicas(rollingSvc(4, 2, "0", "50%"), old, statuses, time.Now(), seq())
	if len(plan.Create) != 0 || len(plan.Drain) != 2 {
		t.Fatalf("unavailable 50%%: create %d drain %v", len(plan.Create), ids(plan.Drain))
	}
	// minReady: a new replica that became ready just now is not available yet.
	s := rollingSvc(4, 2, "1", "0")
	s.Spec.Rollout.MinReady = api.Duration{Duration: time.Minute}
	statuses["v2-0"] = api.InstanceStatus{ID: "v2-0", Node: "n1", Ready: true, StartedAt: time.Now()}
	plan = PlanReplicas(s, withNew, statuses, time.Now(), seq())
	if len(plan.Drain) != 0 {
		t.Fatalf("minReady not honoured: drain %v", ids(plan.Drain))
	}
}
