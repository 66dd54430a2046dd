package runtime

import (
	"bytes"
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/testctrd"
)

// After containerd is killed and restarted, the exit feed subscribes
// again within about a second of its return, without spinning while it is
// away, and a container's exit after that reaches the feed at once (not at
// the agent's 5 s resync).
func TestExitsSurviveContainerdRestart(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t) // names, subnet, bridge and state dir; its cleanup removes the bridge
	ctrd := testctrd.Start(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cfg := tr.config()
	cfg.Socket = ctrd.Socket
	rec := &logRecorder{}
	cfg.Logger = slog.New(rec)
	rt, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Before the private containerd goes (cleanups run last first).
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		if cs, err := rt.List(sctx); err == nil {
			for _, c := range cs {
				if err := rt.Stop(sctx, c.InstanceID, 0); err != nil {
					t.Errorf("stop %s: %v", c.InstanceID, err)
				}
			}
		}
		rt.Close()
	})
	if _, err := rt.ImportImage(ctx, bytes.NewReader(buildHelloImage(t))); err != nil {
		t.Fatal(err)
	}
	c, err := rt.Start(ctx, helloSpec("restart-a"))
	if err != nil {
		t.Fatal(err)
	}
	feedCtx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feed, err := FollowExits(feedCtx, rt.Exits, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}

	ctrd.Kill()
	down := time.Now()
	time.Sleep(3 * time.Second) // the outage itself
	if n := feed.Attempts(); n > 10 {
		t.Errorf("%d subscribe attempts while containerd was down for %s, want at most 10", n, time.Since(down).Round(time.Millisecond))
	}
	ctrd.Start()
	back := time.Now()
	select {
	case <-feed.Resubscribed():
		t.Logf("subscribed again %s after containerd answered; %d attempts", time.Since(back).Round(time.Millisecond), feed.Attempts())
	case <-time.After(3 * time.Second):
		t.Fatalf("not subscribed again 3s after containerd answered (%d attempts)", feed.Attempts())
	}
	if d := time.Since(back); d > 1500*time.Millisecond {
		t.Errorf("subscribed again %s after containerd answered, want about a second", d)
	}

	// The container outlived containerd; now its process dies.
	ctr, err := rt.client.LoadContainer(ctx, c.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task after the restart: %v", err)
	}
	if err := syscall.Kill(int(task.Pid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case ex := <-feed.Exits():
		if ex.InstanceID != "restart-a" || ex.Code != 137 {
			t.Fatalf("exit %+v, want restart-a with 137", ex)
		}
		t.Logf("exit seen %s after the kill", time.Since(killed).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("the exit did not reach the feed within 2s of the kill")
	}
	if n := rec.count(); n != 1 {
		t.Errorf("%d warnings for one containerd restart, want 1: %q", n, rec.msgs)
	}
}
