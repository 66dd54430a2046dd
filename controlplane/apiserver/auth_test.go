package apiserver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/authz"
	"github.com/berth-dev/berth/internal/apierr"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// etcd's "no leader" becomes the marked no-quorum error (nothing was
// written: the CLI does not retry); its proposal timeouts become an
// Unavailable that says the write may have been stored (the CLI retries
// an idempotent call); anything else passes as it is.
func TestEtcdErrorsSayWhatTheyMean(t *testing.T) {
	wrapped := func(err error) error { return fmt.Errorf("apply default/web: %w", err) }
	if err := noQuorum(wrapped(rpctypes.ErrNoLeader)); !apierr.IsNoQuorum(err) || !strings.Contains(err.Error(), "nothing was written") {
		t.Errorf("no leader: %v", err)
	}
	for _, e := range []error{rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrGRPCTimeoutDueToConnectionLost} {
		err := noQuorum(wrapped(e))
		if apierr.IsNoQuorum(err) || status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "may or may not have been stored") {
			t.Errorf("%v: %v", e, err)
		}
	}
	other := status.Error(codes.InvalidArgument, "spec.replicas: must be at least 0")
	if err := noQuorum(other); err != other {
		t.Errorf("an unrelated error changed: %v", err)
	}
	if noQuorum(nil) != nil {
		t.Error("nil changed")
	}
}
