package integration

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/internal/testctrd"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"github.com/berth-dev/berth/pki"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// The chaos suite of issue #16: three `berth server` replicas forming a
// three-member embedded etcd on loopback, two agents in network namespaces
// (the multi-node harness of cluster_test.go, on its own bridge and
// addresses so the two never touch each other's network), a gateway on each
// replica's xDS, and constant load: HTTP through the gateways and DNS
// lookups from inside containers (the client service's /resolve, answered
// by its node's DNS). Each fault records the requests sent and failed in
// its window, the time until the control plane accepts a write again, the
// time until another replica leads, and whether every service came back
// with exactly its replicas. The figures are printed as a table at the end.
//
// `make test` runs the short form (faults 1-4); `make chaos` (-chaos-full
// or BERTH_CHAOS=full) adds the gateway restart and a two-minute outage of
// every server, and a node's link cut for longer than the lost grace.

var chaosFullFlag = flag.Bool("chaos-full", false, "TestChaos: every fault of issue #16 (make chaos), not only the short form make test runs")

func chaosFull() bool { return *chaosFullFlag || os.Getenv("BERTH_CHAOS") == "full" }

// chaosRuns says whether fault id runs: BERTH_CHAOS_ONLY (a comma-separated
// list of fault ids, e.g. "7,8") picks some while working on them; else the
// short form's faults always run and the full form's with make chaos.
func chaosRuns(id string, short bool) bool {
	if only := os.Getenv("BERTH_CHAOS_ONLY"); only != "" {
		return slices.Contains(strings.Split(only, ","), id)
	}
	return short || chaosFull()
}

const (
	chHostBridge  = "berthchh0"
	chHostIP      = "10.213.80.1"
	chClusterCIDR = "10.213.96.0/20"
	chNodeBridge  = "berthch0"
	// chLostGrace is longer than the agent outage of fault 4 (10 s) plus
	// the node timeout: a killed agent's node must not be judged Lost.
	chLostGrace   = 15 * time.Second
	chAgentDown   = 10 * time.Second
	chAllDownFull = 2 * time.Minute
	chHelloHost   = "hello.example.test"
	chLookupName  = "hello.default.svc.berth.internal"
	chProbeSvc    = "chaos-probe"
	// chRate is the load: requests a second through the gateways (round
	// robin); DNS lookups from containers go at a tenth of it. A request
	// fails on a transport error, a status other than 200, or no answer
	// within chHTTPTimeout.
	chRate           = 80
	chHTTPTimeout    = 3 * time.Second
	chMaxOutstanding = 10 * chRate
)

// chaosWant is what every check expects: each service's replicas. store
// uses a volume pinned to n2 (chVolumeNode).
var chaosWant = map[string]int{"hello": 4, "client": 2, "store": 1}

// chVolumeNode holds the store's volume; fault 7 cuts its link.
const chVolumeNode = "n2"

// chContainerdDir is the suite's private containerd (short: shim sockets
// live under it). Fixed, so a run takes over what an aborted one left.
const chContainerdDir = "/tmp/berth-chaos-ctrd"

type chaosServer struct {
	name, dataDir, api, xds, peer string
	caFlags, joinFlags            []string
	proc                          *proc
	starts                        int
}

type chaosGateway struct {
	name, listen, xds, token, caHash, certDir, stateDir string
	proc                                                *proc
	starts                                              int
}

type chaosCluster struct {
	t        *testing.T
	ctrdProc *testctrd.Containerd // the agents' containerd, the suite's own (fault 8 restarts it)
	mn       *mnCluster           // nodes, containerd and removeContainers
	servers  []*chaosServer
	gateways []*chaosGateway
	apis     string // every replica's API address, comma-separated
	admin    pb.BerthClient
	conn     *grpc.ClientConn
	token    string
	caHash   string
	agents   map[string]int // agent starts per node
	writes   int
}

// chaosPIDFile lists the processes a run started, so the next run can end
// those an aborted run left behind, by their ids.
var chaosPIDFile = filepath.Join(os.TempDir(), "berth-chaos.pids")

func chaosRecordPID(p *proc) {
	f, err := os.OpenFile(chaosPIDFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	fmt.Fprintln(f, p.cmd.Process.Pid)
	f.Close()
}

// chaosKillLeftovers kills the processes an earlier run recorded that
// still run a berth command line of this suite (they name the host
// bridge's address), and starts a new list.
func chaosKillLeftovers(t *testing.T) {
	b, _ := os.ReadFile(chaosPIDFile)
	for _, line := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(line, &pid); err != nil || pid <= 1 {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmdline), "berth") || !strings.Contains(string(cmdline), chHostIP+":") {
			continue
		}
		t.Logf("killing process %d left by an earlier run: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = os.Remove(chaosPIDFile)
}

func chaosFreePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// chaosRemoveNetwork removes the host bridge, the nodes' namespaces and
// veths (and with the bridge, the routes through it).
func chaosRemoveNetwork(nodes []*mnNode) {
	for _, n := range nodes {
		ipQuiet("netns", "del", n.netns)
		ipQuiet("link", "del", n.veth)
	}
	ipQuiet("link", "del", chHostBridge)
}

// startChaosCluster builds the network, the three servers, the gateways
// and the agents, and applies hello (4 replicas, routed) and client (2).
func startChaosCluster(t *testing.T) *chaosCluster {
	t.Helper()
	// The agents' containerd is the suite's own, so that fault 8 may
	// restart it; started first, its cleanup runs last (after the
	// agents stopped their containers).
	ctrdProc := testctrd.Start(t, chContainerdDir)
	ctrd, err := containerd.New(ctrdProc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	c := &chaosCluster{t: t, ctrdProc: ctrdProc, mn: &mnCluster{t: t, ctrd: ctrd}, agents: map[string]int{}}
	for i := 1; i <= 2; i++ {
		c.mn.nodes = append(c.mn.nodes, &mnNode{
			name: fmt.Sprintf("n%d", i), netns: fmt.Sprintf("berthch-n%d", i), addr: fmt.Sprintf("10.213.80.%d", 10+i),
			veth: fmt.Sprintf("berthchv%d", i), ctrNS: fmt.Sprintf("berth-ch-n%d", i), stateDir: filepath.Join(t.TempDir(), fmt.Sprintf("n%d", i)),
		})
	}
	// Leftovers of an aborted run first: its processes (they outlive a
	// test binary killed with SIGKILL), containers and network.
	chaosKillLeftovers(t)
	for _, n := range c.mn.nodes {
		c.mn.removeContainers(n)
	}
	chaosRemoveNetwork(c.mn.nodes)
	t.Cleanup(func() {
		for _, n := range c.mn.nodes {
			if n.agent != nil {
				n.agent.stop(syscall.SIGTERM, 30*time.Second)
			}
			c.mn.removeContainers(n)
			unmountUnder(n.stateDir) // volumes the agent left mounted
		}
		chaosRemoveNetwork(c.mn.nodes)
		if c.conn != nil {
			c.conn.Close()
		}
		ctrd.Close()
	})
	ip(t, "link", "add", chHostBridge, "type", "bridge")
	ip(t, "addr", "add", chHostIP+"/24", "dev", chHostBridge)
	ip(t, "link", "set", chHostBridge, "up")
	for _, n := range c.mn.nodes {
		ip(t, "netns", "add", n.netns)
		ip(t, "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
		ip(t, "link", "set", n.veth, "master", chHostBridge, "up")
		ip(t, "-n", n.netns, "addr", "add", n.addr+"/24", "dev", "eth0")
		ip(t, "-n", n.netns, "link", "set", "eth0", "up")
		ip(t, "-n", n.netns, "link", "set", "lo", "up")
	}

	// Fixed ports, so a restarted server is where agents, gateways and
	// the other members look for it. The API listens on the host bridge,
	// which the agents in their namespaces reach.
	var apis []string
	for i := 1; i <= 3; i++ {
		s := &chaosServer{name: fmt.Sprintf("s%d", i), dataDir: t.TempDir(), api: chaosFreePort(t, chHostIP),
			xds: chaosFreePort(t, "127.0.0.1"), peer: chaosFreePort(t, "127.0.0.1")}
		c.servers = append(c.servers, s)
		apis = append(apis, s.api)
	}
	c.apis = strings.Join(apis, ",")
	first := c.servers[0]
	c.launchServer(first)
	c.waitServer(first)
	adminPath := first.proc.waitLine(`CLI configuration: ([^\s)]+)`, 30*time.Second)[1]
	for _, s := range c.servers {
		adminConfigs.Store(s.api, adminPath)
	}
	adminConfigs.Store(c.apis, adminPath)
	for i, s := range c.servers[1:] {
		s.caFlags = []string{"--ca-cert", filepath.Join(first.dataDir, "pki", "ca.crt"), "--ca-key", filepath.Join(first.dataDir, "pki", "ca.key"),
			"--secrets-key-file", filepath.Join(first.dataDir, "secrets.key")}
		s.joinFlags = []string{"--join", strings.Join(apis[:i+1], ",")}
		c.launchServer(s)
		c.waitServer(s)
	}
	c.conn, c.admin = chaosAdmin(t, c.apis, adminPath)
	c.waitHealthy(90 * time.Second)

	for _, s := range c.servers {
		tok, hash := joinToken(t, c.apis, "gateway")
		g := &chaosGateway{name: "gw-" + s.name, listen: chaosFreePort(t, "127.0.0.1"), xds: s.xds, token: tok, caHash: hash,
			certDir: filepath.Join(t.TempDir(), "gw-pki"), stateDir: t.TempDir()}
		c.gateways = append(c.gateways, g)
		c.startGateway(g)
	}

	out, errOut, code := berth(t, c.apis, "token", "create", "--role", "node", "--uses", "2")
	if code != 0 {
		t.Fatalf("token create: %s", errOut)
	}
	c.token = strings.TrimSpace(out)
	m := regexp.MustCompile(`--ca-hash (\S+)`).FindStringSubmatch(errOut)
	if m == nil {
		t.Fatalf("token create printed no CA hash: %s", errOut)
	}
	c.caHash = m[1]
	for _, n := range c.mn.nodes {
		c.startAgent(n)
	}
	eventually(t, 60*time.Second, "both nodes Ready", func() (bool, string) {
		out := mustBerth(t, c.apis, "get", "nodes")
		return strings.Count(out, " Ready ") == 2, out
	})
	// The gateways run on the host: give it the routes the agents
	// program among themselves.
	var list []struct {
		Address string `json:"address"`
		PodCidr string `json:"podCidr"`
	}
	if err := json.Unmarshal([]byte(mustBerth(t, c.apis, "get", "nodes", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	for _, n := range list {
		ip(t, "route", "replace", n.PodCidr, "via", n.Address)
	}

	mustBerth(t, c.apis, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"))
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hello.yaml"), strings.Replace(readFile(t, filepath.Join(repoRoot, "examples/hello.yaml")), "replicas: 3", "replicas: 4", 1))
	writeFile(t, filepath.Join(dir, "client.yaml"), strings.Replace(readFile(t, filepath.Join(repoRoot, "examples/client.yaml")), "replicas: 1", "replicas: 2", 1))
	writeFile(t, filepath.Join(dir, "store.yaml"), `apiVersion: berth.dev/v1
kind: Volume
metadata: {name: data}
spec: {size: 10Mi, node: `+chVolumeNode+`}
---
apiVersion: berth.dev/v1
kind: Service
metadata: {name: store}
spec:
  image: berth.local/hello:v1
  env: {DATA_DIR: /data}
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  volumes: [{name: data, mountPath: /data}]
`)
	mustBerth(t, c.apis, "apply", "-f", dir, "--wait", "--timeout", "3m")
	if err := c.write(context.Background()); err != nil {
		t.Fatalf("the first write of %s: %v", chProbeSvc, err)
	}
	eventually(t, 60*time.Second, "every service intact", c.intact)
	return c
}

func chaosAdmin(t *testing.T, apis, adminPath string) (*grpc.ClientConn, pb.BerthClient) {
	t.Helper()
	cfg, err := controlplane.ReadAdminConfig(adminPath)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pki.PoolFromPEM([]byte(cfg.CA))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pb.Dial(apis, pki.ClientTLS(nil, pool), pb.WithToken(cfg.Token)...)
	if err != nil {
		t.Fatal(err)
	}
	return conn, pb.NewBerthClient(conn)
}

// launchServer starts a server process; a restart starts from its data
// dir (no --join).
func (c *chaosCluster) launchServer(s *chaosServer) {
	s.starts++
	name := s.name
	if s.starts > 1 {
		name = fmt.Sprintf("%s-start%d", s.name, s.starts)
	}
	args := []string{"server", "--name", s.name, "--data-dir", s.dataDir, "--api-addr", s.api, "--xds-addr", s.xds,
		"--dns-addr", "", "--metrics-addr", "", "--ui-addr", "", "--cluster-cidr", chClusterCIDR, "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9",
		"--node-timeout", "2s", "--lost-grace", chLostGrace.String(), "--etcd-peer-addr", s.peer}
	args = append(args, s.caFlags...)
	if s.starts == 1 {
		args = append(args, s.joinFlags...)
	}
	s.proc = startProc(c.t, name, args...)
	chaosRecordPID(s.proc)
}

func (c *chaosCluster) waitServer(s *chaosServer) {
	s.proc.waitLine(`berth server: api `, 2*time.Minute)
}

func (c *chaosCluster) kill(s *chaosServer) {
	if err := s.proc.stop(syscall.SIGKILL, 10*time.Second); err != nil {
		c.t.Logf("kill %s: %v", s.name, err)
	}
}

func (c *chaosCluster) alive(s *chaosServer) bool { return s.proc.cmd.ProcessState == nil }

func (c *chaosCluster) server(name string) *chaosServer {
	for _, s := range c.servers {
		if s.name == name {
			return s
		}
	}
	c.t.Fatalf("no server %q", name)
	return nil
}

func (c *chaosCluster) startGateway(g *chaosGateway) {
	g.starts++
	name := g.name
	if g.starts > 1 {
		name = fmt.Sprintf("%s-start%d", g.name, g.starts)
	}
	g.proc = startProc(c.t, name, "--server", c.apis, "gateway", "--join-token", g.token, "--ca-hash", g.caHash, "--cert-dir", g.certDir,
		"--state-dir", g.stateDir, "--listen", g.listen, "--xds", g.xds, "--node-id", g.name, "--metrics-addr", "")
	chaosRecordPID(g.proc)
	g.proc.waitLine(`berth gateway: http://(\S+),`, 30*time.Second)
}

func (c *chaosCluster) startAgent(n *mnNode) { c.startAgentWith(n, nil) }

// startAgentWith starts n's agent in its netns; wrap (nil: none) is a
// command line the agent runs under (a time namespace, fault 11).
func (c *chaosCluster) startAgentWith(n *mnNode, wrap []string) {
	c.agents[n.name]++
	name := "agent-" + n.name
	if k := c.agents[n.name]; k > 1 {
		name = fmt.Sprintf("%s-start%d", name, k)
	}
	args := []string{"--server", c.apis, "agent", "--join-token", c.token, "--ca-hash", c.caHash,
		"--node-name", n.name, "--node-address", n.addr, "--containerd-namespace", n.ctrNS, "--containerd-socket", c.ctrdProc.Socket,
		"--bridge", chNodeBridge, "--state-dir", n.stateDir, "--metrics-addr", "", "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9",
		"--stop-grace", "2s", "--stop-on-exit"}
	cmd := append([]string{"--net=/run/netns/" + n.netns}, wrap...)
	n.agent = startCommand(c.t, name, "nsenter", append(append(cmd, berthBin), args...)...)
	chaosRecordPID(n.agent)
}

func (c *chaosCluster) listServers() (*pb.ListServersResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.admin.ListServers(ctx, &pb.ListServersRequest{})
}

// waitHealthy waits for three healthy voters, three replicas and a leader.
func (c *chaosCluster) waitHealthy(timeout time.Duration) {
	c.t.Helper()
	eventually(c.t, timeout, "three healthy etcd voters, three replicas and a leader", func() (bool, string) {
		l, err := c.listServers()
		if err != nil {
			return false, err.Error()
		}
		return l.GetVoters() == 3 && healthyMembers(l) == 3 && len(l.GetServers()) == 3 && l.GetLeader() != "", l.String()
	})
}

func healthyMembers(l *pb.ListServersResponse) int {
	n := 0
	for _, m := range l.GetMembers() {
		if m.GetHealthy() && !m.GetLearner() {
			n++
		}
	}
	return n
}

// leaders returns the leading replica and the server whose etcd member
// leads raft.
func (c *chaosCluster) leaders() (replica, etcd string) {
	c.t.Helper()
	var l *pb.ListServersResponse
	eventually(c.t, 20*time.Second, "a leader in get servers", func() (bool, string) {
		var err error
		l, err = c.listServers()
		if err != nil {
			return false, err.Error()
		}
		return l.GetLeader() != "", l.String()
	})
	for _, m := range l.GetMembers() {
		if m.GetLeader() {
			etcd = m.GetServer()
		}
	}
	return l.GetLeader(), etcd
}

func electedCount(p *proc) int { return strings.Count(p.logText(), "elected leader") }

// write stores a trivial change: the probe service (no replicas) with a
// new label.
func (c *chaosCluster) write(ctx context.Context) error {
	c.writes++
	_, err := c.admin.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{{
		Metadata: &pb.ObjectMeta{Name: chProbeSvc, Namespace: "default", Labels: map[string]string{"write": fmt.Sprint(c.writes)}},
		Spec:     &pb.ServiceSpec{Image: "berth.local/hello:v1", Replicas: proto.Int32(0)},
	}}})
	return err
}

// untilWrite retries the trivial write until it is accepted and returns
// how long after since that was (and the last error on time-out).
func (c *chaosCluster) untilWrite(since time.Time, timeout time.Duration) (time.Duration, error) {
	var last error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		last = c.write(ctx)
		cancel()
		if last == nil {
			return time.Since(since), nil
		}
	}
	return -1, last
}

// untilLeader waits for a live server to log a new election (one more
// "elected leader" than counted in before) and returns how long after
// since that was.
func (c *chaosCluster) untilLeader(before map[*proc]int, since time.Time, timeout time.Duration) time.Duration {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, s := range c.servers {
			if c.alive(s) && electedCount(s.proc) > before[s.proc] {
				return time.Since(since)
			}
		}
	}
	return -1
}

func (c *chaosCluster) electionCounts() map[*proc]int {
	m := map[*proc]int{}
	for _, s := range c.servers {
		m[s.proc] = electedCount(s.proc)
	}
	return m
}

func (c *chaosCluster) instanceViews() ([]*pb.InstanceView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.admin.ListInstances(ctx, &pb.ListInstancesRequest{Namespace: "default"})
	if err != nil {
		return nil, err
	}
	return resp.GetInstances(), nil
}

// containers lists the berth containers of every node's containerd
// namespace: instance id -> node.
func (c *chaosCluster) containers() (map[string][]string, error) {
	out := map[string][]string{}
	for _, n := range c.mn.nodes {
		ctx := namespaces.WithNamespace(context.Background(), n.ctrNS)
		list, err := c.mn.ctrd.Containers(ctx)
		if err != nil {
			return nil, err
		}
		for _, ctr := range list {
			labels, err := ctr.Labels(ctx)
			if err != nil {
				return nil, err
			}
			if id := labels[runtime.LabelInstance]; id != "" {
				out[id] = append(out[id], n.name)
			}
		}
	}
	return out, nil
}

// intact is the check after every fault: each service has exactly its
// replicas, one live instance per ordinal, ready by its own report (not
// kept by panic routing), no other instance of it left, and each instance
// one container, on its node.
func (c *chaosCluster) intact() (bool, string) {
	ivs, err := c.instanceViews()
	if err != nil {
		return false, err.Error()
	}
	ctrs, err := c.containers()
	if err != nil {
		return false, err.Error()
	}
	var problems []string
	perService := map[string][]*pb.InstanceView{}
	for _, iv := range ivs {
		perService[iv.GetInstance().GetService()] = append(perService[iv.GetInstance().GetService()], iv)
	}
	seen := map[string]bool{}
	for svc, want := range chaosWant {
		ordinals := map[int32]int{}
		for _, iv := range perService[svc] {
			in, st := iv.GetInstance(), iv.GetStatus()
			ordinals[in.GetOrdinal()]++
			switch {
			case in.GetDesired() != "running" || in.GetDraining():
				problems = append(problems, fmt.Sprintf("%s desired %s draining %v", in.GetId(), in.GetDesired(), in.GetDraining()))
			case !st.GetReady() || iv.GetPanicRouting():
				problems = append(problems, fmt.Sprintf("%s on %s not ready (phase %s, panic routing %v)", in.GetId(), in.GetNode(), st.GetPhase(), iv.GetPanicRouting()))
			}
			if got := ctrs[in.GetId()]; len(got) != 1 || got[0] != in.GetNode() {
				problems = append(problems, fmt.Sprintf("%s placed on %s has containers on %v", in.GetId(), in.GetNode(), got))
			}
			seen[in.GetId()] = true
		}
		if len(perService[svc]) != want {
			problems = append(problems, fmt.Sprintf("%s has %d instances, want %d", svc, len(perService[svc]), want))
		}
		for o := int32(0); o < int32(want); o++ {
			if ordinals[o] != 1 {
				problems = append(problems, fmt.Sprintf("%s ordinal %d held by %d instances", svc, o, ordinals[o]))
			}
		}
	}
	if n := len(perService[chProbeSvc]); n != 0 {
		problems = append(problems, fmt.Sprintf("%s (0 replicas) has %d instances", chProbeSvc, n))
	}
	for id, nodes := range ctrs {
		if !seen[id] {
			problems = append(problems, fmt.Sprintf("container of no live instance: %s on %v", id, nodes))
		}
	}
	sort.Strings(problems)
	return len(problems) == 0, strings.Join(problems, "; ")
}

// containerState is what must not change across a fault that replaces
// nothing: each instance's container and restart count.
func (c *chaosCluster) containerState() (map[string]string, error) {
	ivs, err := c.instanceViews()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, iv := range ivs {
		m[iv.GetInstance().GetId()] = fmt.Sprintf("node %s container %s restarts %d", iv.GetInstance().GetNode(), iv.GetStatus().GetContainerId(), iv.GetStatus().GetRestarts())
	}
	return m, nil
}

func diffState(before, after map[string]string) []string {
	var d []string
	for id, b := range before {
		if a, ok := after[id]; !ok {
			d = append(d, id+" gone (was "+b+")")
		} else if a != b {
			d = append(d, id+": "+b+" -> "+a)
		}
	}
	for id, a := range after {
		if _, ok := before[id]; !ok {
			d = append(d, id+" new ("+a+")")
		}
	}
	sort.Strings(d)
	return d
}

// clientTargets lists the client instances' addresses with their nodes,
// for the DNS load.
func (c *chaosCluster) clientTargets() []chaosTarget {
	c.t.Helper()
	var out []chaosTarget
	eventually(c.t, 30*time.Second, "client instances", func() (bool, string) {
		ivs, err := c.instanceViews()
		if err != nil {
			return false, err.Error()
		}
		out = out[:0]
		for _, iv := range ivs {
			if iv.GetInstance().GetService() == "client" && iv.GetStatus().GetReady() && iv.GetStatus().GetIp() != "" {
				out = append(out, chaosTarget{name: "dns via client on " + iv.GetInstance().GetNode(), addr: iv.GetStatus().GetIp() + ":8080"})
			}
		}
		return len(out) == chaosWant["client"], fmt.Sprint(out)
	})
	return out
}

// ---- load ----

// chaosTarget is a gateway (host and service: what the request asks
// for, "" for hello) or a client container.
type chaosTarget struct{ name, addr, host, service string }

type chaosProbe struct {
	at     time.Time
	dns    bool
	target string
	err    string // "" when it succeeded
}

// chaosLoad sends HTTP requests through the gateways (round robin) at a
// constant rate and, at a tenth of it, asks client containers to resolve
// hello (their node's DNS answers). Every probe is recorded.
type chaosLoad struct {
	mu       sync.Mutex
	gateways []chaosTarget
	clients  []chaosTarget
	probes   []chaosProbe
	http     *http.Client
	tr       *http.Transport
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once
	stopped  time.Time
}

func startChaosLoad(gateways, clients []chaosTarget, rate int) *chaosLoad {
	tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
	l := &chaosLoad{gateways: gateways, clients: clients, tr: tr, http: &http.Client{Transport: tr}}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		sem := make(chan struct{}, chMaxOutstanding)
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			l.mu.Lock()
			var gw, cl *chaosTarget
			if len(l.gateways) > 0 {
				gw = &l.gateways[i%len(l.gateways)]
			}
			if i%10 == 0 && len(l.clients) > 0 {
				cl = &l.clients[(i/10)%len(l.clients)]
			}
			g, cli := gw, cl
			var gv, cv chaosTarget
			if g != nil {
				gv = *g
			}
			if cli != nil {
				cv = *cli
			}
			l.mu.Unlock()
			if g != nil {
				l.spawn(sem, func() { l.record(time.Now(), false, gv.name, l.viaGateway(gv)) })
			}
			if cli != nil {
				l.spawn(sem, func() { l.record(time.Now(), true, cv.name, l.lookup(cv.addr)) })
			}
		}
	}()
	return l
}

func (l *chaosLoad) spawn(sem chan struct{}, f func()) {
	select {
	case sem <- struct{}{}:
	default:
		// As many probes outstanding as ten seconds of load: record the
		// overload as a failure rather than queue behind it.
		l.record(time.Now(), false, "load generator", fmt.Sprintf("%d probes outstanding", chMaxOutstanding))
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() { <-sem }()
		f()
	}()
}

func (l *chaosLoad) record(at time.Time, dns bool, target, err string) {
	l.mu.Lock()
	l.probes = append(l.probes, chaosProbe{at: at, dns: dns, target: target, err: err})
	l.mu.Unlock()
}

func (l *chaosLoad) viaGateway(g chaosTarget) string {
	req, _ := http.NewRequest("GET", "http://"+g.addr+"/", nil)
	req.Host, g.service = chHelloHost, cmp.Or(g.service, "hello")
	if g.host != "" {
		req.Host = g.host
	}
	ctx, cancel := context.WithTimeout(context.Background(), chHTTPTimeout)
	defer cancel()
	resp, err := l.http.Do(req.WithContext(ctx))
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var h helloReply
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("status %d: %.80s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &h); err != nil || h.Service != g.service {
		return fmt.Sprintf("body %.80q", body)
	}
	return ""
}

func (l *chaosLoad) lookup(addr string) string {
	req, _ := http.NewRequest("GET", "http://"+addr+"/resolve?name="+chLookupName, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
	defer cancel()
	resp, err := l.http.Do(req.WithContext(ctx))
	if err != nil {
		return "client container: " + err.Error()
	}
	defer resp.Body.Close()
	var r struct {
		Addresses []string `json:"addresses"`
		Error     string   `json:"error"`
	}
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Sprintf("status %d, body %.80q", resp.StatusCode, body)
	}
	if resp.StatusCode != http.StatusOK || len(r.Addresses) == 0 {
		return fmt.Sprintf("status %d: %s", resp.StatusCode, r.Error)
	}
	return ""
}

// setGateways and setClients change the targets; a gateway being
// restarted is taken out first, and its old connections dropped.
func (l *chaosLoad) setGateways(g []chaosTarget) {
	l.mu.Lock()
	l.gateways = g
	l.mu.Unlock()
	l.tr.CloseIdleConnections()
}

func (l *chaosLoad) setClients(cl []chaosTarget) {
	l.mu.Lock()
	l.clients = cl
	l.mu.Unlock()
}

// stop ends the load (once) and waits for the probes in flight.
func (l *chaosLoad) stop() {
	l.once.Do(func() {
		l.cancel()
		l.stopped = time.Now()
		l.wg.Wait()
	})
}

// chaosCount is what the probes started in a window did.
type chaosCount struct {
	sent, failed, dnsSent, dnsFailed int
	errors                           map[string]int // "target: error" -> count
	firstFail, lastFail              time.Time
}

func (l *chaosLoad) count(from, to time.Time, in func(time.Time) bool) chaosCount {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := chaosCount{errors: map[string]int{}}
	for _, p := range l.probes {
		if p.at.Before(from) || !p.at.Before(to) || (in != nil && !in(p.at)) {
			continue
		}
		if p.dns {
			n.dnsSent++
		} else {
			n.sent++
		}
		if p.err != "" {
			if p.dns {
				n.dnsFailed++
			} else {
				n.failed++
			}
			n.errors[p.target+": "+p.err]++
			if n.firstFail.IsZero() || p.at.Before(n.firstFail) {
				n.firstFail = p.at
			}
			if p.at.After(n.lastFail) {
				n.lastFail = p.at
			}
		}
	}
	return n
}

func (n chaosCount) topErrors(k int) string {
	type kv struct {
		e string
		n int
	}
	var all []kv
	for e, c := range n.errors {
		all = append(all, kv{e, c})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].e < all[j].e })
	var out []string
	for i, x := range all {
		if i == k {
			out = append(out, fmt.Sprintf("... %d kinds more", len(all)-k))
			break
		}
		out = append(out, fmt.Sprintf("%dx %s", x.n, x.e))
	}
	return strings.Join(out, "; ")
}

// ---- faults ----

// chaosFault is one row of the table.
type chaosFault struct {
	name     string
	from, to time.Time
	// zero: the table's expectation is that no probe fails in the window.
	zero bool
	// writeDown and leaderChange: <0 when not measured or never reached.
	writeDown, leaderChange time.Duration
	writeFrom               string // what writeDown is measured from
	failedChecks            []string
	count                   chaosCount
	events                  []string
}

// event notes a step of the fault with its time from the window's start.
func (f *chaosFault) event(what string) {
	f.events = append(f.events, fmt.Sprintf("+%.2fs %s", time.Since(f.from).Seconds(), what))
}

// timeline is the fault's steps and when its probes failed.
func (f *chaosFault) timeline() string {
	s := strings.Join(f.events, ", ")
	if !f.count.firstFail.IsZero() {
		s += fmt.Sprintf("; failures from +%.2fs to +%.2fs", f.count.firstFail.Sub(f.from).Seconds(), f.count.lastFail.Sub(f.from).Seconds())
	}
	return s
}

func (f *chaosFault) check(ok bool, format string, args ...any) {
	if !ok {
		f.failedChecks = append(f.failedChecks, fmt.Sprintf(format, args...))
	}
}

func fmtDur(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// TestChaos runs the faults of issue #16 against a three-server control
// plane under constant load and prints the figures. Expectations the
// table of the issue sets (0 failed requests) are asserted per fault.
func TestChaos(t *testing.T) {
	requireContainerd(t)
	began := time.Now()
	c := startChaosCluster(t)
	t.Logf("cluster up in %s", time.Since(began).Round(time.Second))

	var gws []chaosTarget
	for _, g := range c.gateways {
		gws = append(gws, chaosTarget{name: g.name, addr: g.listen})
	}
	eventually(t, 30*time.Second, "hello through every gateway", func() (bool, string) {
		l := &chaosLoad{tr: &http.Transport{}}
		l.http = &http.Client{Transport: l.tr}
		for _, g := range gws {
			if err := l.viaGateway(g); err != "" {
				return false, g.name + ": " + err
			}
		}
		return true, ""
	})
	load := startChaosLoad(gws, c.clientTargets(), chRate)
	// The load ends with this function, before the cleanups stop the
	// processes (the restarted ones' cleanups run before the table's).
	defer load.stop()
	var faults []*chaosFault
	loadStart := time.Now()
	// The table, and the verdict on every fault's figures, even when a
	// step below stops the test.
	t.Cleanup(func() {
		load.stop()
		end := load.stopped
		inFault := func(at time.Time) bool {
			for _, f := range faults {
				if !at.Before(f.from) && at.Before(f.to) {
					return true
				}
			}
			return false
		}
		between := &chaosFault{name: "between faults (steady load)", from: loadStart, to: end, zero: true, writeDown: -1, leaderChange: -1}
		between.count = load.count(loadStart, end, func(at time.Time) bool { return !inFault(at) })
		rows := slices.Clone(faults)
		// By fault number, then name ("2" < "2b" < "10").
		num := func(f *chaosFault) int {
			k := 0
			fmt.Sscanf(f.name, "%d", &k)
			return k
		}
		sort.SliceStable(rows, func(i, j int) bool {
			return num(rows[i]) < num(rows[j]) || num(rows[i]) == num(rows[j]) && rows[i].name < rows[j].name
		})
		rows = append(rows, between)
		var b strings.Builder
		fmt.Fprintf(&b, "chaos figures (%s form; %d req/s through %d gateways, failed: an error, not 200 or no answer in %s; DNS lookups from client containers at a tenth of that):\n",
			map[bool]string{true: "full", false: "short"}[chaosFull()], chRate, len(c.gateways), chHTTPTimeout)
		fmt.Fprintf(&b, "%-58s %7s %7s %8s %8s %22s %13s  %s\n", "fault", "http", "failed", "dns", "failed", "write downtime", "leader change", "checks")
		for _, f := range rows {
			if f != between {
				f.count = load.count(f.from, f.to, nil)
			}
			checks := "ok"
			if len(f.failedChecks) > 0 {
				checks = fmt.Sprintf("%d FAILED", len(f.failedChecks))
			}
			wd := fmtDur(f.writeDown)
			if f.writeFrom != "" && f.writeDown >= 0 {
				wd += " (" + f.writeFrom + ")"
			}
			fmt.Fprintf(&b, "%-58s %7d %7d %8d %8d %22s %13s  %s\n", f.name, f.count.sent, f.count.failed, f.count.dnsSent, f.count.dnsFailed, wd, fmtDur(f.leaderChange), checks)
		}
		fmt.Fprintf(&b, "total %s", time.Since(began).Round(time.Second))
		t.Log(b.String())
		for _, f := range rows {
			if f.zero && (f.count.failed > 0 || f.count.dnsFailed > 0) {
				t.Errorf("%s: %d of %d requests through the gateways and %d of %d DNS lookups from containers failed, want 0 (%s): %s",
					f.name, f.count.failed, f.count.sent, f.count.dnsFailed, f.count.dnsSent, f.timeline(), f.count.topErrors(6))
			} else if f.count.failed > 0 || f.count.dnsFailed > 0 {
				t.Logf("%s (no expectation on failures; %s): %s", f.name, f.timeline(), f.count.topErrors(6))
			}
			for _, msg := range f.failedChecks {
				t.Errorf("%s: %s", f.name, msg)
			}
			if f != between {
				t.Logf("timeline of %s: %s", f.name, f.timeline())
			}
		}
	})

	// steady lets the load run a moment between faults.
	steady := func() { time.Sleep(2 * time.Second) }
	// settle waits until every service is intact again and checks that no
	// container was replaced when none should have been.
	settle := func(f *chaosFault, before map[string]string, timeout time.Duration) {
		var state string
		ok := false
		for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			if ok, state = c.intact(); ok {
				break
			}
		}
		f.check(ok, "services not intact %s after recovery: %s", timeout, state)
		if before != nil {
			after, err := c.containerState()
			f.check(err == nil, "instances after the fault: %v", err)
			if err == nil {
				d := diffState(before, after)
				f.check(len(d) == 0, "containers replaced or restarted (want none): %s", strings.Join(d, "; "))
			}
		}
	}
	begin := func(name string, zero bool) *chaosFault {
		f := &chaosFault{name: name, from: time.Now(), zero: zero, writeDown: -1, leaderChange: -1}
		faults = append(faults, f)
		t.Logf("fault: %s", name)
		return f
	}
	// rejoin restarts a killed server and waits until it and the other two
	// form a healthy three-member etcd again.
	rejoin := func(f *chaosFault, victim *chaosServer) {
		c.launchServer(victim)
		f.event("restarted " + victim.name)
		c.waitServer(victim)
		c.waitHealthy(60 * time.Second)
		f.event("three healthy members")
	}
	// finish waits until every service is intact (settle), lets the load
	// run a moment and closes the fault.
	finish := func(f *chaosFault, before map[string]string) {
		settle(f, before, 30*time.Second)
		f.event("intact")
		steady()
		f.to = time.Now()
	}
	mustState := func() map[string]string {
		s, err := c.containerState()
		if err != nil {
			t.Fatalf("instances: %v", err)
		}
		return s
	}

	// 1: kill -9 a server that neither leads the replicas nor etcd, while
	// idle, and restart it.
	steady()
	if chaosRuns("1", true) {
		replica, etcdLeader := c.leaders()
		var victim *chaosServer
		for _, s := range c.servers {
			if s.name != replica && s.name != etcdLeader {
				victim = s
				break
			}
		}
		if victim == nil { // one server leads both: any other will do
			for _, s := range c.servers {
				if s.name != replica {
					victim = s
					break
				}
			}
		}
		before := mustState()
		f := begin(fmt.Sprintf("1 kill -9 non-leader server %s, restart", victim.name), true)
		killed := time.Now()
		c.kill(victim)
		f.event("killed " + victim.name)
		var err error
		f.writeDown, err = c.untilWrite(killed, 30*time.Second)
		f.check(err == nil, "no write accepted within 30 s of the kill: %v", err)
		steady()
		rejoin(f, victim)
		finish(f, before)
	}

	// 2: kill -9 the leading replica: another leads within a few seconds
	// and writes are accepted again.
	if chaosRuns("2", true) {
		replica, etcdLeader := c.leaders()
		victim := c.server(replica)
		before := mustState()
		f := begin(fmt.Sprintf("2 kill -9 leader replica %s (etcd leader %s)", victim.name, etcdLeader), true)
		counts := c.electionCounts()
		killed := time.Now()
		c.kill(victim)
		f.event("killed " + victim.name)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.leaderChange = c.untilLeader(counts, killed, 30*time.Second)
		}()
		var err error
		f.writeDown, err = c.untilWrite(killed, 30*time.Second)
		f.check(err == nil, "no write accepted within 30 s of the kill: %v", err)
		wg.Wait()
		f.check(f.leaderChange >= 0, "no other replica took the lead within 30 s")
		f.check(f.leaderChange < 10*time.Second, "another replica led only after %s (want a few seconds)", fmtDur(f.leaderChange))
		steady()
		rejoin(f, victim)
		finish(f, before)
	}

	// 2b (full form): kill -9 the server whose etcd member leads raft:
	// writes continue after etcd's re-election.
	if chaosRuns("2b", false) {
		replica, etcdLeader := c.leaders()
		victim := c.server(etcdLeader)
		before := mustState()
		f := begin(fmt.Sprintf("2b kill -9 etcd leader %s (leader replica %s)", victim.name, replica), true)
		counts := c.electionCounts()
		killed := time.Now()
		c.kill(victim)
		f.event("killed " + victim.name)
		var err error
		f.writeDown, err = c.untilWrite(killed, 30*time.Second)
		f.check(err == nil, "no write accepted within 30 s of the kill: %v", err)
		if victim.name == replica {
			f.leaderChange = c.untilLeader(counts, killed, 30*time.Second)
		}
		steady()
		rejoin(f, victim)
		finish(f, before)
	}

	// 3: quorum loss: two of three servers down (the leading replica one
	// of them). The data plane serves; a write fails naming quorum; both
	// back, writes resume.
	if chaosRuns("3", true) {
		replica, _ := c.leaders()
		var victims []*chaosServer
		var survivor *chaosServer
		victims = append(victims, c.server(replica))
		for _, s := range c.servers {
			if s.name != replica {
				if len(victims) < 2 {
					victims = append(victims, s)
				} else {
					survivor = s
				}
			}
		}
		before := mustState()
		f := begin(fmt.Sprintf("3 quorum loss: kill -9 %s and %s, restart", victims[0].name, victims[1].name), true)
		for _, v := range victims {
			c.kill(v)
		}
		f.event("killed " + victims[0].name + " and " + victims[1].name)
		// The survivor notices it has no leader within etcd's election
		// timeout; a write through it then fails, naming quorum.
		var out, errOut string
		code := 0
		eventually(t, 20*time.Second, "a write refused naming quorum", func() (bool, string) {
			out, errOut, code = berth(t, survivor.api, "scale", chProbeSvc, "--replicas", "0")
			return code != 0 && strings.Contains(errOut, "quorum"), fmt.Sprintf("exit %d: %s%s", code, out, errOut)
		})
		t.Logf("write without quorum: exit %d: %s", code, strings.TrimSpace(errOut))
		f.event("a write refused naming quorum")
		// The data plane keeps serving for a while without quorum.
		time.Sleep(8 * time.Second)
		counts := c.electionCounts()
		restarted := time.Now()
		for _, v := range victims {
			c.launchServer(v)
		}
		f.event("restarted both")
		var err error
		f.writeDown, err = c.untilWrite(restarted, 60*time.Second)
		f.writeFrom = "from restart"
		f.check(err == nil, "no write accepted within 60 s of the restart: %v", err)
		f.leaderChange = c.untilLeader(counts, restarted, 30*time.Second)
		for _, v := range victims {
			c.waitServer(v)
		}
		c.waitHealthy(60 * time.Second)
		f.event("three healthy members")
		finish(f, before)
	}

	// 4: kill -9 an agent, restart it after 10 s: its containers keep
	// serving and are adopted, not restarted.
	if chaosRuns("4", true) {
		n := c.mn.node("n1")
		before := mustState()
		onNode := 0
		for _, s := range before {
			if strings.HasPrefix(s, "node n1 ") {
				onNode++
			}
		}
		f := begin(fmt.Sprintf("4 kill -9 agent of n1 (%d containers), restart after %s", onNode, chAgentDown), true)
		if err := n.agent.stop(syscall.SIGKILL, 10*time.Second); err != nil {
			t.Logf("kill agent: %v", err)
		}
		f.event("killed agent-n1")
		time.Sleep(chAgentDown)
		c.startAgent(n)
		f.event("restarted agent-n1")
		adopted := 0
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if adopted = strings.Count(n.agent.logText(), "adopted running container"); adopted >= onNode {
				break
			}
		}
		f.check(adopted == onNode, "the restarted agent adopted %d of its %d containers", adopted, onNode)
		f.event(fmt.Sprintf("%d containers adopted", adopted))
		finish(f, before)
	}

	// restartAgent kills n's agent with SIGKILL, starts it again (under
	// wrap), and waits until it adopted every container it had.
	restartAgent := func(f *chaosFault, n *mnNode, before map[string]string, wrap []string) {
		onNode := 0
		for _, st := range before {
			if strings.HasPrefix(st, "node "+n.name+" ") {
				onNode++
			}
		}
		if err := n.agent.stop(syscall.SIGKILL, 10*time.Second); err != nil {
			t.Logf("kill agent: %v", err)
		}
		f.event("killed agent-" + n.name)
		c.startAgentWith(n, wrap)
		f.event("restarted agent-" + n.name)
		adopted := 0
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if adopted = strings.Count(n.agent.logText(), "adopted running container"); adopted >= onNode {
				break
			}
		}
		f.check(adopted == onNode, "the restarted agent adopted %d of its %d containers", adopted, onNode)
		f.event(fmt.Sprintf("%d of %d containers adopted", adopted, onNode))
	}

	// 8: the agents' containerd killed and restarted under load: containers
	// keep serving, each agent's exit feed is back within a second of
	// containerd's return, and the agents are as idle afterwards as before.
	if chaosRuns("8", false) {
		before := mustState()
		idleBefore := c.agentCPU(10 * time.Second)
		f := begin("8 containerd (the agents') kill -9, restart", true)
		backs := map[string]int{}
		for _, n := range c.mn.nodes {
			backs[n.name] = strings.Count(n.agent.logText(), "task exit stream back")
		}
		c.ctrdProc.Kill()
		f.event("containerd killed")
		c.ctrdProc.Start()
		back := time.Now()
		f.event("containerd answers again")
		for _, n := range c.mn.nodes {
			var took time.Duration = -1
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if strings.Count(n.agent.logText(), "task exit stream back") > backs[n.name] {
					took = time.Since(back)
					break
				}
			}
			f.check(took >= 0 && took < time.Second, "agent-%s's exit feed back %s after containerd answered (want within a second)", n.name, fmtDur(took))
			f.event(fmt.Sprintf("agent-%s resubscribed after %s", n.name, fmtDur(took)))
		}
		settle(f, before, 30*time.Second)
		f.event("intact, no container replaced or restarted")
		idleAfter := c.agentCPU(10 * time.Second)
		for _, n := range c.mn.nodes {
			b, a := idleBefore[n.name], idleAfter[n.name]
			f.event(fmt.Sprintf("agent-%s CPU over 10 s: %s before, %s after", n.name, b, a))
			f.check(a <= 2*b+300*time.Millisecond, "agent-%s used %s of CPU in 10 idle seconds after the restart (%s before)", n.name, a, b)
		}
		steady()
		f.to = time.Now()
	}

	// 9: another tool runs `ip netns add` while containers run (iproute2
	// may bind /run/netns over itself), then an agent restarts: its
	// containers keep serving and are adopted, every service comes back.
	if chaosRuns("9", false) {
		n := c.mn.node("n1")
		before := mustState()
		f := begin("9 ip netns add by another tool, kill -9 agent of n1, restart", true)
		const other = "berthch-othertool"
		ipQuiet("netns", "del", other)
		t.Cleanup(func() { ipQuiet("netns", "del", other) })
		ip(t, "netns", "add", other)
		f.event("ip netns add " + other)
		steady()
		restartAgent(f, n, before, nil)
		settle(f, before, 30*time.Second)
		f.check(!strings.Contains(n.agent.logText(), "unknown FS magic"), "the restarted agent met a hidden netns mount: %s", n.agent.logText())
		f.event("intact")
		ip(t, "netns", "del", other)
		steady()
		f.to = time.Now()
	}

	// 10: kill -9 the leading replica mid-rollout: another leads, and the
	// canary resumes at the same step with the same instances, its pause
	// counted from the step's start (not from the takeover).
	if chaosRuns("10", false) {
		const pause = 20 * time.Second
		manifest := func(image string) string {
			return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: roll}
spec:
  image: %s
  replicas: 2
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  route: {hosts: [roll.example.test]}
  rollout:
    strategy: canary
    steps: [{weight: 25, pause: %s}, {weight: 50, pause: promote}, {weight: 100}]
`, image, pause)
		}
		dir := t.TempDir()
		mf := filepath.Join(dir, "roll.yaml")
		mustBerth(t, c.apis, "image", "load", filepath.Join(imagesDir, "hello-v2.tar"))
		writeFile(t, mf, manifest("berth.local/hello:v1"))
		mustBerth(t, c.apis, "apply", "-f", mf, "--wait", "--timeout", "2m")
		withRoll := slices.Clone(gws)
		for _, g := range c.gateways {
			withRoll = append(withRoll, chaosTarget{name: g.name + " roll", addr: g.listen, host: "roll.example.test", service: "roll"})
		}
		eventually(t, 30*time.Second, "roll through every gateway", func() (bool, string) {
			for _, g := range withRoll[len(gws):] {
				if err := load.viaGateway(g); err != "" {
					return false, g.name + ": " + err
				}
			}
			return true, ""
		})
		load.setGateways(withRoll)
		f := begin("10 kill -9 leader replica mid-rollout (canary at 25%)", true)
		writeFile(t, mf, manifest("berth.local/hello:v2"))
		mustBerth(t, c.apis, "apply", "-f", mf)
		f.event("applied v2")
		status := func() (*pb.Rollout, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			return c.admin.RolloutStatus(ctx, &pb.RolloutRequest{Namespace: "default", Name: "roll"})
		}
		var r1 *pb.Rollout
		eventually(t, 60*time.Second, "the canary at its first step, served by every gateway", func() (bool, string) {
			var err error
			if r1, err = status(); err != nil {
				return false, err.Error()
			}
			return r1.GetStep() == 0 && r1.GetWeight() == 25 && r1.GetCanaryReady() >= 1 && r1.GetWeightSynced(), r1.String()
		})
		f.event(fmt.Sprintf("canary r%d at step %d (%d%%)", r1.GetRevision(), r1.GetStep(), r1.GetWeight()))
		rollIDs := func() []string {
			ivs, err := c.instanceViews()
			if err != nil {
				return []string{err.Error()}
			}
			var ids []string
			for _, iv := range ivs {
				if iv.GetInstance().GetService() == "roll" {
					ids = append(ids, fmt.Sprintf("%s r%d", iv.GetInstance().GetId(), iv.GetInstance().GetRevision()))
				}
			}
			sort.Strings(ids)
			return ids
		}
		ids1 := rollIDs()
		// Into the pause before the kill, so that a pause counted again
		// from the takeover would end well after one counted from the
		// step's start (with a takeover of 2-3 s they would be close).
		time.Sleep(pause / 2)
		replica, _ := c.leaders()
		victim := c.server(replica)
		counts := c.electionCounts()
		killed := time.Now()
		c.kill(victim)
		f.event("killed leader replica " + victim.name)
		f.leaderChange = c.untilLeader(counts, killed, 30*time.Second)
		f.check(f.leaderChange >= 0 && f.leaderChange < 10*time.Second, "another replica led after %s (want a few seconds)", fmtDur(f.leaderChange))
		f.event("another replica leads")
		led := time.Now()
		var r2 *pb.Rollout
		eventually(t, 20*time.Second, "the rollout's status after the takeover", func() (bool, string) {
			var err error
			r2, err = status()
			return err == nil, fmt.Sprint(err)
		})
		f.check(r2.GetRevision() == r1.GetRevision() && r2.GetStable() == r1.GetStable(), "rollout revision %d (stable %d) after the takeover, was %d (stable %d)", r2.GetRevision(), r2.GetStable(), r1.GetRevision(), r1.GetStable())
		f.check(r2.GetStep() == r1.GetStep() && r2.GetStepStartedAt().AsTime().Equal(r1.GetStepStartedAt().AsTime()),
			"rollout at step %d started %s after the takeover, was step %d started %s", r2.GetStep(), r2.GetStepStartedAt().AsTime(), r1.GetStep(), r1.GetStepStartedAt().AsTime())
		ids2 := rollIDs()
		f.check(slices.Equal(ids1, ids2), "roll's instances changed across the takeover: %v -> %v", ids1, ids2)
		eventually(t, 60*time.Second, "the canary's second step (pause until promoted)", func() (bool, string) {
			r, err := status()
			if err != nil {
				return false, err.Error()
			}
			return r.GetStep() == 1 && r.GetWeight() == 50, r.String()
		})
		stepped := time.Now()
		f.event("step 2 (50%) reached")
		// The pause counts from the step's start: restarted at the
		// takeover (half a pause in), it would end a whole pause after it.
		f.check(stepped.Before(led.Add(pause*3/4)), "the second step came %s after the takeover: the %s pause restarted", stepped.Sub(led).Round(100*time.Millisecond), pause)
		f.check(slices.Equal(ids1, rollIDs()), "roll's instances changed before the promotion: %v -> %v", ids1, rollIDs())
		// Back before the promotion (uploads are copied to every replica,
		// so the second canary replica's image does not need it).
		rejoin(f, victim)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.admin.RolloutAction(ctx, &pb.RolloutActionRequest{Namespace: "default", Name: "roll", Action: "promote", Full: true})
		cancel()
		f.check(err == nil, "promote: %v", err)
		eventually(t, 90*time.Second, "the rollout succeeded", func() (bool, string) {
			r, err := status()
			if err != nil {
				return false, err.Error()
			}
			return r.GetPhase() == "Succeeded", r.String()
		})
		f.event("rollout succeeded")
		steady()
		f.to = time.Now()
		load.setGateways(gws)
		time.Sleep(chHTTPTimeout) // roll's requests in flight end
		mustBerth(t, c.apis, "delete", "service", "roll", "--wait")
		settle(f, nil, 30*time.Second)
	}

	// 11: an agent restarted in a time namespace whose monotonic and boot
	// clocks are a day ahead of the host's (the one clock that can jump
	// for one node's processes on one machine: CLOCK_REALTIME has no
	// namespace). Liveness is judged on the servers' clocks only, so the
	// node is not lost and nothing is replaced.
	if chaosRuns("11", false) {
		n := c.mn.node("n1")
		before := mustState()
		f := begin("11 agent of n1 restarted with clocks a day ahead (time namespace)", true)
		restartAgent(f, n, before, []string{"unshare", "--time", "--fork", "--kill-child", "--monotonic", "86400", "--boottime", "86400"})
		offsets := agentTimeOffsets(n.agent.cmd.Process.Pid)
		f.check(regexp.MustCompile(`monotonic\s+86400\s`).MatchString(offsets), "the agent's time namespace offsets: %q", offsets)
		f.event("agent clock offsets: " + strings.Join(strings.Fields(offsets), " "))
		// Longer than the lost grace: a node judged by its own clocks would
		// have been lost by now.
		lost := false
		for end := time.Now().Add(chLostGrace + 5*time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			out, _, _ := berth(t, c.apis, "get", "nodes")
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, n.name+" ") && (strings.Contains(l, " Lost ") || strings.Contains(l, " NotReady ")) {
					lost = true
					f.event("node state: " + strings.Join(strings.Fields(l), " "))
				}
			}
			if lost {
				break
			}
		}
		f.check(!lost, "%s went NotReady or Lost with its agent's clocks ahead", n.name)
		settle(f, before, 30*time.Second)
		f.event("intact")
		restartAgent(f, n, before, nil) // back to the host's clocks
		settle(f, before, 30*time.Second)
		steady()
		f.to = time.Now()
	}

	// 5 and 6: every server down for two minutes; meanwhile a gateway is
	// restarted and serves its saved configuration.
	if chaosRuns("6", false) {
		before := mustState()
		f6 := begin(fmt.Sprintf("6 all servers down %s, then back", chAllDownFull), true)
		down := time.Now()
		for _, s := range c.servers {
			c.kill(s)
		}
		f6.event("killed s1, s2 and s3")
		steady()
		g := c.gateways[0]
		var others []chaosTarget
		for _, x := range gws {
			if x.name != g.name {
				others = append(others, x)
			}
		}
		load.setGateways(others)
		time.Sleep(500 * time.Millisecond) // its requests in flight end
		if err := g.proc.stop(syscall.SIGKILL, 10*time.Second); err != nil {
			t.Logf("kill %s: %v", g.name, err)
		}
		f6.event("killed " + g.name)
		c.startGateway(g)
		f6.event(g.name + " listening again")
		f5 := begin(fmt.Sprintf("5 %s restarted, all servers down", g.name), true)
		f5.event(g.name + " listening again, back in the load")
		load.setGateways(gws)
		time.Sleep(15 * time.Second)
		f5.to = time.Now()
		f5.check(strings.Contains(g.proc.logText(), "serving the saved configuration"), "the restarted gateway did not log that it serves its saved configuration")
		time.Sleep(time.Until(down.Add(chAllDownFull)))
		counts := c.electionCounts()
		restarted := time.Now()
		for _, s := range c.servers {
			c.launchServer(s)
		}
		f6.event("restarted s1, s2 and s3")
		var err error
		f6.writeDown, err = c.untilWrite(restarted, 90*time.Second)
		f6.writeFrom = "from restart"
		f6.check(err == nil, "no write accepted within 90 s of the restart: %v", err)
		f6.leaderChange = c.untilLeader(counts, restarted, 60*time.Second)
		for _, s := range c.servers {
			c.waitServer(s)
		}
		c.waitHealthy(60 * time.Second)
		f6.event("three healthy members")
		// The nodes' grace and the lost grace pass: nothing may be
		// replaced for the control plane's own absence.
		time.Sleep(chLostGrace + 5*time.Second)
		settle(f6, before, 30*time.Second)
		f6.event("intact")
		steady()
		f6.to = time.Now()
	}

	// 7: the link of the node holding store's volume cut for longer than
	// the lost grace: its instances run elsewhere, but store waits for its
	// node (its volume is pinned there) and never runs on two nodes;
	// healed, the node's stale containers are stopped before anything new
	// starts there (fencing).
	if chaosRuns("7", false) {
		n := c.mn.node(chVolumeNode)
		f := begin(fmt.Sprintf("7 %s's link cut > lost grace (%s), healed (store's volume there)", n.name, chLostGrace), false)
		var keep []chaosTarget
		for _, cl := range c.clientTargets() {
			if !strings.HasSuffix(cl.name, " "+n.name) {
				keep = append(keep, cl)
			}
		}
		load.setClients(keep) // n's client cannot be reached from here
		stale, err := c.runningTasks(n)
		f.check(err == nil && slices.Contains(slices.Collect(maps.Values(stale)), "store"), "store is not running on %s before the cut: %v %v", n.name, stale, err)
		watch := c.watchVolume(f, n, stale)
		cut := time.Now()
		ip(t, "link", "set", n.veth, "down")
		f.event(n.name + "'s link down")
		replaced := false
		var state string
		for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			ivs, err := c.instanceViews()
			if err != nil {
				state = err.Error()
				continue
			}
			onN, ready, storeAt := 0, 0, []string{}
			for _, iv := range ivs {
				in := iv.GetInstance()
				switch {
				case in.GetService() == "store":
					storeAt = append(storeAt, in.GetNode())
				case in.GetNode() == n.name:
					onN++
				case iv.GetStatus().GetReady() && in.GetService() != chProbeSvc:
					ready++
				}
			}
			state = fmt.Sprintf("%d instances on %s, %d ready elsewhere, store placed on %q", onN, n.name, ready, storeAt)
			// store's replacement waits for the volume's node.
			if onN == 0 && ready == chaosWant["hello"]+chaosWant["client"] && len(storeAt) == 1 && storeAt[0] == "" {
				replaced = true
				break
			}
		}
		f.check(replaced, "%s's instances not replaced elsewhere (store waiting unplaced) within 90 s of the cut: %s", n.name, state)
		f.event("replaced elsewhere; store waits for its volume's node")
		t.Logf("%s cut: replaced after %s", n.name, time.Since(cut).Round(100*time.Millisecond))
		ip(t, "link", "set", n.veth, "up")
		f.event(n.name + "'s link up")
		healed := time.Now()
		stopped := false
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if stopped = watch.staleGone(); stopped {
				break
			}
		}
		f.check(stopped, "%s's stale containers not stopped within 60 s of the heal", n.name)
		f.event(fmt.Sprintf("%s's stale containers stopped (%s after the heal)", n.name, time.Since(healed).Round(10*time.Millisecond)))
		eventually(t, 60*time.Second, n.name+" Ready again", func() (bool, string) {
			out := mustBerth(t, c.apis, "get", "nodes")
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, n.name+" ") {
					return strings.Contains(l, " Ready "), l
				}
			}
			return false, out
		})
		settle(f, nil, 60*time.Second)
		f.event("intact")
		watch.stop()
		f.event(watch.summary())
		load.setClients(c.clientTargets())
		steady()
		f.to = time.Now()
	}
}

// runningTasks lists n's containers whose task runs: container id -> its
// service.
func (c *chaosCluster) runningTasks(n *mnNode) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), n.ctrNS), 5*time.Second)
	defer cancel()
	list, err := c.mn.ctrd.Containers(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, ctr := range list {
		task, err := ctr.Task(ctx, nil)
		if err != nil {
			continue // no task
		}
		st, err := task.Status(ctx)
		if err != nil || st.Status != containerd.Running {
			continue
		}
		labels, err := ctr.Labels(ctx)
		if err != nil {
			continue
		}
		out[ctr.ID()] = labels[runtime.LabelService]
	}
	return out, nil
}

// volumeWatch samples every node's running containers five times a
// second: store (the volume's only consumer) must never run on two nodes,
// and on the watched node no container that was not running at the cut
// (stale) may run while a stale one still does (fencing).
type volumeWatch struct {
	f          *chaosFault
	node       string
	mu         sync.Mutex
	samples    int
	storeTwice []string
	unfenced   []string
	staleLeft  int
	done       chan struct{}
	finished   chan struct{}
	once       sync.Once
}

func (c *chaosCluster) watchVolume(f *chaosFault, n *mnNode, stale map[string]string) *volumeWatch {
	w := &volumeWatch{f: f, node: n.name, done: make(chan struct{}), finished: make(chan struct{}), staleLeft: len(stale)}
	go func() {
		defer close(w.finished)
		for {
			select {
			case <-w.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			var storeOn, staleRun, newRun []string
			ok := true
			for _, m := range c.mn.nodes {
				run, err := c.runningTasks(m)
				if err != nil {
					ok = false
					break
				}
				for id, svc := range run {
					if svc == "store" {
						storeOn = append(storeOn, m.name)
					}
					if m == n {
						if _, was := stale[id]; was {
							staleRun = append(staleRun, id)
						} else {
							newRun = append(newRun, id)
						}
					}
				}
			}
			if !ok {
				continue
			}
			at := time.Since(f.from).Seconds()
			w.mu.Lock()
			w.samples++
			if len(storeOn) > 1 {
				w.storeTwice = append(w.storeTwice, fmt.Sprintf("+%.2fs store running on %v", at, storeOn))
			}
			if len(staleRun) > 0 && len(newRun) > 0 {
				w.unfenced = append(w.unfenced, fmt.Sprintf("+%.2fs %v ran on %s while stale %v still did", at, newRun, n.name, staleRun))
			}
			w.staleLeft = len(staleRun)
			w.mu.Unlock()
		}
	}()
	c.t.Cleanup(w.stop)
	return w
}

// staleGone says whether the last sample found none of the stale
// containers running.
func (w *volumeWatch) staleGone() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samples > 0 && w.staleLeft == 0
}

// stop ends the sampling and records its verdicts on the fault.
func (w *volumeWatch) stop() {
	w.once.Do(func() {
		close(w.done)
		<-w.finished
		w.mu.Lock()
		defer w.mu.Unlock()
		w.f.check(w.samples > 10, "the volume watch took only %d samples", w.samples)
		w.f.check(len(w.storeTwice) == 0, "store (its volume pinned to %s) ran on two nodes: %s", w.node, strings.Join(w.storeTwice, "; "))
		w.f.check(len(w.unfenced) == 0, "fencing: new containers ran beside stale ones: %s", strings.Join(w.unfenced, "; "))
	})
}

func (w *volumeWatch) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("volume watch: %d samples, store on two nodes %d times, unfenced %d times", w.samples, len(w.storeTwice), len(w.unfenced))
}

// agentCPU measures each agent's CPU time (user and system, from
// /proc/<pid>/stat) over d.
func (c *chaosCluster) agentCPU(d time.Duration) map[string]time.Duration {
	ticks := func(pid int) int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0
		}
		// Fields after the command (which may hold spaces) end with ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		var u, s int64
		if len(f) > 12 {
			fmt.Sscan(f[11], &u)
			fmt.Sscan(f[12], &s)
		}
		return u + s
	}
	start := map[string]int64{}
	for _, n := range c.mn.nodes {
		start[n.name] = ticks(n.agent.cmd.Process.Pid)
	}
	time.Sleep(d)
	out := map[string]time.Duration{}
	for _, n := range c.mn.nodes {
		out[n.name] = time.Duration(ticks(n.agent.cmd.Process.Pid)-start[n.name]) * 10 * time.Millisecond // USER_HZ 100
	}
	return out
}

// agentTimeOffsets reads the time namespace offsets of the berth process
// under the unshare process pid.
func agentTimeOffsets(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, child := range strings.Fields(string(b)) {
		if off, err := os.ReadFile("/proc/" + child + "/timens_offsets"); err == nil {
			return string(off)
		}
	}
	return "(no child of " + fmt.Sprint(pid) + ")"
}

// unmountUnder unmounts every mount point under dir, innermost first.
func unmountUnder(dir string) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var under []string
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			under = append(under, f[4])
		}
	}
	for i := len(under) - 1; i >= 0; i-- {
		_ = syscall.Unmount(under[i], syscall.MNT_DETACH)
	}
}
