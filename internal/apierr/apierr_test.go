package apierr

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The kind travels in the detail, not in the words: a message that
// mentions quorum is not NoQuorum, and NoQuorum wrapped on the way is.
func TestIsNoQuorum(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{NoQuorum("etcd has no quorum (%s)", "x"), true},
		{fmt.Errorf("apply: %w", NoQuorum("no leader")), true},
		{status.Error(codes.Unavailable, "etcd has no quorum"), false},
		{status.Error(codes.Unavailable, "connection refused"), false},
		{status.Error(codes.FailedPrecondition, "quorum"), false},
		{fmt.Errorf("plain"), false},
		{nil, false},
	} {
		if got := IsNoQuorum(c.err); got != c.want {
			t.Errorf("IsNoQuorum(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if got := status.Convert(NoQuorum("no leader: %d", 3)); got.Code() != codes.Unavailable || got.Message() != "no leader: 3" {
		t.Fatalf("NoQuorum's status: %v %q", got.Code(), got.Message())
	}
}
