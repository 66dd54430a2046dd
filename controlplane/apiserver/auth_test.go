package apiserver

import (
	"testing"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/authz"
	"google.golang.org/grpc"
)

// Every RPC of both services has its permissions; none is listed that
// does not exist. A method missing here would be refused to everyone,
// which is safe but broken; this test catches it first.
func TestEveryMethodHasPermissions(t *testing.T) {
	exists := map[string]bool{}
	for _, sd := range []grpc.ServiceDesc{pb.Berth_ServiceDesc, pb.NodeAgent_ServiceDesc} {
		for _, m := range sd.Methods {
			exists["/"+sd.ServiceName+"/"+m.MethodName] = true
		}
		for _, s := range sd.Streams {
			exists["/"+sd.ServiceName+"/"+s.StreamName] = true
			name := "/" + sd.ServiceName + "/" + s.StreamName
			if s.ClientStreams && !streamsCheckedAtOpen[name] && !streamsCheckedAtFirstMessage[name] {
				t.Errorf("%s is a client stream: its permissions must be checked at open", s.StreamName)
			}
		}
	}
	for m := range exists {
		if methodPermissions[m] == nil {
			t.Errorf("%s has no permissions", m)
		}
	}
	for m := range methodPermissions {
		if !exists[m] {
			t.Errorf("permissions listed for %s, which is not an RPC", m)
		}
	}
}

// Apply needs Write in every namespace its objects name.
func TestApplyNeedsWriteInEveryNamespace(t *testing.T) {
	req := &pb.ApplyRequest{
		Services: []*pb.Service{{Metadata: &pb.ObjectMeta{Name: "a", Namespace: "shop"}}, {Metadata: &pb.ObjectMeta{Name: "b"}}},
		Volumes:  []*pb.Volume{{Metadata: &pb.ObjectMeta{Name: "v", Namespace: "billing"}}},
	}
	got := map[string]bool{}
	for _, r := range applyPermissions(req) {
		if r.Verb != authz.Write {
			t.Errorf("apply asks %s", r)
		}
		got[r.Namespace] = true
	}
	for _, ns := range []string{"shop", "default", "billing"} {
		if !got[ns] {
			t.Errorf("apply does not ask for write in %s: %v", ns, got)
		}
	}
}
