package ui

import (
	"slices"
	"testing"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

func TestChangedTopics(t *testing.T) {
	base := func() *store.View {
		return &store.View{
			ServiceGens: map[string]uint64{"default/web": 1},
			Services:    []api.Service{{}},
			NodesGen:    1,
			DNSVersions: map[string]uint64{"a": 5},
			Gateways:    []api.GatewayStatus{{NodeID: "g", Version: 5, State: api.GatewaySynced}},
			Rollouts:    map[string]store.VersionedRollout{"default/web": {ModRevision: 7}},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(v *store.View)
		want   []string
	}{
		{"nothing", func(*store.View) {}, nil},
		{"a service", func(v *store.View) { v.ServiceGens["default/web"] = 2 }, []string{TopicServices, TopicEvents}},
		{"a node", func(v *store.View) { v.NodesGen = 2 }, []string{TopicNodes}},
		{"a node's DNS", func(v *store.View) { v.DNSVersions["a"] = 6 }, []string{TopicNodes}},
		{"a gateway", func(v *store.View) { v.Gateways[0].State = api.GatewayStale }, []string{TopicGateways}},
		{"a rollout", func(v *store.View) { v.Rollouts["default/web"] = store.VersionedRollout{ModRevision: 8} }, []string{TopicEvents, TopicRollouts}},
		{"a gateway's lag only", func(v *store.View) { v.Gateways[0].Lag = 5 }, nil},
	} {
		next := base()
		tc.change(next)
		if got := changedTopics(base(), next); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := changedTopics(nil, base()); !slices.Equal(got, allTopics) {
		t.Errorf("first view: %v", got)
	}
}
