// Package apierr holds the API's errors that a client acts on by kind
// rather than by message: the server marks them with a gRPC ErrorInfo
// detail, and the client asks for the detail, never for words in the
// message (a message is for people and may change).
package apierr

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of Berth's errors.
const Domain = "berth.dev"

// ReasonNoQuorum: the replica's etcd member has no leader, so nothing
// can be written (and nothing was).
const ReasonNoQuorum = "NO_QUORUM"

// NoQuorum is the Unavailable error a call gets while etcd has no
// quorum; the message is format and args.
func NoQuorum(format string, args ...any) error {
	st := status.New(codes.Unavailable, fmt.Sprintf(format, args...))
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Domain: Domain, Reason: ReasonNoQuorum}); err == nil {
		st = d
	}
	return st.Err()
}

// IsNoQuorum reports whether err is NoQuorum's: the server answered, so
// the answer was not lost and a retry at once would get the same.
func IsNoQuorum(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == Domain && info.Reason == ReasonNoQuorum {
			return true
		}
	}
	return false
}
