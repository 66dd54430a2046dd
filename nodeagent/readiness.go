package nodeagent

import (
	"context"
	"errors"
)

// pinger is a runtime that can say whether its daemon answers
// (runtime.Runtime asks containerd).
type pinger interface {
	Ping(ctx context.Context) error
}

// CheckReady reports whether the agent can run this node's instances: it
// has registered and received its assignments, its last heartbeat reached
// the control plane, and containerd answers. The metrics port's /readyz
// asks it.
func (a *Agent) CheckReady(ctx context.Context) error {
	select {
	case <-a.ready:
	default:
		return errors.New("not registered with the control plane, or no assignments yet")
	}
	if !a.connected.Load() {
		return errors.New("control plane not reachable: the last heartbeat failed")
	}
	if p, ok := a.rt.(pinger); ok {
		if err := p.Ping(ctx); err != nil {
			return err
		}
	}
	return nil
}
