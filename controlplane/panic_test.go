package controlplane

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
)

// Panic routing, through the whole control plane: the only node of a
// service stops heartbeating (an agent killed and not yet back, #16). Its
// containers may well run, so its endpoints stay in the published snapshot,
// marked, `get instances` says so and a PanicRouting event is recorded;
// once the node is Lost its instances are replaced on another node, whose
// endpoint alone serves, and the panic's end is recorded.
func TestPanicRoutingKeepsASilentNodesEndpointsUntilReplaced(t *testing.T) {
	h := start(t, func(c *Config) {
		c.HeartbeatInterval, c.NodeTimeout, c.LostGrace = 100*time.Millisecond, time.Second, 2*time.Second
	})
	ctx := context.Background()
	register := func(name string) {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: name, Capacity: &pb.Capacity{MilliCpu: 4000, MemoryBytes: 4 << 30}}); err != nil {
			t.Fatal(err)
		}
	}
	register("a")
	stopA := heartbeat(t, h, "a")
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(1)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "hello's endpoint on a", func() (bool, string) {
		reportReady(t, h, "a")
		s := h.srv.Publisher().Latest().Lookup("default", "hello")
		return s != nil && len(s.ReadyEndpoints()) == 1, fmt.Sprint(s)
	})
	// b joins, empty: the replacement's place once a is Lost.
	register("b")
	heartbeat(t, h, "b")

	stopA()
	eventually(t, "a NotReady with its endpoint kept, marked", func() (bool, string) {
		s := h.srv.Publisher().Latest().Lookup("default", "hello")
		eps := s.ReadyEndpoints()
		return nodeState(h, "a") == "NotReady" && len(eps) == 1 && eps[0].Node == "a" && eps[0].Panic, fmt.Sprint(nodeState(h, "a"), s)
	})
	l, err := h.berth.ListInstances(ctx, &pb.ListInstancesRequest{Service: "hello"})
	if err != nil || len(l.Instances) != 1 || !l.Instances[0].PanicRouting {
		t.Fatalf("get instances does not show the kept endpoint: %v %v", l, err)
	}
	events := func() []string {
		l, _ := h.berth.ListEvents(ctx, &pb.ListEventsRequest{Namespace: "default"})
		var out []string
		for _, e := range l.GetEvents() {
			if strings.HasPrefix(e.Reason, "PanicRouting") {
				out = append(out, e.Reason+" "+e.Type+": "+e.Message)
			}
		}
		return out
	}
	eventually(t, "a PanicRouting event naming node a", func() (bool, string) {
		ev := events()
		return len(ev) == 1 && strings.HasPrefix(ev[0], "PanicRouting Warning") && strings.Contains(ev[0], "(a)"), fmt.Sprint(ev)
	})

	eventually(t, "a Lost, hello replaced on b and serving from b alone", func() (bool, string) {
		reportReady(t, h, "b")
		s := h.srv.Publisher().Latest().Lookup("default", "hello")
		eps := s.ReadyEndpoints()
		return nodeState(h, "a") == "Lost" && len(eps) == 1 && eps[0].Node == "b" && !eps[0].Panic, fmt.Sprint(nodeState(h, "a"), s)
	})
	eventually(t, "the panic's end recorded once", func() (bool, string) {
		ev := events()
		ended := 0
		for _, e := range ev {
			if strings.HasPrefix(e, "PanicRoutingEnded Normal") {
				ended++
			}
		}
		return len(ev) == 2 && ended == 1, fmt.Sprint(ev)
	})
}
