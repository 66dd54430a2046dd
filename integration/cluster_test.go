package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/pki"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/miekg/dns"
)

// The multi-node harness: every node is a network namespace with a veth
// to a host bridge the harness creates, running its own `berth agent`
// (entered with nsenter) with its own containerd namespace; the agents
// build their node bridges inside their namespaces and route to each
// other's pod subnets (host-gw). Addresses: host bridge 10.213.64.1/24,
// nodes 10.213.64.11-13, pods from 10.213.208.0/20.
const (
	mnHostBridge  = "berthmnh0"
	mnHostIP      = "10.213.64.1"
	mnClusterCIDR = "10.213.208.0/20"
	mnNodeBridge  = "berthmn0"
)

type mnNode struct {
	name, netns, addr, veth, ctrNS string
	stateDir                       string
	agent                          *proc
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func ipQuiet(args ...string) { _ = exec.Command("ip", args...).Run() }

type mnCluster struct {
	t       *testing.T
	api     string
	hostDNS string
	gw      string
	token   string
	caHash  string
	nodes   []*mnNode
	ctrd    *containerd.Client
	routes  []string
}

func (c *mnCluster) removeNetwork() {
	for _, r := range c.routes {
		ipQuiet("route", "del", r)
	}
	for _, n := range c.nodes {
		ipQuiet("netns", "del", n.netns)
		ipQuiet("link", "del", n.veth)
	}
	ipQuiet("link", "del", mnHostBridge)
}

// removeContainers kills what a dead node left behind directly through
// containerd (its agent is gone) and drops the namespace's state.
func (c *mnCluster) removeContainers(n *mnNode) {
	ctx := namespaces.WithNamespace(context.Background(), n.ctrNS)
	list, err := c.ctrd.Containers(ctx)
	if err != nil {
		return
	}
	for _, ctr := range list {
		if task, err := ctr.Task(ctx, nil); err == nil {
			_ = task.Kill(ctx, syscall.SIGKILL)
			if ch, err := task.Wait(ctx); err == nil {
				select {
				case <-ch:
				case <-time.After(5 * time.Second):
				}
			}
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
		_ = ctr.Delete(ctx, containerd.WithSnapshotCleanup)
		ipQuiet("netns", "del", n.ctrNS+"-"+ctr.ID())
	}
}

func startCluster(t *testing.T, nodes int) *mnCluster {
	t.Helper()
	ctrd, err := containerd.New("/run/containerd/containerd.sock")
	if err != nil {
		t.Fatal(err)
	}
	c := &mnCluster{t: t, ctrd: ctrd}
	for i := 1; i <= nodes; i++ {
		c.nodes = append(c.nodes, &mnNode{
			name: fmt.Sprintf("n%d", i), netns: fmt.Sprintf("berthmn-n%d", i), addr: fmt.Sprintf("10.213.64.%d", 10+i),
			veth: fmt.Sprintf("berthmnv%d", i), ctrNS: fmt.Sprintf("berth-mn-n%d", i), stateDir: filepath.Join(t.TempDir(), fmt.Sprintf("n%d", i)),
		})
	}
	// Leftovers of an aborted run first.
	for _, n := range c.nodes {
		c.removeContainers(n)
	}
	c.removeNetwork()
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.agent != nil {
				n.agent.stop(syscall.SIGTERM, 30*time.Second)
			}
			c.removeContainers(n)
		}
		c.removeNetwork()
		ctrd.Close()
	})

	ip(t, "link", "add", mnHostBridge, "type", "bridge")
	ip(t, "addr", "add", mnHostIP+"/24", "dev", mnHostBridge)
	ip(t, "link", "set", mnHostBridge, "up")
	for _, n := range c.nodes {
		ip(t, "netns", "add", n.netns)
		ip(t, "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
		ip(t, "link", "set", n.veth, "master", mnHostBridge, "up")
		ip(t, "-n", n.netns, "addr", "add", n.addr+"/24", "dev", "eth0")
		ip(t, "-n", n.netns, "link", "set", "eth0", "up")
		ip(t, "-n", n.netns, "link", "set", "lo", "up")
	}

	data := t.TempDir()
	server := startProc(t, "server", "server", "--data-dir", data, "--api-addr", mnHostIP+":0", "--xds-addr", "127.0.0.1:0",
		"--dns-addr", "127.0.0.1:0", "--metrics-addr", "", "--ui-addr", "", "--cluster-cidr", mnClusterCIDR, "--dns-ttl", "1s",
		"--dns-upstream", "127.0.0.1:9", "--node-timeout", "2s", "--lost-grace", "5s")
	m := server.waitLine(`api (\S+), xds (\S+), dns (\S+),`, 60*time.Second)
	c.api, c.hostDNS = m[1], m[3]
	server.adminConfig(c.api)
	gwToken, caHash := joinToken(t, c.api, "gateway")
	gw := startProc(t, "gateway", "--server", c.api, "gateway", "--join-token", gwToken, "--ca-hash", caHash, "--cert-dir", filepath.Join(t.TempDir(), "gw-pki"), "--state-dir", t.TempDir(),
		"--listen", "127.0.0.1:0", "--xds", m[2], "--node-id", "mn-gateway", "--metrics-addr", "")
	c.gw = gw.waitLine(`berth gateway: http://(\S+),`, 30*time.Second)[1]
	// One token joins every node (uses = nodes).
	out, errOut, code := berth(t, c.api, "token", "create", "--role", "node", "--uses", fmt.Sprint(nodes))
	if code != 0 {
		t.Fatalf("token create: %s", errOut)
	}
	c.token, c.caHash = strings.TrimSpace(out), regexp.MustCompile(`--ca-hash (\S+)`).FindStringSubmatch(errOut)[1]
	for _, n := range c.nodes {
		c.startAgent(n)
	}
	eventually(t, 60*time.Second, "all nodes Ready", func() (bool, string) {
		out := mustBerth(t, c.api, "get", "nodes")
		return strings.Count(out, " Ready ") == nodes, out
	})
	// The gateway runs on the host: give the host the same host-gw routes
	// the agents program among themselves.
	var list []struct {
		Name    string `json:"name"`
		Address string `json:"address"`
		PodCidr string `json:"podCidr"`
	}
	if err := json.Unmarshal([]byte(mustBerth(t, c.api, "get", "nodes", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	for _, n := range list {
		ip(t, "route", "replace", n.PodCidr, "via", n.Address)
		c.routes = append(c.routes, n.PodCidr)
	}
	return c
}

func (c *mnCluster) startAgent(n *mnNode) {
	n.agent = startInNetns(c.t, "agent-"+n.name, n.netns, "--server", c.api, "agent", "--join-token", c.token, "--ca-hash", c.caHash,
		"--node-name", n.name, "--node-address", n.addr, "--containerd-namespace", n.ctrNS, "--bridge", mnNodeBridge,
		"--state-dir", n.stateDir, "--metrics-addr", "", "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9",
		"--stop-grace", "2s", "--stop-on-exit")
}

func (c *mnCluster) node(name string) *mnNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

func perNode(ivs []instanceView) map[string]int {
	m := map[string]int{}
	for _, iv := range ivs {
		m[iv.Instance.Node]++
	}
	return m
}

func dnsIPs(t *testing.T, server, name string) map[string]bool {
	r, err := lookupA(t, server, name)
	got := map[string]bool{}
	if err != nil {
		return got
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			got[a.A.String()] = true
		}
	}
	return got
}

func TestMultiNodeCluster(t *testing.T) {
	requireContainerd(t)
	c := startCluster(t, 3)
	api := c.api
	mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"))
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hello.yaml"), strings.Replace(readFile(t, filepath.Join(repoRoot, "examples/hello.yaml")), "replicas: 3", "replicas: 6", 1))
	writeFile(t, filepath.Join(dir, "client.yaml"), readFile(t, filepath.Join(repoRoot, "examples/client.yaml")))
	mustBerth(t, api, "apply", "-f", dir, "--wait", "--timeout", "2m")

	t.Run("6 replicas spread 2/2/2", func(t *testing.T) {
		spread := perNode(readyInstances(instances(t, api, "hello")))
		if spread["n1"] != 2 || spread["n2"] != 2 || spread["n3"] != 2 {
			t.Fatalf("spread = %v", spread)
		}
	})

	t.Run("containers reach each other across nodes by name", func(t *testing.T) {
		client := readyInstances(instances(t, api, "client"))[0]
		nodeOf := map[string]string{}
		for _, iv := range instances(t, api, "hello") {
			nodeOf[iv.Instance.ID] = iv.Instance.Node
		}
		remote := 0
		for i := 0; i < 30; i++ {
			req, _ := http.NewRequest("GET", "http://"+client.Status.IP+":8080/call?url=http://hello:8080/", nil)
			var r callReply
			if code := getJSON(t, &http.Client{Timeout: 15 * time.Second}, req, &r); code != 200 || r.Status != 200 {
				t.Fatalf("call from %s on %s: %d %+v", client.Instance.ID, client.Instance.Node, code, r)
			}
			var h helloReply
			json.Unmarshal([]byte(r.Body), &h)
			if nodeOf[h.Instance] != client.Instance.Node {
				remote++
			}
			// Pod to pod keeps its source address across nodes (no masquerade
			// inside the cluster CIDR).
			if h.Client != client.Status.IP {
				t.Fatalf("%s on %s saw the caller as %q, want the client's pod address %s", h.Instance, nodeOf[h.Instance], h.Client, client.Status.IP)
			}
		}
		if remote == 0 {
			t.Fatal("30 calls from the client never reached a replica on another node")
		}
		// And the gateway on the host reaches every node.
		seen := map[string]bool{}
		for i := 0; i < 60; i++ {
			req, _ := http.NewRequest("GET", "http://"+c.gw+"/", nil)
			req.Host = "hello.example.test"
			var h helloReply
			if code := getJSON(t, &http.Client{Timeout: 5 * time.Second}, req, &h); code != 200 {
				t.Fatalf("gateway: %d", code)
			}
			seen[nodeOf[h.Instance]] = true
		}
		if len(seen) != 3 {
			t.Fatalf("gateway reached nodes %v, want all 3", seen)
		}
	})

	// lose kills or cuts a node and checks that its endpoints leave DNS,
	// then that replacements serve elsewhere.
	lose := func(t *testing.T, victim string, cut func()) {
		before := instances(t, api, "hello")
		victimIPs := map[string]bool{}
		for _, iv := range before {
			if iv.Instance.Node == victim {
				victimIPs[iv.Status.IP] = true
			}
		}
		cut()
		start := time.Now()
		eventually(t, 10*time.Second, "victim's endpoints out of DNS", func() (bool, string) {
			got := dnsIPs(t, c.hostDNS, "hello.default.svc.berth.internal")
			for ip := range victimIPs {
				if got[ip] {
					return false, fmt.Sprint(got)
				}
			}
			return len(got) > 0, fmt.Sprint(got)
		})
		out := time.Since(start)
		eventually(t, 60*time.Second, "6 ready replicas off the victim", func() (bool, string) {
			ready := readyInstances(instances(t, api, "hello"))
			spread := perNode(ready)
			return len(ready) == 6 && spread[victim] == 0, fmt.Sprint(spread)
		})
		t.Logf("node %s: endpoints out of DNS after %s, 6 replicas ready elsewhere after %s", victim, out.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
		if out > 3500*time.Millisecond {
			t.Errorf("endpoints left DNS after %s; target 3s (node timeout 2s + lease expiry)", out)
		}
	}

	t.Run("a killed node's work moves to the others", func(t *testing.T) {
		n3 := c.node("n3")
		lose(t, "n3", func() {
			n3.agent.stop(syscall.SIGKILL, 10*time.Second)
			c.removeContainers(n3)
		})
	})

	t.Run("a cut node is replaced, and fenced when it comes back", func(t *testing.T) {
		n2 := c.node("n2")
		lose(t, "n2", func() { ip(t, "link", "set", n2.veth, "down") })
		// n2's agent still runs its old containers: restore the link.
		ip(t, "link", "set", n2.veth, "up")
		ctx := namespaces.WithNamespace(context.Background(), n2.ctrNS)
		eventually(t, 30*time.Second, "n2's stale containers stopped", func() (bool, string) {
			list, err := c.ctrd.Containers(ctx)
			if err != nil {
				return false, err.Error()
			}
			return len(list) == 0, fmt.Sprintf("%d containers", len(list))
		})
		eventually(t, 30*time.Second, "n2 Ready again", func() (bool, string) {
			out := mustBerth(t, api, "get", "nodes")
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "n2 ") {
					return strings.Contains(l, " Ready "), l
				}
			}
			return false, out
		})
		// Never more than the desired count serving: exactly 6 hello
		// containers exist across all nodes.
		total := 0
		for _, n := range c.nodes {
			list, _ := c.ctrd.Containers(namespaces.WithNamespace(context.Background(), n.ctrNS))
			for _, ctr := range list {
				labels, _ := ctr.Labels(context.Background())
				_ = labels
				total++
			}
		}
		if total != 7 { // 6 hello + 1 client
			t.Fatalf("%d containers across the cluster, want 7", total)
		}
		if got := dnsIPs(t, c.hostDNS, "hello.default.svc.berth.internal"); len(got) != 6 {
			t.Fatalf("DNS answers %d addresses, want 6: %v", len(got), got)
		}
	})

}

// TestServerReplicasFailover runs two `berth server` replicas on one etcd:
// one leads (scheduler and controllers), both serve the API; killing the
// leader hands the lead to the other and work continues.
func TestServerReplicasFailover(t *testing.T) {
	etcd := startProc(t, "etcd", "etcd", "--data-dir", t.TempDir())
	endpoint := etcd.waitLine(`endpoint (\S+)`, 60*time.Second)[1]
	xdsOf, apiOf := map[string]string{}, map[string]string{}
	secretsKey := filepath.Join(t.TempDir(), "secrets.key") // every replica's
	start := func(name string) (*proc, string) {
		p := startProc(t, name, "server", "--name", name, "--etcd-endpoints", endpoint, "--data-dir", t.TempDir(), "--secrets-key-file", secretsKey,
			"--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0", "--dns-addr", "", "--metrics-addr", "", "--ui-addr", "")
		m := p.waitLine(`api (\S+), xds (\S+),`, 60*time.Second)
		xdsOf[name], apiOf[name] = m[2], m[1]
		p.adminConfig(m[1])
		return p, m[1]
	}
	a, apiA := start("replica-a")
	b, apiB := start("replica-b")
	leaderOf := func() string {
		for _, p := range []*proc{a, b} {
			if strings.Contains(p.logText(), "elected leader") && p.cmd.ProcessState == nil {
				return p.name
			}
		}
		return ""
	}
	eventually(t, 20*time.Second, "a leader", func() (bool, string) { return leaderOf() != "", "" })
	leader, follower, leaderAPI, followerAPI := a, b, apiA, apiB
	if leaderOf() == "replica-b" {
		leader, follower, leaderAPI, followerAPI = b, a, apiB, apiA
	}
	// A gateway on each replica: the leader lists (and its rollouts and
	// drains wait for) both, the follower's included.
	for _, p := range []*proc{leader, follower} {
		token, caHash := joinToken(t, apiOf[p.name], "gateway")
		startProc(t, "gw-"+p.name, "--server", apiOf[p.name], "gateway", "--join-token", token, "--ca-hash", caHash, "--cert-dir", filepath.Join(t.TempDir(), "gw-pki"), "--state-dir", t.TempDir(),
			"--listen", "127.0.0.1:0", "--xds", xdsOf[p.name], "--node-id", "gw-via-"+p.name, "--metrics-addr", "")
	}
	// An image uploaded to the leader is served by the follower too: it
	// fetches the file from the leader, checks its digest and keeps it.
	mustBerth(t, leaderAPI, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"))
	fetch := func(what string) {
		t.Helper()
		got, digest := fetchImage(t, followerAPI, "berth.local/hello:v1")
		want := sha256File(t, filepath.Join(imagesDir, "hello-v1.tar"))
		if got != want || digest != "sha256:"+want {
			t.Fatalf("%s: fetched content %s (announced %s), want sha256:%s", what, got, digest, want)
		}
	}
	fetch("image uploaded to the leader, fetched from the follower")
	eventually(t, 20*time.Second, "the leader lists both replicas' gateways as SYNCED", func() (bool, string) {
		out := mustBerth(t, leaderAPI, "get", "gateways")
		ok := true
		for _, p := range []*proc{leader, follower} {
			ok = ok && regexp.MustCompile(`gw-via-`+p.name+`\s+`+p.name+`\s+\S+\s+\d+/\d+\s+SYNCED`).MatchString(out)
		}
		return ok, out
	})
	leader.stop(syscall.SIGKILL, 10*time.Second)
	eventually(t, 20*time.Second, "the follower takes the lead", func() (bool, string) {
		return strings.Contains(follower.logText(), "elected leader"), ""
	})
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "svc.yaml"), "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: after}\nspec: {image: berth.local/hello:v1, replicas: 2}\n")
	mustBerth(t, followerAPI, "apply", "-f", filepath.Join(dir, "svc.yaml"))
	eventually(t, 20*time.Second, "the new leader's controllers create the instances", func() (bool, string) {
		return len(instances(t, followerAPI, "after")) == 2, mustBerth(t, followerAPI, "get", "instances")
	})
	fetch("the same image from the follower after the leader died")
	// A client given both replicas, the dead one first, reaches the live one.
	if out := mustBerth(t, leaderAPI+","+followerAPI, "get", "services"); !strings.Contains(out, "after") {
		t.Fatalf("get services through both replicas' addresses:\n%s", out)
	}
	// The dead replica's lease expired: its gateway is no longer waited for.
	eventually(t, 20*time.Second, "the dead replica's gateway gone from the list", func() (bool, string) {
		out := mustBerth(t, followerAPI, "get", "gateways")
		return !strings.Contains(out, "gw-via-"+leader.name) && strings.Contains(out, "gw-via-"+follower.name), out
	})
}

// fetchImage reads an image through the NodeAgent API as an agent does
// (with the admin's credentials) and returns the sha256 of the bytes
// received and the digest announced first.
func fetchImage(t *testing.T, api, ref string) (sum, digest string) {
	t.Helper()
	path, ok := adminConfigs.Load(api)
	if !ok {
		t.Fatalf("no admin configuration recorded for %s", api)
	}
	cfg, err := controlplane.ReadAdminConfig(path.(string))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pki.PoolFromPEM([]byte(cfg.CA))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pb.Dial(api, pki.ClientTLS(nil, pool), pb.WithToken(cfg.Token)...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := pb.NewNodeAgentClient(conn).FetchImage(ctx, &pb.FetchImageRequest{Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("fetch %s from %s: %v", ref, api, err)
		}
		if chunk.Digest != "" {
			digest = chunk.Digest
		}
		h.Write(chunk.Data)
	}
	return hex.EncodeToString(h.Sum(nil)), digest
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
