package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/internal/backoff"
	apievents "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
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
// (so the exits Stop causes are mostly not reported).
//
// While containerd is away (a restart) Exits waits for it to answer again
// rather than failing at once: the containerd connection retries with a
// backoff capped below a second (connect), so a caller is subscribed
// again within about a second of containerd's return. The channel is
// closed when ctx ends or the event stream breaks; a caller then
// subscribes again and reconciles with List, since exits in between are
// lost. FollowExits does both.
func (r *Runtime) Exits(ctx context.Context) (<-chan Exit, error) {
	conn, ok := r.client.Conn().(*grpc.ClientConn)
	if !ok {
		return nil, errors.New("runtime: subscribe to task exits: containerd client has no gRPC connection")
	}
	filter := fmt.Sprintf(`topic=="/tasks/exit",namespace==%q`, r.cfg.Namespace)
	ctx, cancel := context.WithCancel(ctx)
	// WaitForReady: containerd's own Subscribe fails at once while the
	// connection is down, which leaves the caller to poll.
	stream, err := eventsapi.NewEventsClient(conn).Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: []string{filter}}, grpc.WaitForReady(true))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("runtime: subscribe to task exits: %w", err)
	}
	out := make(chan Exit, 64)
	go func() {
		defer cancel()
		defer close(out)
		for {
			env, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					// The caller says so, once per outage.
					r.log.Debug("task exit event stream ended", "err", err)
				}
				return
			}
			if env.Event == nil {
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
	}()
	return out, nil
}

// ExitFeed is a subscription to task exits that outlives breaks of
// containerd's event stream (FollowExits).
type ExitFeed struct {
	exits        chan Exit
	resubscribed chan struct{}
	attempts     atomic.Int64
}

// Exits are the task exits; the channel is not closed.
func (f *ExitFeed) Exits() <-chan Exit { return f.exits }

// Resubscribed receives after each new subscription that follows a break:
// exits in between were lost, so the receiver reconciles with List.
func (f *ExitFeed) Resubscribed() <-chan struct{} { return f.resubscribed }

// Attempts is how many times the feed has subscribed again.
func (f *ExitFeed) Attempts() int64 { return f.attempts.Load() }

// Resubscription backoff: the first attempt comes quickly, later ones no
// more often than about once a second. Attempts mostly wait inside
// subscribe (Exits waits for containerd), so this only bounds a stream
// that breaks again as soon as it opens.
const (
	resubscribeBase = 100 * time.Millisecond
	resubscribeMax  = time.Second
	// A subscription that lasted this long was healthy: the next break
	// starts the backoff again from its base.
	resubscribeHealthy = 10 * time.Second
)

// FollowExits subscribes to task exits with subscribe (Runtime.Exits) and,
// whenever the stream breaks, subscribes again with a bounded, jittered
// backoff, logging once per outage. The first subscription happens before
// it returns (its error is returned); later ones in a goroutine that ends
// with ctx.
func FollowExits(ctx context.Context, subscribe func(context.Context) (<-chan Exit, error), log *slog.Logger) (*ExitFeed, error) {
	ch, err := subscribe(ctx)
	if err != nil {
		return nil, err
	}
	f := &ExitFeed{exits: make(chan Exit, 64), resubscribed: make(chan struct{}, 1)}
	go f.follow(ctx, ch, subscribe, log)
	return f, nil
}

func (f *ExitFeed) follow(ctx context.Context, ch <-chan Exit, subscribe func(context.Context) (<-chan Exit, error), log *slog.Logger) {
	retry := backoff.Backoff{Base: resubscribeBase, Max: resubscribeMax}
	for {
		opened := time.Now()
		if !f.forward(ctx, ch) {
			return
		}
		if time.Since(opened) >= resubscribeHealthy {
			retry.Reset()
		}
		broke := time.Now()
		log.Warn("task exit stream ended (containerd restarting?); subscribing again")
		for {
			t := time.NewTimer(retry.Next())
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			f.attempts.Add(1)
			var err error
			if ch, err = subscribe(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			log.Debug("subscribe to task exits failed; retrying", "err", err)
		}
		log.Info("task exit stream back; reconciling with containerd", "after", time.Since(broke).Round(time.Millisecond))
		select {
		case f.resubscribed <- struct{}{}:
		default: // one pending reconcile covers this one too
		}
	}
}

// forward passes exits on until ch closes (true) or ctx ends (false).
func (f *ExitFeed) forward(ctx context.Context, ch <-chan Exit) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case ex, ok := <-ch:
			if !ok {
				return ctx.Err() == nil
			}
			select {
			case f.exits <- ex:
			case <-ctx.Done():
				return false
			}
		}
	}
}
