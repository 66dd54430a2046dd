package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/apierr"
	"github.com/berth-dev/berth/internal/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Retrying idempotent calls. A replica killed or restarted while a call
// is on the wire (a server killed just after committing an apply, #16)
// leaves the CLI without an answer although the call may have taken
// effect. A call whose second run leaves the same state as its first
// (apply of the same manifests, every read) is run again until an answer
// comes; a call that is not (token create makes a new token each time,
// rollout restart restarts again, exec and port-forward are sessions) is
// never retried here.

// retryPolicy bounds the retries: the first wait is First, each next one
// doubles up to Max, each drawn in [d/2, d] (jitter, so many CLIs do not
// come back together); no new attempt starts Window after the first
// failure. Attempt bounds one attempt (callCtx's 30 s).
type retryPolicy struct {
	First, Max, Window, Attempt time.Duration
}

// defaultRetry is the CLI's: about 30 s of retries, 100 ms doubling to 2 s
// (gRPC itself reconnects to a restarted replica within a second or two).
var defaultRetry = retryPolicy{First: 100 * time.Millisecond, Max: 2 * time.Second, Window: 30 * time.Second, Attempt: 30 * time.Second}

// answerLost reports whether err means the answer did not come back while
// the call may have run: the connection broke or no replica was there
// (Unavailable), or no answer in time (DeadlineExceeded). A deadline or
// cancel of the caller's own context is not one: the user gave up.
func answerLost(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		// A server that answered "no quorum" did not lose the answer.
		return !apierr.IsNoQuorum(err)
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// neverConnected reports whether err says no connection was made (the
// address refuses, or does not resolve).
func neverConnected(err error) bool {
	msg := status.Convert(err).Message()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host")
}

// retryIdempotent runs attempt, and again after an answer was lost
// (answerLost), printing "connection lost; retrying <what>" to stderr
// once, until an answer comes or the policy's window has passed. lost
// reports whether some attempt's answer was lost: then what the last
// attempt says may describe the state an earlier attempt made (an apply
// answers "unchanged" for what the lost attempt stored).
func retryIdempotent(ctx context.Context, stderr io.Writer, what string, p retryPolicy, attempt func(ctx context.Context) error) (lost bool, err error) {
	var deadline time.Time
	wait := backoff.Backoff{Base: p.First, Max: p.Max}
	for {
		actx, cancel := context.WithTimeout(ctx, p.Attempt)
		err = attempt(actx)
		cancel()
		if err == nil || !answerLost(ctx, err) {
			return lost, err
		}
		// A first attempt that found no server sent nothing: nothing can
		// have been stored, and a wrong address should not cost 30 s.
		if !lost && neverConnected(err) {
			return false, err
		}
		now := time.Now()
		if !lost {
			lost, deadline = true, now.Add(p.Window)
			fmt.Fprintf(stderr, "connection lost; retrying %s (%s)\n", what, status.Convert(err).Message())
		}
		d := wait.Next()
		if now.Add(d).After(deadline) {
			return lost, err
		}
		select {
		case <-ctx.Done():
			return lost, err
		case <-time.After(d):
		}
	}
}
