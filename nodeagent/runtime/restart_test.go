package runtime

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// privateContainerd is a containerd of the test's own, with its root,
// state and sockets in a temporary directory, so that the test may kill
// and restart it without touching the system daemon other tests use.
type privateContainerd struct {
	t      *testing.T
	dir    string
	config string
	socket string
	cmd    *exec.Cmd
	exited chan struct{}
}

func startPrivateContainerd(t *testing.T) *privateContainerd {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatalf("containerd binary: %v", err)
	}
	// Not t.TempDir: its long name would push the shim's socket path past
	// the 108 bytes of a unix address.
	dir, err := os.MkdirTemp("", "berth-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &privateContainerd{t: t, dir: dir, config: filepath.Join(dir, "config.toml"), socket: filepath.Join(dir, "c.sock")}
	conf := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = %[5]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[6]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, c.socket+".ttrpc", filepath.Join(dir, "debug.sock"), filepath.Join(dir, "opt"))
	if err := os.WriteFile(c.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.cleanup)
	c.start()
	return c
}

func (c *privateContainerd) start() {
	c.t.Helper()
	log, err := os.OpenFile(filepath.Join(c.dir, "containerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer log.Close()
	c.cmd = exec.Command("containerd", "--config", c.config)
	c.cmd.Stdout, c.cmd.Stderr = log, log
	// Its own process group: nothing the test's terminal sends reaches it.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(c.cmd, c.exited)
	waitUntil(c.t, 20*time.Second, "private containerd answers", c.answers)
}

// answers tells whether containerd answers on its socket (a client of
// its own, not the one under test).
func (c *privateContainerd) answers() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	cl, err := containerd.New(c.socket, containerd.WithTimeout(time.Second))
	if err != nil {
		return false
	}
	defer cl.Close()
	_, err = cl.Version(ctx)
	return err == nil
}

// kill kills containerd with SIGKILL (shims and tasks live on).
func (c *privateContainerd) kill() {
	c.t.Helper()
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.t.Fatal("containerd did not die on SIGKILL")
	}
	c.cmd = nil
}

// cleanup stops containerd, kills the shims it started, unmounts what is
// left under its directory and removes it.
func (c *privateContainerd) cleanup() {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(c.socket)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var under []string
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], c.dir+"/") {
				under = append(under, f[4])
			}
		}
		for i := len(under) - 1; i >= 0; i-- { // innermost first
			_ = unix.Unmount(under[i], unix.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		c.t.Logf("remove %s: %v", c.dir, err)
	}
}

// After containerd is killed and restarted, the exit feed subscribes
// again within about a second of its return, without spinning while it is
// away, and a container's exit after that reaches the feed at once (not at
// the agent's 5 s resync).
func TestExitsSurviveContainerdRestart(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t) // names, subnet, bridge and state dir; its cleanup removes the bridge
	ctrd := startPrivateContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cfg := tr.config()
	cfg.Socket = ctrd.socket
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

	ctrd.kill()
	down := time.Now()
	time.Sleep(3 * time.Second) // the outage itself
	if n := feed.Attempts(); n > 10 {
		t.Errorf("%d subscribe attempts while containerd was down for %s, want at most 10", n, time.Since(down).Round(time.Millisecond))
	}
	ctrd.start()
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
