package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The control plane's data disk full (#16's chaos table): one server (the
// single etcd member) keeps its data on a 512 MiB tmpfs the test mounts;
// the test fills it. Writes are refused at once with an error naming the
// disk (not a hang, not a crash: etcd exits when a WAL or database write
// fails, so Berth refuses writes while there is still room), reads go on,
// the server keeps running; when space returns, writes are accepted, and
// the data is intact: a restart from the same directory (etcd checks its
// WAL's CRCs and its database when it starts) serves everything written.
func TestDataDiskFull(t *testing.T) {
	mnt, err := os.MkdirTemp("", "berth-diskfull-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512m,mode=0700", "berth-diskfull", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v: %s", err, out)
	}
	// Registered first: runs after the server's cleanup stopped it.
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		os.Remove(mnt)
	})
	dataDir := filepath.Join(mnt, "server")
	start := func(name string) (*proc, string) {
		p := startProc(t, name, "server", "--data-dir", dataDir, "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
			"--dns-addr", "", "--metrics-addr", "", "--ui-addr", "", "--cluster-cidr", "10.213.176.0/20")
		api := p.waitLine(`api (\S+),`, 60*time.Second)[1]
		p.adminConfig(api)
		return p, api
	}
	server, api := start("server")
	dir := t.TempDir()
	svc := func(name string, replicas int) string {
		f := filepath.Join(dir, name+".yaml")
		writeFile(t, f, fmt.Sprintf("apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: %s}\nspec: {image: berth.local/hello:v1, replicas: %d}\n", name, replicas))
		return f
	}
	mustBerth(t, api, "apply", "-f", svc("before", 0))

	// Fill the disk, leaving 32 MiB (less than the 128 MiB writes need).
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	fill := filepath.Join(mnt, "fill")
	leave := uint64(32 << 20)
	if free := st.Bavail * uint64(st.Bsize); free > leave {
		if out, err := exec.Command("fallocate", "-l", fmt.Sprint(free-leave), fill).CombinedOutput(); err != nil {
			t.Fatalf("fill the disk: %v: %s", err, out)
		}
	}
	time.Sleep(1100 * time.Millisecond) // the guard reads free space once a second
	began := time.Now()
	_, errOut, code := berth(t, api, "apply", "-f", svc("during", 0))
	took := time.Since(began)
	t.Logf("write on a full disk: exit %d after %s: %s", code, took.Round(time.Millisecond), strings.TrimSpace(errOut))
	if code == 0 || !strings.Contains(errOut, "data disk is full") || !strings.Contains(errOut, mnt) {
		t.Fatalf("a write on a full disk: exit %d: %s", code, errOut)
	}
	if took > 5*time.Second {
		t.Errorf("the refusal took %s (want at once, no retries)", took)
	}
	if out := mustBerth(t, api, "get", "services"); !strings.Contains(out, "before") || strings.Contains(out, "during") {
		t.Fatalf("reads on a full disk:\n%s", out)
	}
	// The server runs on (etcd's own writes have room) for a while.
	time.Sleep(3 * time.Second)
	if server.cmd.ProcessState != nil {
		t.Fatalf("the server exited on a full disk: %s", server.logText())
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a write accepted once space returned", func() (bool, string) {
		out, errOut, code := berth(t, api, "apply", "-f", svc("after", 0))
		return code == 0, out + errOut
	})

	// No corruption: the member starts again from its data (etcd checks
	// the WAL and the database at start) and serves all of it.
	if err := server.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Logf("stop: %v", err)
	}
	_, api = start("server-restarted")
	out := mustBerth(t, api, "get", "services")
	for _, name := range []string{"before", "after"} {
		if !strings.Contains(out, name) {
			t.Errorf("%s lost across the restart:\n%s", name, out)
		}
	}
	mustBerth(t, api, "apply", "-f", svc("restarted", 0))
}
