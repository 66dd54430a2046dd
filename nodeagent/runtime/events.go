package runtime

import (
	"context"
	"fmt"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"
)

// Exit is a Berth container's main process ending.
type Exit struct {
	InstanceID string
	Code       uint32
	At         time.Time
}

// Exits streams task exits (containerd's /tasks/exit events) of Berth
// containers in the namespace: only main processes, and only containers
// that still exist with a berth.instance label when the event is handled
// (so the exits Stop causes are mostly not reported). The channel is closed
// when ctx ends or the event stream breaks (the error is logged); a caller
// then subscribes again and reconciles with List, since exits in between
// are lost.
func (r *Runtime) Exits(ctx context.Context) (<-chan Exit, error) {
	filter := fmt.Sprintf(`topic=="/tasks/exit",namespace==%q`, r.cfg.Namespace)
	ctx, cancel := context.WithCancel(ctx)
	events, errs := r.client.Subscribe(ctx, filter)
	out := make(chan Exit, 64)
	go func() {
		defer cancel()
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-errs:
				if err != nil && ctx.Err() == nil {
					r.log.Warn("task exit event stream ended", "err", err)
				}
				return
			case env, ok := <-events:
				if !ok {
					return
				}
				if env == nil || env.Event == nil {
					continue
				}
				v, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					r.log.Warn("decode task exit event", "err", err)
					continue
				}
				te, ok := v.(*apievents.TaskExit)
				if !ok || te.ID != te.ContainerID {
					continue // not the main process
				}
				ctr, err := r.client.LoadContainer(ctx, te.ContainerID)
				if err != nil {
					continue // removed already, or not ours
				}
				labels, err := ctr.Labels(ctx)
				if err != nil || labels[LabelInstance] == "" {
					continue
				}
				exit := Exit{InstanceID: labels[LabelInstance], Code: te.ExitStatus}
				if te.ExitedAt != nil {
					exit.At = te.ExitedAt.AsTime()
				}
				select {
				case out <- exit:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}
