package nodeagent

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// pingingRuntime is the fake runtime with a containerd that answers or
// not.
type pingingRuntime struct {
	*fakeRuntime
	err error
}

func (p *pingingRuntime) Ping(context.Context) error { return p.err }

// Ready once registered with assignments, while the heartbeat reaches the
// control plane and containerd answers; each failure says which.
func TestAgentReadiness(t *testing.T) {
	h := newHarness(t)
	a := h.l.a
	rt := &pingingRuntime{fakeRuntime: h.rt}
	a.rt = rt
	ctx := context.Background()
	want := func(what, substr string) {
		t.Helper()
		err := a.CheckReady(ctx)
		switch {
		case substr == "" && err != nil:
			t.Errorf("%s: CheckReady = %v, want ready", what, err)
		case substr != "" && (err == nil || !strings.Contains(err.Error(), substr)):
			t.Errorf("%s: CheckReady = %v, want an error about %q", what, err, substr)
		}
	}
	want("before the first assignments", "no assignments")
	h.assign(running("a")) // closes Ready
	want("no heartbeat yet", "heartbeat")
	a.connected.Store(true)
	want("registered, heartbeat through", "")
	rt.err = errors.New("containerd: connection refused")
	want("containerd gone", "containerd")
	rt.err = nil
	a.connected.Store(false)
	want("heartbeat failing", "control plane not reachable")
}
