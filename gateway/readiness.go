package gateway

import (
	"context"
	"errors"
)

// CheckReady reports whether the gateway can route: it has a
// configuration, from the control plane or saved by an earlier run (a
// saved one is served stale until the control plane confirms it, which
// berth_gateway_config_stale shows). The metrics port's /readyz asks it.
func (g *Gateway) CheckReady(context.Context) error {
	if g.table.Load() == nil {
		return errors.New("no configuration yet: the control plane has not answered and none was saved")
	}
	return nil
}
