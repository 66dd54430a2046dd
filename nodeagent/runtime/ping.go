package runtime

import (
	"context"
	"fmt"
)

// Ping asks containerd for its version: nil while the daemon answers on
// its socket (the agent's readiness).
func (r *Runtime) Ping(ctx context.Context) error {
	if _, err := r.client.Version(ctx); err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	return nil
}
