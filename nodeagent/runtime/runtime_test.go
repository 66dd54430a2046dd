package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"

	"github.com/berth-dev/berth/internal/imagebuild"
	"github.com/berth-dev/berth/nodeagent/logs"
)

// testRoot keeps each test run's state outside t.TempDir, so that a later
// run can find and clean up what a crashed run left behind.
const testRoot = "/var/lib/berth-test/runtime"

const helloRef = "berth.local/hello:v1"

// testRun is what a later run needs to clean up after this one.
type testRun struct {
	Pid         int    `json:"pid"`
	Namespace   string `json:"namespace"`
	NetworkName string `json:"networkName"`
	BridgeName  string `json:"bridgeName"`
	Subnet      string `json:"subnet"`
	StateDir    string `json:"stateDir"`
}

func (tr testRun) config() Config {
	cfg := DefaultConfig()
	cfg.Namespace = tr.Namespace
	cfg.NetworkName = tr.NetworkName
	cfg.BridgeName = tr.BridgeName
	cfg.Subnet = tr.Subnet
	cfg.StateDir = tr.StateDir
	cfg.DNSServers = []string{"10.213.254.53"}
	cfg.SearchDomains = []string{"default.svc.berth.internal", "svc.berth.internal", "berth.internal"}
	if os.Getenv("BERTH_TEST_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

// requireContainerd fails the test when it cannot run: without root or
// containerd these tests would prove nothing, and a skip would go unseen.
// It never skips; make unit leaves this package out instead.
func requireContainerd(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("runtime tests need root (network namespaces, CNI, containerd); make test installs and starts what they need")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := connect(ctx, withDefaults(Config{})); err != nil {
		t.Fatalf("containerd is unreachable (make test installs and starts it): %v", err)
	}
}

// newTestRun picks a unique namespace, bridge and a free subnet inside
// 10.213.0.0/16, cleans up stale runs first and registers cleanup.
func newTestRun(t *testing.T) testRun {
	t.Helper()
	cleanupStaleRuns(t)
	tag := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	tr := testRun{
		Pid:         os.Getpid(),
		Namespace:   "berth-test-" + tag,
		NetworkName: "berth-test-" + tag,
		BridgeName:  "brt" + tag,
		Subnet:      freeSubnet(t).String(),
		StateDir:    filepath.Join(testRoot, tag),
	}
	if err := os.MkdirAll(tr.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(tr)
	if err := os.WriteFile(filepath.Join(tr.StateDir, "run.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cleanupRun(tr); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return tr
}

// freeSubnet returns a /24 in 10.213.160.0/19 (kept apart from the
// integration tests' 10.213.224.0/19 and the benchmarks' 10.213.128.0/19) that no local
// interface uses.
func freeSubnet(t *testing.T) netip.Prefix {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, byte(160 + rand.IntN(32)), 0}), 24)
		used := false
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && p.Contains(ip.Unmap()) {
					used = true
				}
			}
		}
		if !used {
			return p
		}
	}
	t.Fatal("no free test subnet in 10.213.160.0/19")
	return netip.Prefix{}
}

// cleanupStaleRuns removes what runs whose process is gone left behind.
func cleanupStaleRuns(t *testing.T) {
	entries, _ := os.ReadDir(testRoot)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(testRoot, e.Name(), "run.json"))
		if err != nil {
			continue
		}
		var tr testRun
		if json.Unmarshal(b, &tr) != nil {
			continue
		}
		if tr.Pid != os.Getpid() && syscall.Kill(tr.Pid, 0) == nil {
			continue // still running
		}
		t.Logf("cleaning up stale test run %s", tr.Namespace)
		if err := cleanupRun(tr); err != nil {
			t.Logf("stale run %s: %v", tr.Namespace, err)
		}
	}
}

// cleanupRun stops every container of the run, deletes its images and
// containerd namespace, the bridge and the state directory.
func cleanupRun(tr testRun) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs []error
	rt, err := New(ctx, tr.config())
	if err != nil {
		return err
	}
	defer rt.Close()
	ctrs, err := rt.List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, c := range ctrs {
		if err := rt.Stop(ctx, c.InstanceID, 0); err != nil {
			errs = append(errs, err)
		}
	}
	// Netns or attachments without a container (crash in between).
	dirs, _ := os.ReadDir(rt.containersDir())
	for _, d := range dirs {
		if err := rt.Stop(ctx, d.Name(), 0); err != nil {
			errs = append(errs, err)
		}
	}
	is := rt.client.ImageService()
	imgs, _ := is.List(ctx)
	for _, img := range imgs {
		if err := is.Delete(ctx, img.Name, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := rt.client.NamespaceService().Delete(ctx, tr.Namespace)
		if err == nil || errdefs.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", tr.Namespace, err))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := net.InterfaceByName(tr.BridgeName); err == nil {
		if out, err := exec.Command("ip", "link", "delete", tr.BridgeName).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", tr.BridgeName, err, out))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.RemoveAll(tr.StateDir))
	}
	return errors.Join(errs...)
}

// buildHelloImage builds the example app and wraps it into an image tarball
// with the same code as cmd/mkimage.
func buildHelloImage(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v1", "-o", bin,
		"github.com/berth-dev/berth/examples/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	var buf bytes.Buffer
	if err := imagebuild.BuildTarball(&buf, helloRef, imagebuild.Options{Binary: bin}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type helloInfo struct {
	Service, Version, Instance, Hostname string
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func get(url string) (int, []byte, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// waitHTTP polls url until it answers 200 or the deadline passes.
func waitHTTP(t *testing.T, url string, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		code, body, err := get(url)
		if err == nil && code == http.StatusOK {
			return body
		}
		lastErr = fmt.Errorf("status %d err %v", code, err)
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("GET %s: not 200 after %s: %v", url, timeout, lastErr)
	return nil
}

func helloSpec(id string) ContainerSpec {
	return ContainerSpec{
		InstanceID: id,
		Namespace:  "default",
		Service:    "hello",
		Revision:   1,
		Image:      helloRef,
		Env:        map[string]string{"GREETING": "hi"},
		MilliCPU:   500,
		// Go needs a little room; 64 MiB is plenty for hello.
		MemoryBytes: 64 << 20,
	}
}

func TestRuntime(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	rt, err := New(ctx, tr.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	subnet := rt.Subnet()
	if want := subnet.Addr().Next(); rt.GatewayIP() != want {
		t.Fatalf("GatewayIP = %s, want %s", rt.GatewayIP(), want)
	}
	exitCtx, stopExits := context.WithCancel(ctx)
	defer stopExits()
	exits, err := rt.Exits(exitCtx)
	if err != nil {
		t.Fatal(err)
	}

	// Import.
	tarball := buildHelloImage(t)
	start := time.Now()
	names, err := rt.ImportImage(ctx, bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("import+unpack of a %.1f MB image: %s", float64(len(tarball))/1e6, time.Since(start).Round(time.Millisecond))
	if !slices.Contains(names, helloRef) {
		t.Fatalf("ImportImage names = %v, want %s", names, helloRef)
	}
	if ok, err := rt.HasImage(ctx, helloRef); err != nil || !ok {
		t.Fatalf("HasImage(%s) = %v, %v", helloRef, ok, err)
	}
	if ok, err := rt.HasImage(ctx, "berth.local/nothing:v1"); err != nil || ok {
		t.Fatalf("HasImage(missing) = %v, %v", ok, err)
	}

	// Start two containers.
	specA, specB := helloSpec("hello-a"), helloSpec("hello-b")
	specB.SearchDomains = []string{"prod.svc.berth.internal", "svc.berth.internal", "berth.internal"}
	hostPort := freeTCPPort(t)
	specB.PortMappings = []PortMapping{{HostPort: int32(hostPort), ContainerPort: 8080}}
	a, err := rt.Start(ctx, specA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.Start(ctx, specB)
	if err != nil {
		t.Fatal(err)
	}
	// A container's output (its secrets too) is root's alone.
	logFile := filepath.Join(rt.cfg.StateDir, "logs", "hello-a", "run-000001.log")
	for path, mode := range map[string]os.FileMode{logFile: 0o600, filepath.Join(rt.cfg.StateDir, "logs"): 0o700 | os.ModeDir, rt.containersDir(): 0o700 | os.ModeDir, rt.containerDir("hello-a"): 0o700 | os.ModeDir} {
		if st, err := os.Stat(path); err != nil {
			t.Error(err)
		} else if st.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), mode)
		}
	}
	// Its output goes to the logs store, line by line, stream by stream.
	waitUntil(t, 5*time.Second, "hello-a's startup line in its logs", func() bool {
		found := false
		rt.Logs().Read(ctx, "hello-a", logs.ReadOptions{}, func(l logs.Line) error {
			found = found || (l.Stream == "stderr" && strings.Contains(string(l.Text), "listening on :8080"))
			return nil
		})
		return found
	})
	// Exec: output, exit codes, stdin to its end, a terminal.
	var out, errOut bytes.Buffer
	if code, err := rt.Exec(ctx, "hello-a", ExecOptions{Command: []string{"/hello", "echo", "hi", "there"}, Stdout: &out, Stderr: &errOut}); err != nil || code != 0 || out.String() != "hi there\n" {
		t.Fatalf("exec echo: code %d, err %v, out %q", code, err, out.String())
	}
	if code, err := rt.Exec(ctx, "hello-a", ExecOptions{Command: []string{"/hello", "exit", "3"}}); err != nil || code != 3 {
		t.Fatalf("exec exit 3: code %d, err %v", code, err)
	}
	out.Reset()
	input := strings.Repeat("stdin goes through whole\n", 4000) // 100 KB: more than a pipe holds
	if code, err := rt.Exec(ctx, "hello-a", ExecOptions{Command: []string{"/hello", "cat"}, Stdin: strings.NewReader(input), Stdout: &out}); err != nil || code != 0 || out.String() != input {
		t.Fatalf("exec cat: code %d, err %v, %d bytes back of %d", code, err, out.Len(), len(input))
	}
	out.Reset()
	if code, err := rt.Exec(ctx, "hello-a", ExecOptions{Command: []string{"/hello", "tty"}, TTY: true, Size: TerminalSize{Width: 100, Height: 30}, Stdout: &out}); err != nil || code != 0 || !strings.Contains(out.String(), "tty") || strings.Contains(out.String(), "notty") {
		t.Fatalf("exec with a terminal: code %d, err %v, out %q", code, err, out.String())
	}
	if _, err := rt.Exec(ctx, "hello-a", ExecOptions{Command: []string{"/nonexistent"}}); err == nil {
		t.Fatal("exec of a missing binary succeeded")
	}
	if _, err := rt.Exec(ctx, "no-such", ExecOptions{Command: []string{"/hello"}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exec in a missing container: %v", err)
	}
	ipA, ipB := netip.MustParseAddr(a.IP), netip.MustParseAddr(b.IP)
	if ipA == ipB || !subnet.Contains(ipA) || !subnet.Contains(ipB) || ipA == rt.GatewayIP() || ipB == rt.GatewayIP() {
		t.Fatalf("IPs %s and %s: want distinct host addresses in %s", ipA, ipB, subnet)
	}
	t.Logf("hello-a %s, hello-b %s", ipA, ipB)

	for _, c := range []Container{a, b} {
		body := waitHTTP(t, "http://"+c.IP+":8080/", 10*time.Second)
		var info helloInfo
		if err := json.Unmarshal(body, &info); err != nil {
			t.Fatalf("GET /: %v: %s", err, body)
		}
		if info.Instance != c.InstanceID || info.Hostname != c.InstanceID || info.Service != "hello" || info.Version != "v1" {
			t.Errorf("GET / on %s = %+v", c.InstanceID, info)
		}
	}

	// resolv.conf inside the containers.
	for _, tc := range []struct {
		c      Container
		search string
	}{
		{a, "search default.svc.berth.internal svc.berth.internal berth.internal"},
		{b, "search prod.svc.berth.internal svc.berth.internal berth.internal"},
	} {
		_, body, err := get("http://" + tc.c.IP + ":8080/resolv")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"nameserver 10.213.254.53\n", tc.search + "\n", "options ndots:5 timeout:1 attempts:2\n"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s /etc/resolv.conf = %q, want it to contain %q", tc.c.InstanceID, body, want)
			}
		}
	}

	// The host port of hello-b, through portmap, on the bridge address.
	body := waitHTTP(t, fmt.Sprintf("http://%s:%d/", rt.GatewayIP(), hostPort), 5*time.Second)
	if !strings.Contains(string(body), `"instance":"hello-b"`) {
		t.Errorf("GET via host port = %s, want hello-b", body)
	}

	// Kill hello-a from outside; the exit is reported.
	cl, err := containerd.New(tr.config().Socket, containerd.WithDefaultNamespace(tr.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctrA, err := cl.LoadContainer(ctx, "hello-a")
	if err != nil {
		t.Fatal(err)
	}
	taskA, err := ctrA.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := taskA.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case ex := <-exits:
		if ex.InstanceID != "hello-a" || ex.Code != 137 || ex.At.IsZero() {
			t.Errorf("exit = %+v, want hello-a with code 137", ex)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit event for hello-a within 10s")
	}
	list, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].InstanceID != "hello-a" || list[0].Running || list[0].ExitCode != 137 || !list[1].Running {
		t.Fatalf("List after kill = %+v", list)
	}

	// Restart keeps the IP and serves again.
	ra, err := rt.Restart(ctx, "hello-a")
	if err != nil {
		t.Fatal(err)
	}
	if ra.IP != a.IP || !ra.Running {
		t.Fatalf("Restart = %+v, want running with IP %s", ra, a.IP)
	}
	waitHTTP(t, "http://"+a.IP+":8080/healthz", 10*time.Second)

	// Adoption: a fresh Runtime sees both containers with their IPs.
	rt.Close()
	rt, err = New(ctx, tr.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	list, err = rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("List after re-New = %+v", list)
	}
	for i, want := range []Container{a, b} {
		got := list[i]
		if got.InstanceID != want.InstanceID || got.IP != want.IP || !got.Running || got.Pid == 0 ||
			got.Labels[LabelService] != "hello" || got.Labels[LabelNamespace] != "default" || got.Labels[LabelRevision] != "1" {
			t.Errorf("adopted %+v, want %s at %s running", got, want.InstanceID, want.IP)
		}
	}

	// Stop removes everything.
	for _, c := range []Container{a, b} {
		start := time.Now()
		if err := rt.Stop(ctx, c.InstanceID, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("stop %s (SIGTERM, graceful exit, teardown): %s", c.InstanceID, time.Since(start).Round(time.Millisecond))
		assertGone(t, ctx, rt, c)
		if err := rt.Stop(ctx, c.InstanceID, time.Second); err != nil {
			t.Errorf("second Stop(%s) = %v, want nil", c.InstanceID, err)
		}
	}
	if _, err := rt.Restart(ctx, "hello-a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Restart(removed) = %v, want ErrNotFound", err)
	}
	if list, err := rt.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List after Stop = %+v, %v", list, err)
	}
}

// assertGone checks that nothing of c is left: container, snapshot, IP
// allocation, netns, state files and iptables rules.
func assertGone(t *testing.T, ctx context.Context, rt *Runtime, c Container) {
	t.Helper()
	if _, err := rt.client.LoadContainer(ctx, c.InstanceID); !errdefs.IsNotFound(err) {
		t.Errorf("%s: container still there (err %v)", c.InstanceID, err)
	}
	if _, err := rt.client.SnapshotService(rt.cfg.Snapshotter).Stat(ctx, c.InstanceID); !errdefs.IsNotFound(err) {
		t.Errorf("%s: snapshot still there (err %v)", c.InstanceID, err)
	}
	if _, err := os.Stat(filepath.Join(rt.ipamDir(), rt.cfg.NetworkName, c.IP)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: host-local allocation %s still there (err %v)", c.InstanceID, c.IP, err)
	}
	if _, err := os.Stat(rt.netnsPath(c.InstanceID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: netns still there (err %v)", c.InstanceID, err)
	}
	if _, err := os.Stat(rt.containerDir(c.InstanceID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: state dir still there (err %v)", c.InstanceID, err)
	}
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Logf("iptables-save: %v", err)
		return
	}
	needle := fmt.Sprintf("id: \"%s\"", c.InstanceID)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, needle) && strings.Contains(line, rt.cfg.NetworkName) {
			t.Errorf("%s: iptables rule left: %s", c.InstanceID, line)
		}
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestStartLatency measures create+start to the first HTTP 200, the median
// of five containers.
func TestStartLatency(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rt, err := New(ctx, tr.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	if _, err := rt.ImportImage(ctx, bytes.NewReader(buildHelloImage(t))); err != nil {
		t.Fatal(err)
	}
	var toReady, toStarted, stops []time.Duration
	for i := range 5 {
		id := "lat-" + strconv.Itoa(i)
		start := time.Now()
		c, err := rt.Start(ctx, helloSpec(id))
		if err != nil {
			t.Fatal(err)
		}
		toStarted = append(toStarted, time.Since(start))
		waitHTTP(t, "http://"+c.IP+":8080/healthz", 10*time.Second)
		toReady = append(toReady, time.Since(start))
		start = time.Now()
		if err := rt.Stop(ctx, id, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		stops = append(stops, time.Since(start))
		assertGone(t, ctx, rt, c)
	}
	t.Logf("Start returned after: median %s %v", median(toStarted), toStarted)
	t.Logf("create+start to first HTTP 200: median %s %v", median(toReady), toReady)
	t.Logf("Stop (SIGTERM, graceful exit, teardown): median %s %v", median(stops), stops)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	for i := range s {
		s[i] = s[i].Round(100 * time.Microsecond)
	}
	return s[len(s)/2]
}

// TestStartFailureCleansUp starts with a missing image and with a failing
// task, and checks nothing is left.
func TestStartFailureCleansUp(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt, err := New(ctx, tr.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })

	if _, err := rt.Start(ctx, helloSpec("no-image")); err == nil || !strings.Contains(err.Error(), "not present") {
		t.Fatalf("Start with missing image = %v, want a 'not present' error", err)
	}
	if _, err := rt.ImportImage(ctx, bytes.NewReader(buildHelloImage(t))); err != nil {
		t.Fatal(err)
	}
	bad := helloSpec("bad-cmd")
	bad.Command = []string{"/does-not-exist"}
	if _, err := rt.Start(ctx, bad); err == nil {
		t.Fatal("Start with a missing binary succeeded")
	}
	if _, err := rt.client.LoadContainer(ctx, "bad-cmd"); !errdefs.IsNotFound(err) {
		t.Errorf("container left after failed start (err %v)", err)
	}
	if _, err := os.Stat(rt.netnsPath("bad-cmd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns left after failed start (err %v)", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(rt.ipamDir(), rt.cfg.NetworkName)); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		// host-local keeps last_reserved_ip.0 and a lock file; no IP file may stay.
		for _, n := range names {
			if _, err := netip.ParseAddr(n); err == nil {
				t.Errorf("IP allocation %s left after failed start", n)
			}
		}
	}

	// A stale container with the same id is replaced.
	c1, err := rt.Start(ctx, helloSpec("again"))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := rt.Start(ctx, helloSpec("again"))
	if err != nil {
		t.Fatalf("Start over a stale container: %v", err)
	}
	waitHTTP(t, "http://"+c2.IP+":8080/", 10*time.Second)
	if c1.IP != c2.IP {
		if _, err := os.Stat(filepath.Join(rt.ipamDir(), rt.cfg.NetworkName, c1.IP)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale allocation %s not released", c1.IP)
		}
	}
	if err := rt.Stop(ctx, "again", time.Second); err != nil {
		t.Fatal(err)
	}

	// Pull: a bad reference and an unreachable registry fail fast.
	if err := rt.PullImage(ctx, "Not A Reference"); err == nil {
		t.Error("PullImage(bad ref) succeeded")
	}
	start := time.Now()
	if err := rt.PullImage(ctx, "127.0.0.1:1/nothing:v1"); err == nil {
		t.Error("PullImage(unreachable) succeeded")
	} else {
		t.Logf("PullImage(unreachable) failed in %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
}

// TestNewErrors checks the messages when containerd or the CNI plugins are
// missing.
func TestNewErrors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Socket = filepath.Join(t.TempDir(), "nothing.sock")
	cfg.StateDir = t.TempDir()
	if pluginsInstalled(t, cfg) {
		_, err := New(context.Background(), cfg)
		if !errors.Is(err, ErrContainerdUnavailable) || !strings.Contains(err.Error(), "apt-get install containerd") {
			t.Errorf("New(no socket) = %v, want ErrContainerdUnavailable with an install hint", err)
		}
	}
	cfg.CNIPluginDirs = []string{t.TempDir()}
	_, err := New(context.Background(), cfg)
	if !errors.Is(err, ErrCNIPluginsMissing) || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("New(no plugins) = %v, want ErrCNIPluginsMissing naming bridge", err)
	}
}

// pluginsInstalled reports whether the CNI plugins are installed (New
// checks them before it dials containerd).
func pluginsInstalled(t *testing.T, cfg Config) bool {
	t.Helper()
	if err := checkPlugins(cfg.CNIPluginDirs); err != nil {
		t.Logf("CNI plugins not installed, not checking the containerd error: %v", err)
		return false
	}
	return true
}

func TestResolvConfAndArgs(t *testing.T) {
	got := string(resolvConf([]string{"10.213.0.1"}, []string{"a.svc", "svc"}, []string{"ndots:5"}))
	want := "nameserver 10.213.0.1\nsearch a.svc svc\noptions ndots:5\n"
	if got != want {
		t.Errorf("resolvConf = %q, want %q", got, want)
	}
	ep, cmd := []string{"/hello"}, []string{"serve"}
	for _, tc := range []struct {
		spec ContainerSpec
		want []string
	}{
		{ContainerSpec{}, []string{"/hello", "serve"}},
		{ContainerSpec{Args: []string{"x"}}, []string{"/hello", "x"}},
		{ContainerSpec{Command: []string{"/bin/sh"}}, []string{"/bin/sh"}},
		{ContainerSpec{Command: []string{"/bin/sh"}, Args: []string{"-c", "true"}}, []string{"/bin/sh", "-c", "true"}},
	} {
		if got := processArgs(tc.spec, ep, cmd); !slices.Equal(got, tc.want) {
			t.Errorf("processArgs(%+v) = %v, want %v", tc.spec, got, tc.want)
		}
	}
	env := envList(ContainerSpec{InstanceID: "i", Service: "s", Namespace: "n", Env: map[string]string{"B": "2", "A": "1", "BERTH_SERVICE": "spoof"}})
	if want := []string{"A=1", "B=2", "BERTH_INSTANCE=i", "BERTH_SERVICE=s", "BERTH_NAMESPACE=n"}; !slices.Equal(env, want) {
		t.Errorf("envList = %v, want %v", env, want)
	}
}

// TestCrashLeftovers simulates an agent that crashed at different points of
// Start and checks that Stop, from a fresh Runtime, removes what was left.
func TestCrashLeftovers(t *testing.T) {
	requireContainerd(t)
	tr := newTestRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt, err := New(ctx, tr.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	if _, err := rt.ImportImage(ctx, bytes.NewReader(buildHelloImage(t))); err != nil {
		t.Fatal(err)
	}

	// Crash after CNI ADD, before the container was created: a netns with an
	// attachment (and a host port) but no container.
	id := "orphan-net"
	if err := os.MkdirAll(rt.containerDir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	att := &attachment{ContainerID: id, Network: rt.cfg.NetworkName, NetNS: rt.netnsPath(id),
		PortMappings: []PortMapping{{HostPort: int32(freeTCPPort(t)), ContainerPort: 8080}}}
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
	orphan := Container{InstanceID: id, IP: ip.String()}
	hostPort := "--dport " + strconv.Itoa(int(att.PortMappings[0].HostPort))
	if out, _ := exec.Command("iptables-save", "-t", "nat").Output(); !strings.Contains(string(out), hostPort) {
		t.Fatalf("no portmap rule for %s after CNI ADD", hostPort)
	}

	// Crash with the container running: just forget the Runtime.
	running, err := rt.Start(ctx, helloSpec("orphan-ctr"))
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()

	rt, err = New(ctx, tr.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	for _, c := range []Container{orphan, running} {
		if err := rt.Stop(ctx, c.InstanceID, time.Second); err != nil {
			t.Fatalf("Stop(%s): %v", c.InstanceID, err)
		}
		assertGone(t, ctx, rt, c)
	}
	if out, _ := exec.Command("iptables-save", "-t", "nat").Output(); strings.Contains(string(out), hostPort) {
		t.Errorf("portmap rule for %s left after Stop:\n%s", hostPort, out)
	}
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
