package controlplane

import (
	"context"
	"strings"
	"testing"

	"github.com/berth-dev/berth/api/pb"
	"google.golang.org/protobuf/proto"
)

// One legal service too large for one etcd transaction (100 replicas of
// 30 KB of env: 3 MB) used to fail every controller pass, and with it
// every other service. Commits are bounded by bytes: both services get
// all their replicas, placed.
func TestALargeServiceHoldsUpNoOne(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	for _, n := range []string{"n1", "n2"} {
		if _, err := h.agent.Register(ctx, &pb.RegisterRequest{Name: n, Address: "127.0.0.1", Capacity: &pb.Capacity{MilliCpu: 64000, MemoryBytes: 64 << 30}}); err != nil {
			t.Fatal(err)
		}
		heartbeat(t, h, n)
	}
	big := helloSpec(100)
	big.Metadata.Name = "big"
	big.Spec.Route = nil
	big.Spec.Resources = &pb.Resources{Cpu: "10m", Memory: "8Mi"}
	big.Spec.Env = map[string]string{"CONFIG": strings.Repeat("x", 30<<10)}
	small := helloSpec(2)
	small.Metadata.Name = "small"
	small.Spec.Route = nil
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{big, small}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both services fully placed", func() (bool, string) {
		b, s := placement(h, "big"), placement(h, "small")
		return b["n1"]+b["n2"] == 100 && s["n1"]+s["n2"] == 2, ""
	})
	// Scaling the large one down drains in bounded commits too.
	big.Spec.Replicas = proto.Int32(10)
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{big}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "scaled down to 10", func() (bool, string) {
		b := placement(h, "big")
		return b["n1"]+b["n2"] == 10, ""
	})
}
