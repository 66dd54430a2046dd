package runtime

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testNetNSDirPrefix names the tests' own netns directories, kept apart
// from /run/netns, which the system and other tests use.
const testNetNSDirPrefix = "/run/berth-test-netns-"

// testNetNSDir returns a fresh netns directory under /run, removing the
// ones of earlier runs whose process is gone, and unmounts and removes it
// when the test ends.
func testNetNSDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("netns tests need root (mounts, network namespaces)")
	}
	stale, _ := filepath.Glob(testNetNSDirPrefix + "*")
	for _, d := range stale {
		pid, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(d, testNetNSDirPrefix), "-", 2)[0])
		if pid != os.Getpid() && (pid <= 0 || syscall.Kill(pid, 0) != nil) {
			if err := removeMountsUnder(d); err != nil {
				t.Logf("stale %s: %v", d, err)
			}
		}
	}
	dir := fmt.Sprintf("%s%d-%06x", testNetNSDirPrefix, os.Getpid(), rand.Uint32()&0xffffff)
	t.Cleanup(func() {
		if err := removeMountsUnder(dir); err != nil {
			t.Errorf("cleanup %s: %v", dir, err)
		}
	})
	return dir
}

// removeMountsUnder unmounts everything at and below dir (stacked mounts
// too), then removes it.
func removeMountsUnder(dir string) error {
	for range 20 {
		mi, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		var under []string
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
				under = append(under, f[4])
			}
		}
		if len(under) == 0 {
			return os.RemoveAll(dir)
		}
		for i := len(under) - 1; i >= 0; i-- { // innermost first
			_ = unix.Unmount(under[i], unix.MNT_DETACH)
		}
	}
	return fmt.Errorf("mounts under %s do not go away", dir)
}

// simulateIPNetnsAdd does what another tool does when it adds a network
// namespace of its own to dir: make dir a shared mount point, binding it
// over itself when it is not one yet, then mount its namespace there; and
// then delete that namespace. The bind is `mount --bind` (not recursive):
// iproute2 6.1 binds recursively, which carries earlier mounts over, but a
// plain bind, or one made from another mount namespace, hides them.
func simulateIPNetnsAdd(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		if !errors.Is(err, unix.EINVAL) {
			t.Fatalf("tool: make-shared %s: %v", dir, err)
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND, ""); err != nil {
			t.Fatalf("tool: bind %s over itself: %v", dir, err)
		}
		if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			t.Fatalf("tool: make-shared %s: %v", dir, err)
		}
	}
	tool := filepath.Join(dir, fmt.Sprintf("tool-%d", rand.Uint32()))
	if err := createNetNS(tool); err != nil {
		t.Fatalf("tool: add netns: %v", err)
	}
	if err := removeNetNS(tool); err != nil {
		t.Fatalf("tool: delete netns: %v", err)
	}
}

// Once the runtime has set up its netns directory, another tool adding
// and deleting a namespace there leaves Berth's namespace usable: its bind
// mount is still at its path and still a network namespace.
func TestNetNSDirKeepsMountsWhenAToolAddsANamespace(t *testing.T) {
	dir := testNetNSDir(t)
	if err := ensureNetNSDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := ensureNetNSDir(dir); err != nil { // idempotent: a second runtime, an agent restart
		t.Fatalf("second ensureNetNSDir: %v", err)
	}
	berth := filepath.Join(dir, "berth-test-a")
	if err := createNetNS(berth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeNetNS(berth) })
	if ok, err := isNetNS(berth); err != nil || !ok {
		t.Fatalf("isNetNS(%s) = %v, %v before the tool ran", berth, ok, err)
	}

	simulateIPNetnsAdd(t, dir)

	ok, err := isNetNS(berth)
	if err != nil || !ok {
		var st unix.Statfs_t
		_ = unix.Statfs(berth, &st)
		t.Fatalf("after another tool added a namespace: %s is not a network namespace (fs magic %x, err %v)", berth, st.Type, err)
	}
	// Usable: it can be entered.
	f, err := os.Open(berth)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if typ, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err != nil || typ != unix.CLONE_NEWNET {
		t.Fatalf("%s: namespace type %#x, %v; want a network namespace", berth, typ, err)
	}
	// Only one mount over the directory: the tool found it shared.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	n := 0
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d mounts over %s, want 1", n, dir)
	}
}

func TestIsNetNS(t *testing.T) {
	dir := testNetNSDir(t)
	if err := ensureNetNSDir(dir); err != nil {
		t.Fatal(err)
	}
	ns, plain := filepath.Join(dir, "ns"), filepath.Join(dir, "plain")
	if err := createNetNS(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeNetNS(ns) })
	if err := os.WriteFile(plain, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{ns: true, plain: false, filepath.Join(dir, "missing"): false} {
		if got, err := isNetNS(path); err != nil || got != want {
			t.Errorf("isNetNS(%s) = %v, %v; want %v", path, got, err, want)
		}
	}
}

// A netns path that is a plain file (its mount gone: a crash between
// creating the file and mounting, or a mount hidden by another) is treated
// as gone: Stop runs CNI DEL without it, releases the address and removes
// the file, instead of failing with "unknown FS magic" for ever.
func TestStopTreatsANetNSThatIsNotANamespaceAsGone(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t)
	cfg := tr.config()
	cfg.NetNSDir = testNetNSDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })

	id := "hidden-ns"
	if err := os.MkdirAll(rt.containerDir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	att := &attachment{ContainerID: id, Network: rt.cfg.NetworkName, NetNS: rt.netnsPath(id)}
	if err := createNetNS(att.NetNS); err != nil {
		t.Fatal(err)
	}
	if err := rt.saveAttachment(id, att); err != nil {
		t.Fatal(err)
	}
	ip, err := rt.setupNetwork(ctx, att)
	if err != nil {
		t.Fatal(err)
	}
	// The mount goes; the plain file stays at the path.
	if err := unix.Unmount(att.NetNS, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if ok, _ := isNetNS(att.NetNS); ok {
		t.Fatal("still a namespace after unmounting")
	}
	for i := range 2 { // a second Stop (the agent's next try) is a no-op
		if err := rt.Stop(ctx, id, 0); err != nil {
			t.Fatalf("Stop #%d with a netns path that is a plain file: %v", i+1, err)
		}
	}
	assertGone(t, ctx, rt, Container{InstanceID: id, IP: ip.String()})
	if cleaned, err := rt.RemoveLeftovers(ctx); err != nil || len(cleaned) != 0 {
		t.Errorf("RemoveLeftovers after Stop = %v, %v", cleaned, err)
	}
}
