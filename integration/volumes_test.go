package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

const (
	volNamespace = "berth-e2e-vol"
	volBridge    = "berthvol0"
	volCluster   = "10.213.192.0/20"
	volSubnet    = "10.213.192.0/24"
)

func putFile(t *testing.T, ip, name, content string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", "http://"+ip+":8080/files/"+name, strings.NewReader(content))
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %s on %s: %s", name, ip, resp.Status)
	}
}

func getFile(t *testing.T, ip, name string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ip + ":8080/files/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s on %s: %s %s", name, ip, resp.Status, b)
	}
	return string(b)
}

// ordinalView is the part of `get instances -o json` this test needs.
type ordinalView struct {
	Instance struct {
		ID       string `json:"id"`
		Service  string `json:"service"`
		Ordinal  int    `json:"ordinal"`
		Revision string `json:"revision"`
		Desired  string `json:"desired"`
		Draining bool   `json:"draining"`
	} `json:"instance"`
	Status struct {
		IP    string `json:"ip"`
		Ready bool   `json:"ready"`
	} `json:"status"`
}

func readyByService(t *testing.T, api, service string) []ordinalView {
	t.Helper()
	var all []ordinalView
	if err := json.Unmarshal([]byte(mustBerth(t, api, "get", "instances", "-o", "json")), &all); err != nil {
		t.Fatal(err)
	}
	var out []ordinalView
	for _, iv := range all {
		if iv.Instance.Service == service && iv.Status.Ready && !iv.Instance.Draining && iv.Instance.Desired == "running" {
			out = append(out, iv)
		}
	}
	return out
}

func TestVolumes(t *testing.T) {
	requireContainerd(t)
	top := t
	stateDir := filepath.Join(os.TempDir(), "berth-e2e-vol-node")
	cleanNode(t, volNamespace, volBridge, volSubnet, volCluster, stateDir, false)
	os.RemoveAll(stateDir)
	t.Cleanup(func() {
		cleanNode(t, volNamespace, volBridge, volSubnet, volCluster, stateDir, true)
		os.RemoveAll(stateDir)
	})
	server := startProc(t, "server", "server", "--data-dir", t.TempDir(), "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
		"--dns-addr", "", "--metrics-addr", "", "--ui-addr", "", "--cluster-cidr", volCluster, "--dns-ttl", "1s")
	api := server.waitLine(`api (\S+),`, 60*time.Second)[1]
	server.adminConfig(api)
	token, caHash := joinToken(t, api, "node")
	agentArgs := []string{"--server", api, "agent", "--join-token", token, "--ca-hash", caHash, "--node-name", "vol-node", "--containerd-namespace", volNamespace,
		"--bridge", volBridge, "--state-dir", stateDir, "--metrics-addr", "", "--dns-upstream", "127.0.0.1:9", "--stop-grace", "2s"}
	agent := startProc(t, "agent", agentArgs...)
	mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"), filepath.Join(imagesDir, "hello-v2.tar"))

	dir := t.TempDir()
	manifest := func(image string) string {
		return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Volume
metadata: {name: data}
spec: {size: 100Mi}
---
apiVersion: berth.dev/v1
kind: Service
metadata: {name: store}
spec:
  image: %[1]s
  env: {DATA_DIR: /data}
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  volumes:
    - {name: data, mountPath: /data}
    - {name: scratch, mountPath: /scratch, tmpfs: true, size: 16Mi}
---
apiVersion: berth.dev/v1
kind: Service
metadata: {name: state}
spec:
  image: %[1]s
  replicas: 2
  env: {DATA_DIR: /wal}
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  volumeTemplates:
    - {name: wal, mountPath: /wal, size: 10Mi}
`, image)
	}
	f := filepath.Join(dir, "app.yaml")
	writeFile(t, f, manifest("berth.local/hello:v1"))
	mustBerth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")

	storeIP := func() string {
		var ip string
		eventually(t, 60*time.Second, "one ready store replica", func() (bool, string) {
			r := readyByService(t, api, "store")
			if len(r) != 1 {
				return false, fmt.Sprint(r)
			}
			ip = r[0].Status.IP
			return true, ""
		})
		return ip
	}
	putFile(t, storeIP(), "greeting", "hello from v1")
	perReplica := map[int]string{}
	for _, iv := range readyByService(t, api, "state") {
		putFile(t, iv.Status.IP, "who", fmt.Sprintf("replica %d", iv.Instance.Ordinal))
		perReplica[iv.Instance.Ordinal] = iv.Instance.ID
	}
	if len(perReplica) != 2 || perReplica[0] == "" || perReplica[1] == "" {
		t.Fatalf("ordinals: %v", perReplica)
	}

	t.Run("data survives a rollout to v2", func(t *testing.T) {
		writeFile(t, f, manifest("berth.local/hello:v2"))
		mustBerth(t, api, "apply", "-f", f)
		eventually(t, 60*time.Second, "v2 serving with the old data", func() (bool, string) {
			r := readyByService(t, api, "store")
			if len(r) != 1 || r[0].Instance.Revision != "2" {
				return false, fmt.Sprint(r)
			}
			return true, ""
		})
		if got := getFile(t, storeIP(), "greeting"); got != "hello from v1" {
			t.Fatalf("after rollout: %q", got)
		}
		eventually(t, 60*time.Second, "state replicas on revision 2", func() (bool, string) {
			r := readyByService(t, api, "state")
			for _, iv := range r {
				if iv.Instance.Revision != "2" {
					return false, fmt.Sprint(r)
				}
			}
			return len(r) == 2, fmt.Sprint(r)
		})
		for _, iv := range readyByService(t, api, "state") {
			if got := getFile(t, iv.Status.IP, "who"); got != fmt.Sprintf("replica %d", iv.Instance.Ordinal) {
				t.Fatalf("replica %d (%s) reads %q: per-replica volume lost its identity", iv.Instance.Ordinal, iv.Instance.ID, got)
			}
		}
	})

	t.Run("data survives a killed container", func(t *testing.T) {
		ctrd, err := containerd.New("/run/containerd/containerd.sock")
		if err != nil {
			t.Fatal(err)
		}
		defer ctrd.Close()
		ctx := namespaces.WithNamespace(context.Background(), volNamespace)
		id := readyByService(t, api, "store")[0].Instance.ID
		c, err := ctrd.LoadContainer(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		task.Kill(ctx, syscall.SIGKILL)
		eventually(t, 30*time.Second, "restarted", func() (bool, string) {
			for _, iv := range instances(t, api, "store") {
				if iv.Instance.ID == id {
					return iv.Status.Restarts == 1 && iv.Status.Ready, fmt.Sprint(iv.Status)
				}
			}
			return false, "gone"
		})
		if got := getFile(t, storeIP(), "greeting"); got != "hello from v1" {
			t.Fatalf("after kill: %q", got)
		}
	})

	t.Run("data survives an agent restart", func(t *testing.T) {
		agent.stop(syscall.SIGTERM, 30*time.Second)
		agent = startProc(top, "agent-2", agentArgs...)
		if got := getFile(t, storeIP(), "greeting"); got != "hello from v1" {
			t.Fatalf("after agent restart: %q", got)
		}
	})

	t.Run("a volume's size limit holds", func(t *testing.T) {
		// wal volumes are 10Mi: a 12 MiB file does not fit.
		iv := readyByService(t, api, "state")[0]
		req, _ := http.NewRequest("PUT", "http://"+iv.Status.IP+":8080/files/big", strings.NewReader(strings.Repeat("x", 12<<20)))
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("a 12 MiB file in a 10Mi volume: %s", resp.Status)
		}
		if got := getFile(t, iv.Status.IP, "who"); got != fmt.Sprintf("replica %d", iv.Instance.Ordinal) {
			t.Fatalf("after the failed write: %q", got)
		}
	})

	t.Run("rm is refused while the volume is in use", func(t *testing.T) {
		_, errOut, code := berth(t, api, "volume", "rm", "data")
		if code == 0 || !strings.Contains(errOut, "in use") {
			t.Fatalf("rm in use: exit %d, %q", code, errOut)
		}
	})

	t.Run("data survives deleting and re-creating the service", func(t *testing.T) {
		mustBerth(t, api, "delete", "service", "store", "--wait")
		if out := mustBerth(t, api, "volume", "ls"); !strings.Contains(out, "data") || !strings.Contains(out, "vol-node") {
			t.Fatalf("volume gone with its service:\n%s", out)
		}
		mustBerth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")
		if got := getFile(t, storeIP(), "greeting"); got != "hello from v1" {
			t.Fatalf("after re-create: %q", got)
		}
	})

	t.Run("bad volume input is rejected at apply time with the field named", func(t *testing.T) {
		for _, tc := range []struct{ vols, want string }{
			{"    - {name: nosuch, mountPath: /x}\n", `spec.volumes[0].name: volume "nosuch" does not exist`},
			{"    - {name: data, mountPath: relative}\n", "spec.volumes[0].mountPath: must be an absolute path"},
			{"    - {name: data, mountPath: /x}\n    - {name: scratch, mountPath: /x, tmpfs: true}\n", "spec.volumes[1].mountPath: /x is already mounted"},
		} {
			bad := filepath.Join(t.TempDir(), "bad.yaml")
			writeFile(t, bad, "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  image: berth.local/hello:v1\n  volumes:\n"+tc.vols)
			_, errOut, code := berth(t, api, "apply", "-f", bad)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q, want %q", code, errOut, tc.want)
			}
		}
	})

	t.Run("rm after the last user is gone removes the data", func(t *testing.T) {
		mustBerth(t, api, "delete", "service", "store", "--wait")
		mustBerth(t, api, "delete", "service", "state", "--wait")
		for _, name := range []string{"data", "wal-0", "wal-1"} {
			mustBerth(t, api, "volume", "rm", name)
			dataDir := filepath.Join(stateDir, "volumes", "default", name)
			eventually(t, 30*time.Second, "volume "+name+" and its data gone", func() (bool, string) {
				out := mustBerth(t, api, "volume", "ls")
				_, err := os.Stat(dataDir)
				_, imgErr := os.Stat(dataDir + ".img")
				return !strings.Contains(out, " "+name+" ") && os.IsNotExist(err) && os.IsNotExist(imgErr), out
			})
		}
	})

	t.Run("a secret reaches its container as env and read-only files, on a tmpfs, and nowhere else", func(t *testing.T) {
		const value = "s3cret-value-for-the-e2e"
		secretFile := filepath.Join(t.TempDir(), "password")
		writeFile(t, secretFile, value)
		mustBerth(t, api, "secret", "create", "db", "--from-file", "password="+secretFile, "--from-literal", "dir=/run/secrets/db")
		// DATA_DIR comes from the secret, so the file read below works only
		// if both the env and the mount arrived.
		m := filepath.Join(t.TempDir(), "vault.yaml")
		writeFile(t, m, `apiVersion: berth.dev/v1
kind: Service
metadata: {name: vault}
spec:
  image: berth.local/hello:v1
  replicas: 1
  ports: [{name: http, port: 8080, protocol: http}]
  resources: {cpu: 50m, memory: 32Mi}
  health: {http: {path: /healthz, port: 8080}, interval: 1s, timeout: 1s}
  secrets: [{name: db, mountPath: /run/secrets/db, env: {DATA_DIR: dir}}]
`)
		mustBerth(t, api, "apply", "-f", m)
		var ready []ordinalView
		eventually(t, 60*time.Second, "one ready vault replica", func() (bool, string) {
			ready = readyByService(t, api, "vault")
			return len(ready) == 1, fmt.Sprint(ready)
		})
		ip := ready[0].Status.IP
		if got := getFile(t, ip, "password"); got != value {
			t.Fatalf("the container read %q, want the secret", got)
		}
		// Read-only in the container.
		req, _ := http.NewRequest("PUT", "http://"+ip+":8080/files/password", strings.NewReader("overwritten"))
		if resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req); err != nil || resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("writing the secret file: %v %v, want refused (read-only)", resp, err)
		}
		var st syscall.Statfs_t
		dir := filepath.Join(stateDir, "secrets", ready[0].Instance.ID)
		if err := syscall.Statfs(dir, &st); err != nil || st.Type != 0x01021994 {
			t.Fatalf("secret files on the node are not on a tmpfs: %v (type %x)", err, st.Type)
		}
		for _, out := range []string{mustBerth(t, api, "describe", "service", "vault"), mustBerth(t, api, "get", "services", "-o", "yaml"), mustBerth(t, api, "secret", "ls"), mustBerth(t, api, "events")} {
			if strings.Contains(out, value) {
				t.Fatalf("the secret's value is printed:\n%s", out)
			}
		}
		if _, errOut, code := berth(t, api, "secret", "rm", "db"); code == 0 || !strings.Contains(errOut, "used by vault") {
			t.Fatalf("secret rm while in use: exit %d: %s", code, errOut)
		}
		mustBerth(t, api, "delete", "service", "vault", "--wait")
		eventually(t, 30*time.Second, "the instance's secret files gone", func() (bool, string) {
			_, err := os.Stat(dir)
			return os.IsNotExist(err), fmt.Sprint(err)
		})
		mustBerth(t, api, "secret", "rm", "db")
	})

	t.Run("containers run sandboxed with default limits; volumes are nosuid,nodev", func(t *testing.T) {
		m := filepath.Join(t.TempDir(), "boxed.yaml")
		svc := func(name, extra string) string {
			return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: %s}
spec:
  image: berth.local/hello:v1
  replicas: 1
  ports: [{name: http, port: 8080, protocol: http}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s, timeout: 1s}
%s`, name, extra)
		}
		writeFile(t, m, svc("boxproc", "  env: {DATA_DIR: /proc/self}\n  volumeTemplates: [{name: box, mountPath: /box}]\n")+"---\n"+
			svc("boxcg", "  env: {DATA_DIR: /proc/self}\n  resources: {pids: 64}\n")+"---\n"+
			svc("boxuser", "  env: {DATA_DIR: /proc/self}\n  securityContext: {runAsUser: 1000, runAsGroup: 1001, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}\n"))
		mustBerth(t, api, "apply", "-f", m)
		ip := map[string]string{}
		for _, name := range []string{"boxproc", "boxcg", "boxuser"} {
			eventually(t, 60*time.Second, "one ready "+name, func() (bool, string) {
				r := readyByService(t, api, name)
				if len(r) == 1 {
					ip[name] = r[0].Status.IP
				}
				return len(r) == 1, fmt.Sprint(r)
			})
		}
		st := getFile(t, ip["boxproc"], "status")
		for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2"} {
			if !strings.Contains(st, want) {
				t.Errorf("/proc/self/status lacks %q:\n%s", want, st)
			}
		}
		var capEff uint64
		for _, line := range strings.Split(st, "\n") {
			if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
				fmt.Sscanf(v, "%x", &capEff)
			}
		}
		const capNetRaw, capMknod, capSysAdmin = 13, 27, 21
		if capEff == 0 || capEff&(1<<capNetRaw|1<<capMknod|1<<capSysAdmin) != 0 {
			t.Errorf("effective capabilities %x: want Docker's default set without NET_RAW and MKNOD", capEff)
		}
		mounts := getFile(t, ip["boxproc"], "mountinfo")
		found := false
		for _, line := range strings.Split(mounts, "\n") {
			if f := strings.Fields(line); len(f) > 5 && f[4] == "/box" {
				found = true
				if !strings.Contains(f[5], "nosuid") || !strings.Contains(f[5], "nodev") {
					t.Errorf("the volume is mounted %s, want nosuid,nodev", f[5])
				}
			}
		}
		if !found {
			t.Errorf("no /box mount in:\n%s", mounts)
		}
		// No resources: the node's defaults; resources.pids overrides one.
		// The container's cgroup, read on the host (v2, or v1 controllers).
		paths := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(getFile(t, ip["boxcg"], "cgroup")), "\n") {
			if f := strings.SplitN(line, ":", 3); len(f) == 3 {
				paths[f[1]] = f[2]
			}
		}
		read := func(controller, v1, v2 string) string {
			path := filepath.Join("/sys/fs/cgroup", paths[""], v2)
			if p, ok := paths[controller]; ok {
				path = filepath.Join("/sys/fs/cgroup", controller, p, v1)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(b))
		}
		if got := read("pids", "pids.max", "pids.max"); got != "64" {
			t.Errorf("pids.max = %q, want the service's 64", got)
		}
		if got := read("memory", "memory.limit_in_bytes", "memory.max"); got != "536870912" {
			t.Errorf("memory limit = %q, want the default 512Mi", got)
		}
		if got := read("cpu", "cpu.cfs_quota_us", "cpu.max"); got != "100000" && got != "100000 100000" {
			t.Errorf("cpu quota = %q, want the default one CPU", got)
		}
		// securityContext: another user and group, a read-only root, no
		// capabilities at all.
		st = getFile(t, ip["boxuser"], "status")
		for _, want := range []string{"Uid:\t1000\t1000\t1000\t1000", "Gid:\t1001\t1001\t1001\t1001", "Groups:\t1001", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000"} {
			if !strings.Contains(st, want) {
				t.Errorf("securityContext: /proc/self/status lacks %q:\n%s", want, st)
			}
		}
		rootRO := false
		for _, line := range strings.Split(getFile(t, ip["boxuser"], "mountinfo"), "\n") {
			if f := strings.Fields(line); len(f) > 5 && f[4] == "/" {
				rootRO = slices.Contains(strings.Split(f[5], ","), "ro")
			}
		}
		if !rootRO {
			t.Errorf("readOnlyRootFilesystem: the root is not mounted ro")
		}
		mustBerth(t, api, "delete", "service", "boxproc", "--wait")
		mustBerth(t, api, "delete", "service", "boxcg", "--wait")
		mustBerth(t, api, "delete", "service", "boxuser", "--wait")
		mustBerth(t, api, "volume", "rm", "box-0")
	})
}
