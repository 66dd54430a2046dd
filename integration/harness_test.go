// Package integration holds Berth's end-to-end tests: the built berth
// binary in its separate roles (server, agent, gateway) and as `berth dev`,
// on the real containerd, runc and CNI plugins, with real DNS queries and
// real HTTP through the real gateway. Traffic goes only to loopback and to
// container addresses Berth assigned in network namespaces it created.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/imagebuild"
	"github.com/berth-dev/berth/nodeagent/runtime"
)

var (
	berthBin  string
	imagesDir string
	repoRoot  string
)

// TestMain builds the berth binary and the example images once.
func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	wd, _ := os.Getwd()
	repoRoot = filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "berth-e2e-bin-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	berthBin = filepath.Join(dir, "berth")
	imagesDir = filepath.Join(dir, "images")
	build := func(env []string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := build(nil, "build", "-o", berthBin, "./cmd/berth"); err != nil {
		return 0, err
	}
	for _, v := range []string{"v1", "v2"} {
		bin := filepath.Join(dir, "hello-"+v)
		if err := build([]string{"CGO_ENABLED=0"}, "build", "-ldflags", "-s -w -X main.version="+v, "-o", bin, "./examples/hello"); err != nil {
			return 0, err
		}
		if err := os.MkdirAll(imagesDir, 0o755); err != nil {
			return 0, err
		}
		f, err := os.Create(filepath.Join(imagesDir, "hello-"+v+".tar"))
		if err != nil {
			return 0, err
		}
		err = imagebuild.BuildTarball(f, "berth.local/hello:"+v, imagebuild.Options{Binary: bin, Entrypoint: "/hello", ExposedPorts: []string{"8080/tcp"}})
		f.Close()
		if err != nil {
			return 0, err
		}
	}
	return m.Run(), nil
}

// requireContainerd fails the test when its prerequisites are missing: an
// end-to-end test that skips would go unnoticed. It never skips; make unit
// leaves this package out instead.
func requireContainerd(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("end-to-end tests need root (network namespaces, CNI, containerd); make test installs and starts what they need")
	}
	cfg := runtime.DefaultConfig()
	cfg.StateDir = t.TempDir()
	rt, err := runtime.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("end-to-end prerequisite missing (make test installs and starts what is needed): %v", err)
	}
	rt.Close()
}

// cleanNode removes every container a previous (possibly crashed) run left
// in a containerd namespace, with the CNI state kept in stateDir, and with
// removeNet the node's bridge and masquerade rules too.
func cleanNode(t *testing.T, ns, bridge, subnet, cluster, stateDir string, removeNet bool) {
	t.Helper()
	cfg := runtime.DefaultConfig()
	cfg.Namespace, cfg.BridgeName, cfg.NetworkName, cfg.Subnet, cfg.StateDir = ns, bridge, bridge, subnet, stateDir
	// The same CNI configuration the agent used, so DEL undoes what ADD did.
	cfg.ClusterCIDR = cluster
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rt, err := runtime.New(ctx, cfg)
	if err != nil {
		t.Fatalf("clean node %s: %v", ns, err)
	}
	defer rt.Close()
	cs, err := rt.List(ctx)
	if err != nil {
		t.Fatalf("clean node %s: %v", ns, err)
	}
	for _, c := range cs {
		if err := rt.Stop(ctx, c.InstanceID, time.Second); err != nil {
			t.Logf("clean node %s: stop %s: %v", ns, c.InstanceID, err)
		}
	}
	if _, err := rt.RemoveLeftovers(ctx); err != nil {
		t.Logf("clean node %s: %v", ns, err)
	}
	if removeNet {
		if err := rt.RemoveNetwork(ctx); err != nil {
			t.Logf("clean node %s: %v", ns, err)
		}
	}
}

// proc is a berth process started by a test.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout []string
	lines  chan string
	logf   *os.File
	done   chan error
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startCommand(t, name, berthBin, args...)
}

// startInNetns runs berth inside a network namespace (nsenter changes only
// the network namespace, so the agent's netns bind mounts stay visible to
// containerd).
func startInNetns(t *testing.T, name, netns string, args ...string) *proc {
	t.Helper()
	return startCommand(t, name, "nsenter", append([]string{"--net=/run/netns/" + netns, berthBin}, args...)...)
}

func startCommand(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, lines: make(chan string, 100), logf: logf, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = logf
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.stdout = append(p.stdout, sc.Text())
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM, 30*time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			t.Logf("---- %s log (last lines) ----\n%s", name, strings.Join(lines, "\n"))
		}
		logf.Close()
	})
	return p
}

// logText returns what the process wrote to stderr so far.
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.logf.Name())
	return string(b)
}

// waitLine waits for a stdout line matching re and returns its groups.
func (p *proc) waitLine(re string, timeout time.Duration) []string {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, l := range p.stdout {
			if m := rx.FindStringSubmatch(l); m != nil {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		select {
		case <-p.lines:
		case err := <-p.done:
			p.done <- err
			p.t.Fatalf("%s exited (%v) before printing %q", p.name, err, re)
		case <-deadline:
			p.t.Fatalf("%s did not print %q within %s", p.name, re, timeout)
		}
	}
}

// stop signals the process and waits for it to exit.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		return fmt.Errorf("%s did not stop within %s after %v", p.name, timeout, sig)
	}
}

// adminConfigs maps a control plane's API address to the admin CLI
// configuration (CA and admin token) it wrote; berth() uses it.
var adminConfigs sync.Map

// adminConfig waits for a server's or berth dev's banner line that names
// its CLI configuration and records it for calls to api.
func (p *proc) adminConfig(api string) string {
	p.t.Helper()
	path := p.waitLine(`CLI configuration: ([^\s)]+)`, 30*time.Second)[1]
	adminConfigs.Store(api, path)
	return path
}

// joinToken creates a join token for role on api's cluster and returns it
// with the CA hash the joining part must pin.
func joinToken(t *testing.T, api, role string) (token, caHash string) {
	t.Helper()
	out, errOut, code := berth(t, api, "token", "create", "--role", role)
	if code != 0 {
		t.Fatalf("berth token create --role %s: exit %d: %s", role, code, errOut)
	}
	m := regexp.MustCompile(`--ca-hash (\S+)`).FindStringSubmatch(errOut)
	if m == nil {
		t.Fatalf("berth token create printed no CA hash: %s", errOut)
	}
	return strings.TrimSpace(out), m[1]
}

// berth runs a CLI command and returns stdout, stderr and the exit code.
// It authenticates with the admin configuration of the (first) server.
func berth(t *testing.T, server string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	global := []string{"--server", server}
	if cfg, ok := adminConfigs.Load(strings.Split(server, ",")[0]); ok {
		global = append(global, "--config", cfg.(string))
	}
	cmd := exec.CommandContext(ctx, berthBin, append(global, args...)...)
	cmd.Dir = repoRoot
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("berth %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func mustBerth(t *testing.T, server string, args ...string) string {
	t.Helper()
	out, errOut, code := berth(t, server, args...)
	if code != 0 {
		t.Fatalf("berth %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// instanceView mirrors the JSON of `berth get instances -o json`.
type instanceView struct {
	Instance struct {
		ID       string `json:"id"`
		Service  string `json:"service"`
		Node     string `json:"node"`
		Desired  string `json:"desired"`
		Draining bool   `json:"draining"`
	} `json:"instance"`
	Status struct {
		Phase       string `json:"phase"`
		IP          string `json:"ip"`
		Ready       bool   `json:"ready"`
		Restarts    int    `json:"restarts"`
		LastError   string `json:"lastError"`
		ContainerID string `json:"containerId"`
	} `json:"status"`
}

func instances(t *testing.T, server, service string) []instanceView {
	t.Helper()
	out := mustBerth(t, server, "get", "instances", "-o", "json")
	var all []instanceView
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("decode instances: %v\n%s", err, out)
	}
	var res []instanceView
	for _, iv := range all {
		if service == "" || iv.Instance.Service == service {
			res = append(res, iv)
		}
	}
	return res
}

func readyInstances(ivs []instanceView) []instanceView {
	var out []instanceView
	for _, iv := range ivs {
		if iv.Status.Ready && !iv.Instance.Draining && iv.Instance.Desired == "running" {
			out = append(out, iv)
		}
	}
	return out
}

// eventually polls f until it returns true or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var state string
	for time.Now().Before(deadline) {
		var ok bool
		ok, state = f()
		if ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, state)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readAdminConfig is the admin CLI configuration of the control plane at
// api.
func readAdminConfig(api string) string {
	cfg, _ := adminConfigs.Load(api)
	s, _ := cfg.(string)
	return s
}
