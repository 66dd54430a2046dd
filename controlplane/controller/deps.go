package controller

import (
	"context"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/controlplane/store"
)

// Store is what the controllers write through: store.Store (a tracked
// one, whose Written says the revision of its own last write), or a
// recorder in the controller's tests. Every write is a compare-and-swap
// on what the controller read; none decides anything.
type Store interface {
	UpdateNode(ctx context.Context, name string, change func(n *api.Node) bool) (*api.Node, error)
	DeleteNode(ctx context.Context, name string) error
	CommitInstances(ctx context.Context, changes []store.InstanceChange) error
	Commit(ctx context.Context, changes []store.InstanceChange, volumes []store.VolumeChange) error
	PutRollout(ctx context.Context, r api.Rollout, modRevision int64) (int64, error)
	RollBack(ctx context.Context, r api.Rollout, rolloutModRev int64) error
	RecordEvents(ctx context.Context, evs []store.Event) error
	PruneEvents(ctx context.Context) (int64, error)
	PruneRevisions(ctx context.Context, ns, name string, current int64, inUse map[int64]bool) (int, error)
	Written() int64
}

// Views is where the controllers read the cluster from: store.Cache.
type Views interface {
	View() *store.View
	Subscribe() (<-chan struct{}, func())
	Ready() <-chan struct{}
}

var (
	_ Store = (*store.Store)(nil)
	_ Views = (*store.Cache)(nil)
)
