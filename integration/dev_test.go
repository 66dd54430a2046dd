package integration

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

const (
	devNamespace = "berth-e2e-dev"
	devBridge    = "berthdev0"
	devCluster   = "10.213.224.0/20"
	devSubnet    = "10.213.224.0/24"
)

// TestDevStopAndRestart runs `berth dev` as a user would: apply, serve,
// Ctrl-C (which stops its containers), start again on the same data
// directory (which brings the same services back).
func TestDevStopAndRestart(t *testing.T) {
	requireContainerd(t)
	data := t.TempDir()
	stateDir := filepath.Join(data, "node")
	t.Cleanup(func() { cleanNode(t, devNamespace, devBridge, devSubnet, devCluster, stateDir, true) })
	args := []string{"dev", "--data-dir", data, "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0",
		"--gateway-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ui-addr", "127.0.0.1:0", "--cluster-cidr", devCluster, "--containerd-namespace", devNamespace,
		"--bridge", devBridge, "--node-name", "dev-node", "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9", "--stop-grace", "3s"}

	ctrd, err := containerd.New("/run/containerd/containerd.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ctrd.Close()
	cctx := namespaces.WithNamespace(context.Background(), devNamespace)
	containers := func() int {
		list, err := ctrd.Containers(cctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}
	if n := containers(); n != 0 {
		cleanNode(t, devNamespace, devBridge, devSubnet, devCluster, stateDir, false)
	}

	hello := func(gw string) (int, error) {
		req, _ := http.NewRequest("GET", "http://"+gw+"/", nil)
		req.Host = "hello.example.test"
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	dev := startProc(t, "dev", args...)
	api := dev.waitLine(`^\s+api\s+(\S+)`, 60*time.Second)[1]
	dev.adminConfig(api)
	gw := dev.waitLine(`^\s+gateway\s+http://(\S+)`, 5*time.Second)[1]
	metrics := dev.waitLine(`^\s+metrics\s+(\S+)`, 5*time.Second)[1]
	mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"))
	mustBerth(t, api, "apply", "-f", "examples/", "--wait", "--timeout", "2m")
	eventually(t, 15*time.Second, "a request through the gateway", func() (bool, string) {
		code, err := hello(gw)
		return code == 200, statusOrErr(code, err)
	})
	if n := containers(); n != 4 {
		t.Fatalf("%d containers running, want 4", n)
	}
	// Every component exposes Prometheus metrics.
	resp, err := http.Get(metrics)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp)
	for _, m := range []string{"berth_dns_", "berth_xds_", "berth_gateway_", "berth_agent_", "berth_controller_", "berth_discovery_"} {
		if !strings.Contains(body, m) {
			t.Errorf("metrics lack %s*", m)
		}
	}

	// Ctrl-C stops berth dev and the containers it started.
	if err := dev.stop(syscall.SIGINT, 60*time.Second); err != nil {
		t.Fatalf("berth dev did not stop cleanly: %v", err)
	}
	dev.waitLine(`berth dev stopped`, time.Second)
	if n := containers(); n != 0 {
		t.Fatalf("%d containers left after Ctrl-C", n)
	}

	// Started again on the same data directory, the services come back.
	dev2 := startProc(t, "dev-2", args...)
	api = dev2.waitLine(`^\s+api\s+(\S+)`, 60*time.Second)[1]
	dev2.adminConfig(api)
	gw = dev2.waitLine(`^\s+gateway\s+http://(\S+)`, 5*time.Second)[1]
	eventually(t, 60*time.Second, "services back after restart", func() (bool, string) {
		out := mustBerth(t, api, "get", "services")
		return strings.Contains(out, "3/3") && strings.Contains(out, "1/1"), out
	})
	eventually(t, 15*time.Second, "gateway serving again", func() (bool, string) {
		code, err := hello(gw)
		return code == 200, statusOrErr(code, err)
	})
	if err := dev2.stop(syscall.SIGINT, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := containers(); n != 0 {
		t.Fatalf("%d containers left after the second Ctrl-C", n)
	}
}

// TestDevWithoutContainerd says what to do when containerd is missing.
func TestDevWithoutContainerd(t *testing.T) {
	data := t.TempDir()
	cmdOut, errOut, code := berth(t, "127.0.0.1:1", "dev", "--data-dir", data, "--containerd-socket", filepath.Join(data, "missing.sock"),
		"--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0", "--gateway-addr", "127.0.0.1:0", "--metrics-addr", "", "--ui-addr", "")
	if code == 0 || !strings.Contains(errOut, "containerd") || !strings.Contains(errOut, "apt-get install") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, cmdOut, errOut)
	}
}

func statusOrErr(code int, err error) string {
	if err != nil {
		return err.Error()
	}
	return http.StatusText(code)
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
