package nodeagent

import (
	"context"
	"io"
	"net/netip"
	"time"

	"github.com/berth-dev/berth/nodeagent/runtime"
)

// Runtime is what the agent needs of the node's container runtime:
// runtime.Runtime (containerd and CNI), or a fake in the loop's tests.
type Runtime interface {
	Start(ctx context.Context, spec runtime.ContainerSpec) (runtime.Container, error)
	Restart(ctx context.Context, instanceID string) (runtime.Container, error)
	Stop(ctx context.Context, instanceID string, grace time.Duration) error
	Kill(ctx context.Context, instanceID string, grace time.Duration) error
	List(ctx context.Context) ([]runtime.Container, error)
	RemoveLeftovers(ctx context.Context) ([]string, error)
	Exits(ctx context.Context) (<-chan runtime.Exit, error)

	HasImage(ctx context.Context, ref string) (bool, error)
	ImportImage(ctx context.Context, rd io.Reader) ([]string, error)
	PullImage(ctx context.Context, ref string) error
	ImageLabel(ctx context.Context, ref, key string) (string, error)
	LabelImage(ctx context.Context, ref, key, value string) error

	GatewayIP() netip.Addr
	Close() error
}

var _ Runtime = (*runtime.Runtime)(nil)
