package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/miekg/dns"
)

const (
	e2eNamespace = "berth-e2e"
	e2eBridge    = "berthe2e0"
	e2eCluster   = "10.213.240.0/20"
	e2eSubnet    = "10.213.240.0/24"
	e2eBridgeIP  = "10.213.240.1"
)

type helloReply struct {
	Service, Version, Instance, Hostname, Client string
}

type callReply struct {
	URL    string `json:"url"`
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
}

func getJSON(t *testing.T, client *http.Client, req *http.Request, v any) int {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("%s: decode %q: %v", req.URL, body, err)
		}
	}
	return resp.StatusCode
}

func lookupA(t *testing.T, server, name string) (*dns.Msg, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, server)
	return r, err
}

// TestClusterEndToEnd runs the server, an agent and a gateway as separate
// processes and walks through the life of the example services.
func TestClusterEndToEnd(t *testing.T) {
	requireContainerd(t)
	top := t
	stateDir := filepath.Join(os.TempDir(), "berth-e2e-node")
	cleanNode(t, e2eNamespace, e2eBridge, e2eSubnet, e2eCluster, stateDir, false)
	t.Cleanup(func() {
		cleanNode(t, e2eNamespace, e2eBridge, e2eSubnet, e2eCluster, stateDir, true)
		os.RemoveAll(stateDir)
	})

	data := t.TempDir()
	server := startProc(t, "server", "server", "--data-dir", data, "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
		"--dns-addr", "127.0.0.1:0", "--metrics-addr", "", "--ui-addr", "", "--cluster-cidr", e2eCluster, "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9")
	m := server.waitLine(`api (\S+), xds (\S+), dns (\S+),`, 60*time.Second)
	api, xdsAddr, hostDNS := m[1], m[2], m[3]
	server.adminConfig(api)

	gwToken, caHash := joinToken(t, api, "gateway")
	gw := startProc(t, "gateway", "--server", api, "gateway", "--join-token", gwToken, "--ca-hash", caHash, "--cert-dir", filepath.Join(t.TempDir(), "gw-pki"), "--state-dir", t.TempDir(),
		"--listen", "127.0.0.1:0", "--xds", xdsAddr, "--node-id", "e2e-gateway", "--metrics-addr", "")
	gwAddr := gw.waitLine(`berth gateway: http://(\S+),`, 30*time.Second)[1]

	// Agents join with a token; a wrong one is refused with a clear error.
	_, errOut, code := berth(t, api, "agent", "--join-token", "berth-00000000.00000000000000000000000000000000", "--ca-hash", caHash, "--node-name", "intruder", "--containerd-namespace", e2eNamespace,
		"--bridge", e2eBridge, "--state-dir", filepath.Join(t.TempDir(), "intruder"), "--metrics-addr", "")
	if code == 0 || !strings.Contains(errOut, "join token rejected") {
		t.Fatalf("agent with a wrong token: exit %d, stderr %q", code, errOut)
	}
	// Two services on the host, listening on every address: containers
	// may reach the one whose port the agent allows, not the other (a
	// stand-in for the API, xDS, metrics or etcd bound beyond loopback).
	hostService := func() (port string) {
		l, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host service") })}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		_, port, _ = net.SplitHostPort(l.Addr().String())
		return port
	}
	allowedPort, guardedPort := hostService(), hostService()
	token, _ := joinToken(t, api, "node")
	agentArgs := []string{"--server", api, "agent", "--join-token", token, "--ca-hash", caHash, "--node-name", "e2e-node", "--containerd-namespace", e2eNamespace,
		"--bridge", e2eBridge, "--state-dir", stateDir, "--metrics-addr", "", "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9", "--stop-grace", "3s",
		"--container-host-ports", allowedPort}
	agent := startProc(t, "agent", agentArgs...)
	eventually(t, 30*time.Second, "node Ready", func() (bool, string) {
		out, _, _ := berth(t, api, "get", "nodes")
		return strings.Contains(out, "e2e-node") && strings.Contains(out, " Ready "), out
	})

	// Images go to the control plane, which hands them to agents.
	out := mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"))
	if !strings.Contains(out, "berth.local/hello:v1") {
		t.Fatalf("image load: %s", out)
	}

	// Bad manifests are refused with the file, document and field path, and
	// nothing is stored.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: ok}\nspec: {image: x}\n---\napiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  image: x\n  replicas: -1\n  ports: [{name: http, port: 8080, prot: http}]\n"), 0o644)
	_, errOut, code = berth(t, api, "apply", "-f", bad)
	if code == 0 || !strings.Contains(errOut, "bad.yaml") || !strings.Contains(errOut, "document 2") ||
		!strings.Contains(errOut, "spec.ports[0].prot") || !strings.Contains(errOut, "spec.replicas") {
		t.Fatalf("bad manifest: exit %d, stderr %q", code, errOut)
	}
	if out := mustBerth(t, api, "get", "services"); strings.Contains(out, "broken") || strings.Contains(out, " ok ") {
		t.Fatalf("a bad apply stored something:\n%s", out)
	}

	start := time.Now()
	out = mustBerth(t, api, "apply", "-f", "examples/", "--wait", "--timeout", "2m")
	t.Logf("apply -> hello x3 + client ready: %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "service/hello created") || !strings.Contains(out, "service/client created") {
		t.Fatalf("apply: %s", out)
	}
	// What get prints as YAML applies again as a no-op.
	yml := mustBerth(t, api, "get", "services", "hello", "client", "-o", "yaml")
	roundTrip := filepath.Join(t.TempDir(), "get.yaml")
	writeFile(t, roundTrip, yml)
	if out := mustBerth(t, api, "apply", "-f", roundTrip); strings.Count(out, "unchanged") != 2 {
		t.Fatalf("get -o yaml | apply -f - changed something:\n%s\n%s", out, yml)
	}
	if out := mustBerth(t, api, "get", "all", "-l", "app=nothing", "-o", "name"); strings.TrimSpace(out) != "" {
		t.Fatalf("get all with a selector nothing matches: %q", out)
	}
	if out := mustBerth(t, api, "get", "services", "hello", "-o", "name"); strings.TrimSpace(out) != "service/hello" {
		t.Fatalf("get services hello -o name: %q", out)
	}
	hello := readyInstances(instances(t, api, "hello"))
	if len(hello) != 3 {
		t.Fatalf("ready hello instances: %+v", hello)
	}
	ips := map[string]bool{}
	for _, iv := range hello {
		if !strings.HasPrefix(iv.Status.IP, "10.213.240.") || ips[iv.Status.IP] {
			t.Fatalf("instance %s has IP %q: want a distinct address in %s", iv.Instance.ID, iv.Status.IP, e2eSubnet)
		}
		ips[iv.Status.IP] = true
	}

	httpc := &http.Client{Timeout: 5 * time.Second}
	t.Run("gateway spreads 100 requests over all 3 replicas", func(t *testing.T) {
		eventually(t, 15*time.Second, "gateway route", func() (bool, string) {
			req, _ := http.NewRequest("GET", "http://"+gwAddr+"/", nil)
			req.Host = "hello.example.test"
			resp, err := httpc.Do(req)
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			return resp.StatusCode == 200, resp.Status
		})
		seen := map[string]int{}
		for i := 0; i < 100; i++ {
			req, _ := http.NewRequest("GET", "http://"+gwAddr+"/", nil)
			req.Host = "hello.example.test"
			var r helloReply
			if code := getJSON(t, httpc, req, &r); code != 200 {
				t.Fatalf("request %d: status %d", i, code)
			}
			if r.Service != "hello" || r.Version != "v1" {
				t.Fatalf("reply %+v", r)
			}
			seen[r.Instance]++
		}
		if len(seen) != 3 {
			t.Fatalf("requests reached %d instances, want 3: %v", len(seen), seen)
		}
		req, _ := http.NewRequest("GET", "http://"+gwAddr+"/", nil)
		req.Host = "nobody.example.test"
		if code := getJSON(t, httpc, req, nil); code != http.StatusNotFound {
			t.Fatalf("unknown host: status %d, want 404", code)
		}
	})

	t.Run("the gateway shows as synced; an Envoy bootstrap is printed", func(t *testing.T) {
		eventually(t, 10*time.Second, "e2e-gateway SYNCED", func() (bool, string) {
			out := mustBerth(t, api, "get", "gateways")
			return strings.Contains(out, "e2e-gateway") && strings.Contains(out, "SYNCED"), out
		})
		// A real Envoy's certificate: joined once with a gateway token,
		// into the directory the bootstrap names.
		edgeDir := filepath.Join(t.TempDir(), "edge-pki")
		tok, hash := joinToken(t, api, "gateway")
		mustBerth(t, api, "gateway", "envoy-credentials", "--once", "--node-id", "edge-1", "--cert-dir", edgeDir, "--join-token", tok, "--ca-hash", hash)
		for _, f := range []string{"ca.crt", "tls.crt", "tls.key"} {
			if _, err := os.Stat(filepath.Join(edgeDir, f)); err != nil {
				t.Fatalf("envoy-credentials: %v", err)
			}
		}
		out := mustBerth(t, api, "gateway", "envoy-bootstrap", "--xds", xdsAddr, "--node-id", "edge-1", "--cert-dir", edgeDir)
		var boot map[string]any
		if err := json.Unmarshal([]byte(out), &boot); err != nil || boot["node"] == nil || boot["dynamic_resources"] == nil && boot["dynamicResources"] == nil {
			t.Fatalf("envoy bootstrap: %v\n%s", err, out)
		}
		if !strings.Contains(out, filepath.Join(edgeDir, "tls.key")) || !strings.Contains(out, "UpstreamTlsContext") {
			t.Fatalf("envoy bootstrap has no mutual TLS to the control plane:\n%s", out)
		}
	})

	t.Run("DNS answers the ready endpoints on the host and on the bridge", func(t *testing.T) {
		for _, srv := range []string{hostDNS, net.JoinHostPort(e2eBridgeIP, "53")} {
			eventually(t, 10*time.Second, "3 A records from "+srv, func() (bool, string) {
				r, err := lookupA(t, srv, "hello.default.svc.berth.internal")
				if err != nil {
					return false, err.Error()
				}
				got := map[string]bool{}
				for _, rr := range r.Answer {
					if a, ok := rr.(*dns.A); ok {
						got[a.A.String()] = true
					}
				}
				for ip := range ips {
					if !got[ip] {
						return false, r.String()
					}
				}
				return len(got) == 3, r.String()
			})
		}
	})

	client := readyInstances(instances(t, api, "client"))
	if len(client) != 1 {
		t.Fatalf("client instances: %+v", client)
	}
	clientIP := client[0].Status.IP
	t.Run("client container reaches hello by name through Berth DNS", func(t *testing.T) {
		for _, target := range []string{"http://hello:8080/", "http://hello.default.svc.berth.internal:8080/"} {
			req, _ := http.NewRequest("GET", "http://"+clientIP+":8080/call?url="+target, nil)
			var r callReply
			if code := getJSON(t, &http.Client{Timeout: 15 * time.Second}, req, &r); code != 200 || r.Status != 200 {
				t.Fatalf("call %s from the client container: http %d, %+v", target, code, r)
			}
			var h helloReply
			if err := json.Unmarshal([]byte(r.Body), &h); err != nil || h.Service != "hello" {
				t.Fatalf("call %s: body %q", target, r.Body)
			}
		}
		req, _ := http.NewRequest("GET", "http://"+clientIP+":8080/resolv", nil)
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "nameserver "+e2eBridgeIP) || !strings.Contains(string(b), "search default.svc.berth.internal svc.berth.internal berth.internal") {
			t.Fatalf("resolv.conf in the container:\n%s", b)
		}
	})

	t.Run("containers reach the node's DNS and allowed ports, not its other services", func(t *testing.T) {
		call := func(port string) callReply {
			req, _ := http.NewRequest("GET", "http://"+clientIP+":8080/call?url=http://"+e2eBridgeIP+":"+port+"/", nil)
			resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var r callReply
			if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
				t.Fatalf("call %s: %v", port, err)
			}
			return r
		}
		if r := call(allowedPort); r.Status != 200 || r.Body != "host service" {
			t.Fatalf("a container calling a host port the agent allows (--container-host-ports): %+v", r)
		}
		if r := call(guardedPort); r.Status != 0 || !strings.Contains(r.Error, "connection refused") {
			t.Fatalf("a container reached a host service it must not: %+v", r)
		}
		out, err := exec.Command("iptables", "-S", "BERTH-GUARD-"+e2eBridge).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "REJECT") {
			t.Fatalf("the agent's guard chain: %v\n%s", err, out)
		}
	})

	ctrd, err := containerd.New("/run/containerd/containerd.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ctrd.Close()
	cctx := namespaces.WithNamespace(context.Background(), e2eNamespace)

	t.Run("logs, exec and port-forward go through the control plane to the node", func(t *testing.T) {
		id := hello[1].Instance.ID
		// Logs: a service's instances, prefixed; one instance; tail.
		out := mustBerth(t, api, "logs", "hello")
		for _, iv := range hello {
			if !strings.Contains(out, "["+iv.Instance.ID+"] ") || !strings.Contains(out, "listening on :8080") {
				t.Fatalf("logs hello lacks %s's startup line:\n%s", iv.Instance.ID, out)
			}
		}
		out = mustBerth(t, api, "logs", id, "--timestamps", "--tail", "1")
		if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\S+ .*listening on :8080 \(service="hello" instance="` + id + `"\)\n$`).MatchString(out) {
			t.Fatalf("logs %s --timestamps --tail 1: %q", id, out)
		}
		// Exec: output, exit code, stdin, a terminal.
		if out := mustBerth(t, api, "exec", id, "--", "/hello", "echo", "from", "inside"); out != "from inside\n" {
			t.Fatalf("exec echo: %q", out)
		}
		if _, errOut, code := berth(t, api, "exec", "hello", "--", "/hello", "exit", "7"); code != 7 || strings.Contains(errOut, "error") {
			t.Fatalf("exec exit 7: exit %d, stderr %q", code, errOut)
		}
		cmd := exec.Command(berthBin, "--server", api, "--config", readAdminConfig(api), "exec", "-i", id, "--", "/hello", "cat")
		input := strings.Repeat("a line of stdin\n", 5000)
		cmd.Stdin = strings.NewReader(input)
		got, err := cmd.Output()
		if err != nil || string(got) != input {
			t.Fatalf("exec -i cat: %v, %d of %d bytes back", err, len(got), len(input))
		}
		if out := mustBerth(t, api, "exec", "-t", id, "--", "/hello", "tty"); !strings.HasPrefix(out, "tty") {
			t.Fatalf("exec -t: %q", out)
		}
		if _, errOut, code := berth(t, api, "exec", "nonexistent-instance", "--", "/hello", "echo"); code == 0 || !strings.Contains(errOut, "no instance") {
			t.Fatalf("exec in a missing instance: exit %d, %q", code, errOut)
		}
		// Port-forward: a local port carries connections to the container.
		pf := startProc(t, "port-forward", "--server", api, "--config", readAdminConfig(api), "port-forward", id, ":8080")
		m := pf.waitLine(`Forwarding from (127\.0\.0\.1:\d+) ->`, 20*time.Second)
		for i := 0; i < 3; i++ {
			var r helloReply
			req, _ := http.NewRequest("GET", "http://"+m[1]+"/", nil)
			if code := getJSON(t, httpc, req, &r); code != 200 || r.Instance != id {
				t.Fatalf("through port-forward: %d %+v", code, r)
			}
		}
		pf.stop(syscall.SIGINT, 10*time.Second)
	})

	t.Run("a killed container is restarted and ready again", func(t *testing.T) {
		victim := hello[0].Instance.ID
		c, err := ctrd.LoadContainer(cctx, victim)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(cctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Kill(cctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "restart and ready", func() (bool, string) {
			for _, iv := range instances(t, api, "hello") {
				if iv.Instance.ID == victim {
					return iv.Status.Restarts == 1 && iv.Status.Ready, fmt.Sprintf("%+v", iv.Status)
				}
			}
			return false, "instance gone"
		})
		out := mustBerth(t, api, "describe", "service", "hello")
		if !strings.Contains(out, "Restarted") {
			t.Fatalf("no Restarted event in describe:\n%s", out)
		}
		// Each run has its logs: --previous is the killed one's.
		cur := mustBerth(t, api, "logs", victim)
		prev := mustBerth(t, api, "logs", victim, "--previous")
		if strings.Count(cur, "listening on") != 1 || strings.Count(prev, "listening on") != 1 {
			t.Fatalf("logs of the restarted container:\ncurrent: %q\nprevious: %q", cur, prev)
		}
	})

	t.Run("a restarted agent adopts its containers", func(t *testing.T) {
		before := map[string]instanceView{}
		for _, iv := range instances(t, api, "") {
			before[iv.Instance.ID] = iv
		}
		if err := agent.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		// The containers keep running without their agent.
		for id := range before {
			c, err := ctrd.LoadContainer(cctx, id)
			if err != nil {
				t.Fatalf("container %s gone after agent stop: %v", id, err)
			}
			task, err := c.Task(cctx, nil)
			if err != nil {
				t.Fatalf("task %s gone after agent stop: %v", id, err)
			}
			st, _ := task.Status(cctx)
			if st.Status != containerd.Running {
				t.Fatalf("task %s is %s after agent stop", id, st.Status)
			}
		}
		agent = startProc(top, "agent-2", agentArgs...)
		eventually(t, 30*time.Second, "the new agent adopts all 4 containers", func() (bool, string) {
			return strings.Count(agent.logText(), "adopted running container") == 4, agent.logText()
		})
		eventually(t, 20*time.Second, "all instances ready after agent restart", func() (bool, string) {
			now := instances(t, api, "")
			return len(readyInstances(now)) == 4, fmt.Sprintf("%+v", now)
		})
		for _, iv := range instances(t, api, "") {
			b := before[iv.Instance.ID]
			if iv.Status.Restarts != b.Status.Restarts || iv.Status.IP != b.Status.IP || iv.Status.ContainerID != b.Status.ContainerID {
				t.Fatalf("instance %s changed across agent restart: before %+v after %+v", iv.Instance.ID, b.Status, iv.Status)
			}
		}
		list, _ := ctrd.Containers(cctx)
		if len(list) != 4 {
			t.Fatalf("containerd has %d containers after agent restart, want 4", len(list))
		}
	})

	t.Run("a missing image shows its error and is retried with backoff", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "missing.yaml")
		os.WriteFile(f, []byte("apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: missing}\nspec:\n  image: berth.local/does-not-exist:v1\n"), 0o644)
		mustBerth(t, api, "apply", "-f", f)
		var id string
		eventually(t, 30*time.Second, "pull error shown in get instances", func() (bool, string) {
			ivs := instances(t, api, "missing")
			if len(ivs) != 1 {
				return false, fmt.Sprint(ivs)
			}
			id = ivs[0].Instance.ID
			return ivs[0].Status.Phase == "Backoff" && strings.Contains(ivs[0].Status.LastError, "berth.local/does-not-exist:v1"), fmt.Sprintf("%+v", ivs[0].Status)
		})
		out := mustBerth(t, api, "get", "instances")
		if !strings.Contains(out, "does-not-exist") {
			t.Fatalf("get instances does not show the pull error:\n%s", out)
		}
		// Backoff doubles from 1s: within 4 seconds at most 4 attempts.
		attempts := func() int { return strings.Count(agent.logText(), "instance="+id) }
		before := attempts()
		time.Sleep(4 * time.Second)
		if n := attempts() - before; n > 4 || n < 1 {
			t.Fatalf("%d start attempts in 4s: want backoff, not a hot loop or no retry", n)
		}
		mustBerth(t, api, "delete", "service", "missing", "--wait")
	})

	t.Run("a container failing its liveness probe is restarted, saying why", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "unlive.yaml")
		writeFile(t, f, `apiVersion: berth.dev/v1
kind: Service
metadata: {name: unlive}
spec:
  image: berth.local/hello:v1
  ports: [{name: http, port: 8080}, {name: admin, port: 9999}]
  health: {http: {path: /healthz, port: http}}
  liveness: {tcp: {port: admin}, interval: 500ms, timeout: 200ms, failureThreshold: 2, initialDelay: 200ms}
`)
		mustBerth(t, api, "apply", "-f", f)
		eventually(t, 30*time.Second, "a liveness restart", func() (bool, string) {
			ivs := instances(t, api, "unlive")
			if len(ivs) != 1 {
				return false, fmt.Sprint(ivs)
			}
			st := ivs[0].Status
			return st.Restarts >= 1 && strings.Contains(st.LastError, "liveness probe failed 2 times in a row"), fmt.Sprintf("%+v", st)
		})
		if out := mustBerth(t, api, "describe", "service", "unlive"); !strings.Contains(out, "Liveness:    tcp :9999 every 500ms") {
			t.Fatalf("describe does not show the liveness probe:\n%s", out)
		}
		mustBerth(t, api, "delete", "service", "unlive", "--wait")
	})

	t.Run("deleting a service removes its name, its route and its containers", func(t *testing.T) {
		follow := startProc(t, "logs-follow", "--server", api, "--config", readAdminConfig(api), "logs", "-f", "hello")
		follow.waitLine(`listening on :8080`, 20*time.Second)
		out := mustBerth(t, api, "delete", "service", "hello", "--wait")
		if !strings.Contains(out, "all containers stopped") {
			t.Fatalf("delete: %s", out)
		}
		// logs -f saw the containers shut down, and ended with them.
		follow.waitLine(`hello: shutting down`, 20*time.Second)
		select {
		case err := <-follow.done:
			follow.done <- err
			if err != nil {
				t.Fatalf("logs -f: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("logs -f did not end when the service's containers stopped")
		}
		// The logs of the deleted service's containers stay readable.
		if out := mustBerth(t, api, "logs", "hello"); strings.Count(out, "shutting down") < 3 {
			t.Fatalf("logs of a deleted service:\n%s", out)
		}
		if out := mustBerth(t, api, "logs", hello[2].Instance.ID); !strings.Contains(out, "shutting down") {
			t.Fatalf("logs of a gone instance:\n%s", out)
		}
		r, err := lookupA(t, hostDNS, "hello.default.svc.berth.internal")
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Fatalf("after delete: %v %v", r, err)
		}
		eventually(t, 10*time.Second, "route gone", func() (bool, string) {
			req, _ := http.NewRequest("GET", "http://"+gwAddr+"/", nil)
			req.Host = "hello.example.test"
			resp, err := httpc.Do(req)
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusNotFound, resp.Status
		})
		list, err := ctrd.Containers(cctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range list {
			labels, _ := c.Labels(cctx)
			if labels["berth.service"] == "hello" {
				t.Fatalf("container %s of hello still in containerd", c.ID())
			}
		}
	})
}
