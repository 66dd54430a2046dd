// Package testctrd runs a containerd of a test's own: its root, state and
// sockets in one directory, so a test may kill and restart it (containerd
// restarts under load, issue #16) without touching the system daemon that
// other tests and sessions use. Tests only; it needs root and the
// containerd binary.
package testctrd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// Containerd is one private containerd process (restartable).
type Containerd struct {
	t      testing.TB
	Dir    string
	Socket string
	config string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs containerd in dir ("" makes a temporary one; keep the path
// short: shim sockets live under it and a unix address has 108 bytes). A
// fixed dir lets a later run take over what an aborted one left: a
// containerd still running there (its pid file) is killed first, and the
// new one finds the old shims and containers. Cleanup stops it, kills the
// shims it started, unmounts what is left in dir and removes it.
func Start(t testing.TB, dir string) *Containerd {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatalf("containerd binary: %v", err)
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "berth-ctrd-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := &Containerd{t: t, Dir: dir, config: filepath.Join(dir, "config.toml"), Socket: filepath.Join(dir, "c.sock")}
	c.killLeftover()
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
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Socket, c.Socket+".ttrpc", filepath.Join(dir, "debug.sock"), filepath.Join(dir, "opt"))
	if err := os.WriteFile(c.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.cleanup)
	c.Start()
	return c
}

func (c *Containerd) pidFile() string { return filepath.Join(c.Dir, "containerd.pid") }

// killLeftover kills the containerd an aborted run left in this dir, by
// the pid it recorded, if that process still runs this dir's config.
func (c *Containerd) killLeftover() {
	b, err := os.ReadFile(c.pidFile())
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(c.config)) {
		return
	}
	c.t.Logf("killing containerd %d left by an earlier run", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
	}
}

// Start starts containerd (again) and waits until it answers.
func (c *Containerd) Start() {
	c.t.Helper()
	log, err := os.OpenFile(filepath.Join(c.Dir, "containerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
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
	_ = os.WriteFile(c.pidFile(), []byte(strconv.Itoa(c.cmd.Process.Pid)), 0o600)
	c.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(c.cmd, c.exited)
	for deadline := time.Now().Add(20 * time.Second); !c.Answers(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			c.t.Fatalf("private containerd in %s does not answer (log: %s)", c.Dir, filepath.Join(c.Dir, "containerd.log"))
		}
	}
}

// Answers tells whether containerd answers on its socket (a client of its
// own, not the one under test).
func (c *Containerd) Answers() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	cl, err := containerd.New(c.Socket, containerd.WithTimeout(time.Second))
	if err != nil {
		return false
	}
	defer cl.Close()
	_, err = cl.Version(ctx)
	return err == nil
}

// Kill kills containerd with SIGKILL (shims and tasks live on).
func (c *Containerd) Kill() {
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

func (c *Containerd) cleanup() {
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
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(c.Socket)) {
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
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], c.Dir+"/") {
				under = append(under, f[4])
			}
		}
		for i := len(under) - 1; i >= 0; i-- { // innermost first
			_ = unix.Unmount(under[i], unix.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Logf("remove %s: %v", c.Dir, err)
	}
}
