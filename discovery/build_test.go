package discovery

import (
	"reflect"
	"testing"

	"github.com/berth-dev/berth/api"
)

func service(name string, rev int64, route bool) api.Service {
	s := api.Service{Metadata: api.ObjectMeta{Name: name, Namespace: "default"},
		Spec:   api.ServiceSpec{Image: "img", Ports: []api.Port{{Name: "http", Port: 8080, Protocol: "http"}}},
		Status: api.ServiceStatus{Revision: rev}}
	if route {
		s.Spec.Route = &api.Route{Hosts: []string{name + ".example.test"}}
	}
	return s
}

func instance(id string, rev int64, node string) api.Instance {
	return api.Instance{ID: id, Namespace: "default", Service: "web", Revision: rev, Node: node, Desired: api.DesiredRunning}
}

func TestBuildReadyEndpointsAndWeights(t *testing.T) {
	st := State{
		Version:  42,
		Services: []api.Service{service("web", 2, true), service("api", 1, false)},
		Instances: []api.Instance{
			instance("web-a", 1, "n1"), instance("web-b", 2, "n1"), instance("web-c", 2, "n2"),
			instance("web-d", 2, "n1"), instance("web-e", 2, "n3"),
		},
		Statuses: map[string]api.InstanceStatus{
			"web-a": {ID: "web-a", Node: "n1", IP: "10.0.0.1", Ready: true},
			"web-b": {ID: "web-b", Node: "n1", IP: "10.0.0.2", Ready: true},
			"web-c": {ID: "web-c", Node: "n2", IP: "10.0.1.2", Ready: false},
			"web-d": {ID: "web-d", Node: "n1", IP: "10.0.0.4", Ready: true},
			"web-e": {ID: "web-e", Node: "n3", IP: "10.0.3.2", Ready: true},
		},
		DownNodes: map[string]NodeDown{"n3": NodeUnreachable},
	}
	st.Instances[3].Draining = true
	snap := Build(st)
	if snap.Version != 42 || len(snap.Services) != 2 || snap.Services[0].Name != "api" {
		t.Fatalf("snapshot = %+v", snap)
	}
	web := snap.Lookup("default", "web")
	if web == nil || web.Route == nil || web.Route.Paths[0] != "/" {
		t.Fatalf("web = %+v", web)
	}
	if len(web.Revisions) != 2 || web.Revisions[0].Weight != 0 || web.Revisions[1].Weight != 100 {
		t.Fatalf("weights = %+v", web.Revisions)
	}
	ready := web.ReadyEndpoints()
	if len(ready) != 2 || ready[0].Instance != "web-a" || ready[1].Instance != "web-b" {
		t.Fatalf("ready endpoints = %+v", ready)
	}
	// The draining endpoint is kept, marked; the one on a lost node is gone.
	var sawDraining bool
	for _, e := range web.Revisions[1].Endpoints {
		if e.Instance == "web-d" {
			sawDraining = e.Draining && !e.Ready
		}
		if e.Instance == "web-e" {
			t.Fatal("endpoint on a not-ready node is published")
		}
	}
	if !sawDraining {
		t.Fatal("draining endpoint not marked")
	}
	if api := snap.Lookup("default", "api"); api == nil || len(api.Revisions) != 1 || api.Revisions[0].Weight != 100 || api.Route != nil {
		t.Fatalf("api = %+v", api)
	}
}

func TestBuildKeepsTrafficOnOldRevisionUntilNewIsReady(t *testing.T) {
	st := State{
		Services:  []api.Service{service("web", 2, true)},
		Instances: []api.Instance{instance("web-a", 1, "n1"), instance("web-b", 2, "n1")},
		Statuses: map[string]api.InstanceStatus{
			"web-a": {ID: "web-a", Node: "n1", IP: "10.0.0.1", Ready: true},
			"web-b": {ID: "web-b", Node: "n1", IP: "10.0.0.2", Ready: false},
		},
	}
	web := Build(st).Lookup("default", "web")
	if web.Revisions[0].Number != 1 || web.Revisions[0].Weight != 100 || web.Revisions[1].Weight != 0 {
		t.Fatalf("weights = %+v", web.Revisions)
	}
}

func TestBuildServiceWithoutEndpointsStillExists(t *testing.T) {
	snap := Build(State{Services: []api.Service{service("web", 1, true)}})
	web := snap.Lookup("default", "web")
	if web == nil || len(web.Revisions) != 1 || web.Revisions[0].Weight != 100 || len(web.ReadyEndpoints()) != 0 {
		t.Fatalf("web = %+v", web)
	}
	if snap.Lookup("default", "nope") != nil || snap.Lookup("other", "web") != nil {
		t.Fatal("lookup found a service that does not exist")
	}
}

func TestBuildStickyCanary(t *testing.T) {
	state := func(sticky *api.StickyCohort, phase string, canaryReady bool) State {
		svc := service("web", 2, true)
		svc.Spec.Rollout = &api.RolloutSpec{Strategy: "canary", Sticky: sticky,
			CanaryHeader: &api.HeaderMatch{Name: "X-Canary", Value: "always"}}
		return State{
			Services:  []api.Service{svc},
			Instances: []api.Instance{instance("web-a", 1, "n1"), instance("web-b", 2, "n1")},
			Statuses: map[string]api.InstanceStatus{
				"web-a": {ID: "web-a", Node: "n1", IP: "10.0.0.1", Ready: true},
				"web-b": {ID: "web-b", Node: "n1", IP: "10.0.0.2", Ready: canaryReady},
			},
			Rollouts: map[string]api.Rollout{"default/web": {Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: phase, Weight: 10}},
		}
	}
	for _, tc := range []struct {
		name           string
		st             State
		header, cookie string
		canary         int64
		weights        [2]uint32 // stable, canary
	}{
		{"cookie", state(&api.StickyCohort{Cookie: "Session_ID"}, api.RolloutProgressing, true), "", "Session_ID", 2, [2]uint32{90, 10}},
		{"header lowercased", state(&api.StickyCohort{Header: "X-User-ID"}, api.RolloutPaused, true), "x-user-id", "", 2, [2]uint32{90, 10}},
		{"canary not ready", state(&api.StickyCohort{Cookie: "sid"}, api.RolloutProgressing, false), "", "", 0, [2]uint32{100, 0}},
		{"rollout over", state(&api.StickyCohort{Cookie: "sid"}, api.RolloutSucceeded, true), "", "", 0, [2]uint32{0, 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			web := Build(tc.st).Lookup("default", "web")
			rt := web.Route
			if rt.StickyHeader != tc.header || rt.StickyCookie != tc.cookie || rt.CanaryRevision != tc.canary {
				t.Errorf("route = %+v, want sticky header %q cookie %q canary %d", rt, tc.header, tc.cookie, tc.canary)
			}
			if tc.canary != 0 && (rt.CanaryHeader != "x-canary" || rt.CanaryValue != "always") {
				t.Errorf("canary header lost beside sticky cohorts: %+v", rt)
			}
			if len(web.Revisions) != 2 || web.Revisions[0].Number != 1 || web.Revisions[0].Weight != tc.weights[0] || web.Revisions[1].Weight != tc.weights[1] {
				t.Errorf("revisions = %+v, want weights %v", web.Revisions, tc.weights)
			}
		})
	}
	// Without sticky cohorts the route names no key, but still the canary
	// of its canary header.
	rt := Build(state(nil, api.RolloutProgressing, true)).Lookup("default", "web").Route
	if rt.StickyHeader != "" || rt.StickyCookie != "" || rt.CanaryRevision != 2 {
		t.Errorf("without sticky: route = %+v", rt)
	}
}

// Serving: the weighted revisions' serving endpoints; when they have none,
// every serving endpoint, unweighted.
func TestServing(t *testing.T) {
	ep := func(id string, ready, draining bool) Endpoint {
		return Endpoint{Instance: id, IP: "10.0.0.1", Ready: ready, Draining: draining}
	}
	svc := Service{Revisions: []Revision{
		{Number: 1, Weight: 0, Endpoints: []Endpoint{ep("old-1", true, false)}},
		{Number: 2, Weight: 100, Endpoints: []Endpoint{ep("new-1", true, false), ep("new-2", false, false), ep("new-3", true, true)}},
	}}
	got := svc.Serving()
	if len(got) != 1 || got[0].Number != 2 || got[0].Weight != 100 || len(got[0].Endpoints) != 1 || got[0].Endpoints[0].Instance != "new-1" {
		t.Fatalf("weighted: %+v", got)
	}
	svc.Revisions[1].Endpoints[0].Ready = false // the weighted revision serves nothing
	got = svc.Serving()
	if len(got) != 1 || got[0].Number != 1 || got[0].Weight != 0 || got[0].Endpoints[0].Instance != "old-1" {
		t.Fatalf("fallback: %+v", got)
	}
	svc.Revisions[0].Endpoints[0].Draining = true
	if got := svc.Serving(); len(got) != 0 {
		t.Fatalf("nothing serves: %+v", got)
	}
}

// Panic routing: when every endpoint that would serve left only because
// its node stopped reporting, those endpoints are kept, marked; endpoints
// that left for a reason of their own never are.
func TestBuildPanicRouting(t *testing.T) {
	type ep struct {
		instance string
		ready    bool
		panic    bool
	}
	base := func() State {
		return State{
			Services:  []api.Service{service("web", 1, true)},
			Instances: []api.Instance{instance("web-a", 1, "n1"), instance("web-b", 1, "n2")},
			Statuses: map[string]api.InstanceStatus{
				"web-a": {ID: "web-a", Node: "n1", IP: "10.0.0.1", Ready: true},
				"web-b": {ID: "web-b", Node: "n2", IP: "10.0.1.1", Ready: true},
			},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(*State)
		want   []ep
		nodes  []string // PanicNodes
	}{
		{"all nodes reachable: no panic", func(*State) {}, []ep{{"web-a", true, false}, {"web-b", true, false}}, nil},
		{"every node unreachable: all kept, marked", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable, "n2": NodeUnreachable}
		}, []ep{{"web-a", true, true}, {"web-b", true, true}}, []string{"n1", "n2"}},
		{"one ready on a reachable node: only it", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable}
		}, []ep{{"web-b", true, false}}, nil},
		{"the reachable one unready by its probe: the unreachable one kept", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable}
			st.Statuses["web-b"] = api.InstanceStatus{ID: "web-b", Node: "n2", IP: "10.0.1.1"}
		}, []ep{{"web-a", true, true}, {"web-b", false, false}}, []string{"n1"}},
		{"unready by its own probe before the node went: not kept", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable, "n2": NodeUnreachable}
			st.Statuses["web-a"] = api.InstanceStatus{ID: "web-a", Node: "n1", IP: "10.0.0.1"}
		}, []ep{{"web-b", true, true}}, []string{"n2"}},
		{"draining: not kept", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable, "n2": NodeUnreachable}
			st.Instances[0].Draining = true
		}, []ep{{"web-b", true, true}}, []string{"n2"}},
		{"told to stop: not kept", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable, "n2": NodeUnreachable}
			st.Instances[1].Desired = api.DesiredStopped
		}, []ep{{"web-a", true, true}}, []string{"n1"}},
		{"deleted: not kept", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeUnreachable, "n2": NodeUnreachable}
			st.Instances = st.Instances[:1]
		}, []ep{{"web-a", true, true}}, []string{"n1"}},
		{"Lost node: not kept", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeGone, "n2": NodeGone}
		}, nil, nil},
		{"Lost node beside an unreachable one: only the unreachable one's", func(st *State) {
			st.DownNodes = map[string]NodeDown{"n1": NodeGone, "n2": NodeUnreachable}
		}, []ep{{"web-b", true, true}}, []string{"n2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := base()
			tc.change(&st)
			web := Build(st).Lookup("default", "web")
			var got []ep
			for _, e := range web.Revisions[0].Endpoints {
				got = append(got, ep{e.Instance, e.Ready, e.Panic})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("endpoints = %+v, want %+v", got, tc.want)
			}
			if got := web.PanicNodes(); !reflect.DeepEqual(got, tc.nodes) {
				t.Errorf("PanicNodes = %v, want %v", got, tc.nodes)
			}
		})
	}
}

// A canary whose only node stopped reporting passes its share to the
// stable revision, which serves: no panic. When both sides' nodes stopped
// reporting, both are kept and the rollout's weights stand.
func TestBuildPanicRoutingWithCanary(t *testing.T) {
	st := State{
		Services:  []api.Service{service("web", 2, true)},
		Instances: []api.Instance{instance("web-a", 1, "n1"), instance("web-b", 2, "n2")},
		Statuses: map[string]api.InstanceStatus{
			"web-a": {ID: "web-a", Node: "n1", IP: "10.0.0.1", Ready: true},
			"web-b": {ID: "web-b", Node: "n2", IP: "10.0.1.1", Ready: true},
		},
		Rollouts:  map[string]api.Rollout{"default/web": {Namespace: "default", Service: "web", Revision: 2, Stable: 1, Phase: api.RolloutProgressing, Weight: 10}},
		DownNodes: map[string]NodeDown{"n2": NodeUnreachable},
	}
	st.Services[0].Spec.Rollout = &api.RolloutSpec{Strategy: "canary"}
	web := Build(st).Lookup("default", "web")
	if len(web.PanicNodes()) != 0 || web.Revisions[0].Weight != 100 || web.Revisions[1].Weight != 0 || len(web.Revisions[1].Endpoints) != 0 {
		t.Fatalf("canary's node unreachable: %+v", web.Revisions)
	}
	st.DownNodes["n1"] = NodeUnreachable
	web = Build(st).Lookup("default", "web")
	if got := web.PanicNodes(); !reflect.DeepEqual(got, []string{"n1", "n2"}) || web.Revisions[0].Weight != 90 || web.Revisions[1].Weight != 10 {
		t.Fatalf("every node unreachable: panic nodes %v, revisions %+v", got, web.Revisions)
	}
}

func TestDownNodesOf(t *testing.T) {
	nodes := []api.Node{
		{Name: "live", State: api.NodeReady},
		{Name: "silent", State: api.NodeNotReady},
		{Name: "lost", State: api.NodeLost},
		{Name: "removed", State: api.NodeNotReady, Removed: true},
		{Name: "drained", State: api.NodeNotReady, Drain: true, Cordoned: true},
		{Name: "cordoned", State: api.NodeNotReady, Cordoned: true},
		{Name: "spared", State: api.NodeReady},
	}
	got := DownNodesOf(nodes, map[string]bool{"live": true}, func(n *api.Node) bool { return n.Name == "spared" })
	want := map[string]NodeDown{"silent": NodeUnreachable, "lost": NodeGone, "removed": NodeGone, "drained": NodeGone, "cordoned": NodeUnreachable}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("DownNodesOf = %v, want %v", got, want)
	}
}

// An endpoint kept by panic routing that serves for real again is a
// changed item: the delta feeds carry the end of the panic.
func TestServiceItemsCarryPanic(t *testing.T) {
	svc := Service{Namespace: "default", Name: "web", Revisions: []Revision{{Number: 1, Weight: 100,
		Endpoints: []Endpoint{{Instance: "web-a", Node: "n1", IP: "10.0.0.1", Ready: true, Panic: true}}}}}
	kept := map[string]string{}
	ServiceItems(&svc, kept)
	svc.Revisions[0].Endpoints[0].Panic = false
	back := map[string]string{}
	ServiceItems(&svc, back)
	changed := map[string]string{}
	for k, v := range back {
		if kept[k] != v {
			changed[k] = v
		}
	}
	deltas, _ := DeltaOf(&Snapshot{Services: []Service{svc}}, changed, nil)
	if len(deltas) != 1 || deltas[0].Header != nil || len(deltas[0].Endpoints) != 1 || deltas[0].Endpoints[0].Endpoint.Panic {
		t.Fatalf("deltas = %+v", deltas)
	}
}
