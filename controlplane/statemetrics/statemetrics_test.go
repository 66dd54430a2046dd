package statemetrics

import (
	"strings"
	"testing"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/internal/metricstest"
	"github.com/prometheus/client_golang/prometheus"
)

// scrape gathers reg into "name{label=value,...}" -> value.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	return metricstest.Series(t, reg)
}

func replicas(n int32) *int32 { return &n }

// clusterView has service default/web (3 replicas wanted, a canary at
// step 1 and 25%: two live instances, one ready, one draining), default/api
// without a rollout, a Ready node and a NotReady cordoned one.
func clusterView() *store.View {
	web := api.Service{Metadata: api.ObjectMeta{Namespace: "default", Name: "web"}, Spec: api.ServiceSpec{Replicas: replicas(3)}, Status: api.ServiceStatus{Revision: 2}}
	apiSvc := api.Service{Metadata: api.ObjectMeta{Namespace: "default", Name: "api"}}
	in := func(id string, draining bool) store.VersionedInstance {
		return store.VersionedInstance{Instance: api.Instance{ID: id, Namespace: "default", Service: "web", Node: "n1", Desired: api.DesiredRunning, Draining: draining}}
	}
	return &store.View{
		Services:  []api.Service{apiSvc, web},
		Instances: []store.VersionedInstance{in("web-1", false), in("web-2", false), in("web-3", true)},
		Statuses: map[string]api.InstanceStatus{
			"web-1": {ID: "web-1", Node: "n1", Ready: true},
			"web-2": {ID: "web-2", Node: "n1"},
			"web-3": {ID: "web-3", Node: "n1", Ready: true},
		},
		Rollouts: map[string]store.VersionedRollout{"default/web": {Rollout: api.Rollout{
			Namespace: "default", Service: "web", Strategy: api.StrategyCanary, Revision: 2, Stable: 1,
			Phase: api.RolloutProgressing, Step: 1, Weight: 25,
		}}},
		Nodes: []api.Node{
			{Name: "n1", State: api.NodeReady},
			{Name: "n2", State: api.NodeNotReady, Cordoned: true},
		},
		LiveNodes:   map[string]bool{"n1": true},
		DNSVersions: map[string]uint64{"n1": 7},
	}
}

func TestStateSeries(t *testing.T) {
	view := clusterView()
	reg := prometheus.NewRegistry()
	reg.MustRegister(New(func() *store.View { return view }, nil))
	got := scrape(t, reg)
	want := map[string]float64{
		"berth_service_replicas_desired{namespace=default,service=web}":                        3,
		"berth_service_replicas_ready{namespace=default,service=web}":                          1,
		"berth_service_instances{namespace=default,service=web}":                               2,
		"berth_service_revision{namespace=default,service=web}":                                2,
		"berth_service_replicas_desired{namespace=default,service=api}":                        1,
		"berth_service_replicas_ready{namespace=default,service=api}":                          0,
		"berth_rollout_phase{namespace=default,phase=Progressing,service=web,strategy=canary}": 1,
		"berth_rollout_phase{namespace=default,phase=RolledBack,service=web,strategy=canary}":  0,
		"berth_rollout_step{namespace=default,service=web}":                                    1,
		"berth_rollout_canary_weight_ratio{namespace=default,service=web}":                     0.25,
		"berth_node_status{node=n1,status=Ready}":                                              1,
		"berth_node_status{node=n1,status=NotReady}":                                           0,
		"berth_node_status{node=n2,status=NotReady}":                                           1,
		"berth_node_cordoned{node=n2}":                                                         1,
		"berth_node_dns_version{node=n1}":                                                      7,
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s = %v (exported %v), want %v", k, g, ok, w)
		}
	}
	if _, ok := got["berth_node_dns_version{node=n2}"]; ok {
		t.Error("a node that is not live has a DNS version")
	}
	if _, ok := got["berth_rollout_phase{namespace=default,phase=Progressing,service=api,strategy=canary}"]; ok {
		t.Error("a service without a rollout has rollout series")
	}

	// The canary rolls back: its phase moves, step and weight go.
	r := view.Rollouts["default/web"]
	r.Rollout.Phase, r.Rollout.Weight = api.RolloutRolledBack, 0
	view.Rollouts["default/web"] = r
	got = scrape(t, reg)
	if got["berth_rollout_phase{namespace=default,phase=RolledBack,service=web,strategy=canary}"] != 1 ||
		got["berth_rollout_phase{namespace=default,phase=Progressing,service=web,strategy=canary}"] != 0 {
		t.Errorf("rolled back canary's phases: %v", got)
	}
	if _, ok := got["berth_rollout_canary_weight_ratio{namespace=default,service=web}"]; ok {
		t.Error("a rolled back canary keeps its weight series")
	}
}

// A deleted service, its rollout and instances, and a removed node leave
// no series behind; a replica that does not lead exports nothing.
func TestDeletedThingsLeaveNoSeries(t *testing.T) {
	view := clusterView()
	leader := true
	reg := prometheus.NewRegistry()
	reg.MustRegister(New(func() *store.View { return view }, func() bool { return leader }))
	if n := len(scrape(t, reg)); n == 0 {
		t.Fatal("no series before the delete")
	}
	view = clusterView()
	view.Services = view.Services[:1] // default/web deleted
	view.Instances, view.Rollouts = nil, map[string]store.VersionedRollout{}
	view.Nodes = view.Nodes[:1] // n2 removed
	for k := range scrape(t, reg) {
		if strings.Contains(k, "service=web") || strings.Contains(k, "node=n2") {
			t.Errorf("%s left after its object was deleted", k)
		}
	}
	leader = false
	if got := scrape(t, reg); len(got) != 0 {
		t.Errorf("a replica that does not lead exports %v", got)
	}
}
