package controlplane

import (
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A node's clock never reaches liveness (#16, "clock jump on one node: no
// false node loss"): the heartbeat carries no time at all, and the replica
// stamps each one with its own clock when it arrives, so a node whose wall
// clock jumps can look neither dead nor alive for it. The first half fails
// if a time field is ever added to the heartbeat or the registration.
func TestLivenessUsesOnlyTheReplicasClock(t *testing.T) {
	for _, m := range []protoreflect.ProtoMessage{&pb.HeartbeatRequest{}, &pb.RegisterRequest{}} {
		d := m.ProtoReflect().Descriptor()
		fields := d.Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			if f.Message() != nil && (f.Message().FullName() == "google.protobuf.Timestamp" || f.Message().FullName() == "google.protobuf.Duration") {
				t.Errorf("%s.%s carries a node's clock into liveness", d.FullName(), f.Name())
			}
		}
	}

	serverNow := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	l := newLiveness(2 * time.Second)
	l.now = func() time.Time { return serverNow }
	l.Heard("n1", 7)
	if at, ok := l.LastHeard("n1"); !ok || !at.Equal(serverNow) {
		t.Fatalf("heard at %v (%v), want the replica's own time %v", at, ok, serverNow)
	}
}
