package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	roNamespace = "berth-e2e-ro"
	roBridge    = "berthro0"
	roCluster   = "10.213.236.0/22"
	roSubnet    = "10.213.236.0/24"
)

// loadGen sends requests through the gateway at a steady rate and counts
// them by the version that answered, and failures by kind.
type loadGen struct {
	mu        sync.Mutex
	byVersion map[string]int
	failures  []string
	// window, when set, counts only requests sent while it is open.
	window     map[string]int
	windowOpen bool
	total      atomic.Int64
	stop       chan struct{}
	done       chan struct{}
}

func startLoad(t *testing.T, gw string, rps int) *loadGen {
	l := &loadGen{byVersion: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second / time.Duration(rps))
		defer tick.Stop()
		var wg sync.WaitGroup
		for {
			select {
			case <-l.stop:
				wg.Wait()
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", "http://"+gw+"/", nil)
				req.Host = "hello.example.test"
				resp, err := client.Do(req)
				l.total.Add(1)
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					l.failures = append(l.failures, err.Error())
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var h struct{ Version string }
				json.Unmarshal(body, &h)
				if resp.StatusCode != 200 {
					// 500s from a canary set to fail are the canary's own
					// answers, not lost requests; anything else is a failure.
					if !(resp.StatusCode == 500 && strings.Contains(string(body), "injected failure")) {
						l.failures = append(l.failures, fmt.Sprintf("%d %s", resp.StatusCode, body))
					}
					h.Version = "failing-canary"
				}
				l.byVersion[h.Version]++
				if l.windowOpen {
					l.window[h.Version]++
				}
			}()
		}
	}()
	t.Cleanup(func() { l.finish() })
	return l
}

// startInClusterLoad makes the client container call hello by DNS name
// (http://hello:8080/) rps times a second, through its /call endpoint, and
// counts what failed inside the cluster.
func startInClusterLoad(t *testing.T, clientIP string, rps int) *loadGen {
	l := &loadGen{byVersion: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 15 * time.Second}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second / time.Duration(rps))
		defer tick.Stop()
		var wg sync.WaitGroup
		for {
			select {
			case <-l.stop:
				wg.Wait()
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Get("http://" + clientIP + ":8080/call?url=http://hello:8080/")
				l.total.Add(1)
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					l.failures = append(l.failures, "test -> client: "+err.Error())
					return
				}
				var r callReply
				json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
				var h struct{ Version string }
				json.Unmarshal([]byte(r.Body), &h)
				switch {
				case r.Status == 200:
					l.byVersion[h.Version]++
				case r.Status == 500 && strings.Contains(r.Body, "injected failure"):
					l.byVersion["failing-canary"]++
				default:
					l.failures = append(l.failures, fmt.Sprintf("client -> hello: %d %s %s", r.Status, r.Error, r.Body))
				}
			}()
		}
	}()
	t.Cleanup(func() { l.finish() })
	return l
}

func (l *loadGen) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

func (l *loadGen) openWindow() {
	l.mu.Lock()
	l.window, l.windowOpen = map[string]int{}, true
	l.mu.Unlock()
}

func (l *loadGen) closeWindow() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.windowOpen = false
	return l.window
}

type rolloutView struct {
	Revision      string `json:"revision"`
	Phase         string `json:"phase"`
	Step          int    `json:"step"`
	Weight        int    `json:"weight"`
	StepStartedAt string `json:"stepStartedAt"`
	Message       string `json:"message"`
}

func TestCanaryUnderLoad(t *testing.T) {
	requireContainerd(t)
	stateDir := filepath.Join(os.TempDir(), "berth-e2e-ro-node")
	cleanNode(t, roNamespace, roBridge, roSubnet, roCluster, stateDir, false)
	t.Cleanup(func() {
		cleanNode(t, roNamespace, roBridge, roSubnet, roCluster, stateDir, true)
		os.RemoveAll(stateDir)
	})
	server := startProc(t, "server", "server", "--data-dir", t.TempDir(), "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
		"--dns-addr", "", "--metrics-addr", "", "--ui-addr", "", "--cluster-cidr", roCluster, "--dns-ttl", "1s")
	m := server.waitLine(`api (\S+), xds (\S+),`, 60*time.Second)
	api, xdsAddr := m[1], m[2]
	server.adminConfig(api)
	gwToken, caHash := joinToken(t, api, "gateway")
	gwProc := startProc(t, "gateway", "--server", api, "gateway", "--join-token", gwToken, "--ca-hash", caHash, "--cert-dir", filepath.Join(t.TempDir(), "gw-pki"), "--state-dir", t.TempDir(),
		"--listen", "127.0.0.1:0", "--xds", xdsAddr, "--node-id", "ro-gateway", "--metrics-addr", "")
	gw := gwProc.waitLine(`berth gateway: http://(\S+),`, 30*time.Second)[1]
	token, _ := joinToken(t, api, "node")
	startProc(t, "agent", "--server", api, "agent", "--join-token", token, "--ca-hash", caHash, "--node-name", "ro-node", "--containerd-namespace", roNamespace,
		"--bridge", roBridge, "--state-dir", stateDir, "--metrics-addr", "", "--dns-upstream", "127.0.0.1:9", "--dns-ttl", "1s", "--stop-grace", "5s")
	mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"), filepath.Join(imagesDir, "hello-v2.tar"))

	dir := t.TempDir()
	manifest := func(image, failRate string) string {
		return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: hello}
spec:
  image: %s
  replicas: 4
  env: {FAIL_RATE: "%s"}
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  route: {hosts: [hello.example.test]}
  rollout:
    strategy: canary
    steps: [{weight: 10, pause: 6s}, {weight: 50, pause: promote}, {weight: 100}]
    analysis: {maxErrorRate: 0.05, minRequests: 20}
    canaryHeader: {name: x-berth-canary, value: always}
    sticky: {cookie: user}
`, image, failRate)
	}
	f := filepath.Join(dir, "hello.yaml")
	writeFile(t, f, manifest("berth.local/hello:v1", "0"))
	mustBerth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")
	eventually(t, 15*time.Second, "gateway serving v1", func() (bool, string) {
		req, _ := http.NewRequest("GET", "http://"+gw+"/", nil)
		req.Host = "hello.example.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	status := func() rolloutView {
		out, _, _ := berth(t, api, "rollout", "status", "hello")
		var r rolloutView
		// "default/hello  Progressing  canary r2 vs stable r1  step 1/3  weight [..] 10%/90%"
		fmt.Sscanf(strings.Fields(out + " x x")[1], "%s", &r.Phase)
		if i := strings.Index(out, "] "); i > 0 {
			fmt.Sscanf(out[i+2:], "%d%%", &r.Weight)
		}
		r.Message = out
		return r
	}

	// A client inside the cluster calls hello by its DNS name throughout.
	writeFile(t, filepath.Join(dir, "client.yaml"), readFile(t, filepath.Join(repoRoot, "examples/client.yaml")))
	mustBerth(t, api, "apply", "-f", filepath.Join(dir, "client.yaml"), "--wait", "--timeout", "2m")
	clientIP := readyInstances(instances(t, api, "client"))[0].Status.IP

	load := startLoad(t, gw, 200)
	inCluster := startInClusterLoad(t, clientIP, 20)

	t.Run("canary in three steps, shares follow the weights, 0 failed requests", func(t *testing.T) {
		writeFile(t, f, manifest("berth.local/hello:v2", "0"))
		mustBerth(t, api, "apply", "-f", f)
		// Sticky cohorts: 300 users, each with its cookie, asked at every
		// step; a user on the canary stays there as the weight rises.
		onCanary := map[string]bool{}
		for _, weight := range []int{10, 50} {
			eventually(t, 60*time.Second, fmt.Sprintf("weight %d in effect", weight), func() (bool, string) {
				r := status()
				return r.Weight == weight, r.Message
			})
			eventually(t, 15*time.Second, "every gateway and every node's DNS runs the new weight", func() (bool, string) {
				st := status()
				return regexp.MustCompile(`ro-gateway \(via \S+\): SYNCED`).MatchString(st.Message) && strings.Contains(st.Message, "all gateways run the current weight") &&
					strings.Contains(st.Message, "every node's DNS runs the current weight"), st.Message
			})
			load.openWindow()
			time.Sleep(2 * time.Second)
			w := load.closeWindow()
			total := w["v1"] + w["v2"]
			share := 100 * float64(w["v2"]) / float64(total)
			t.Logf("step at %d%%: %d requests, v2 share %.1f%%", weight, total, share)
			if total < 200 || share < float64(weight)-2 || share > float64(weight)+2 {
				t.Errorf("step %d%%: v2 got %.1f%% of %d requests", weight, share, total)
			}
			canaryUsers := 0
			for u := 0; u < 300; u++ {
				user := fmt.Sprintf("user-%d", u)
				var seen string
				for try := 0; try < 2; try++ {
					req, _ := http.NewRequest("GET", "http://"+gw+"/", nil)
					req.Host = "hello.example.test"
					req.AddCookie(&http.Cookie{Name: "user", Value: user})
					var h helloReply
					if code := getJSON(t, http.DefaultClient, req, &h); code != 200 {
						t.Fatalf("sticky request for %s at %d%%: %d", user, weight, code)
					}
					if seen != "" && h.Version != seen {
						t.Fatalf("%s at %d%%: %s then %s", user, weight, seen, h.Version)
					}
					seen = h.Version
				}
				if seen == "v2" {
					canaryUsers++
				}
				if onCanary[user] && seen != "v2" {
					t.Errorf("%s was on the canary and moved back to stable at %d%%", user, weight)
				}
				onCanary[user] = seen == "v2"
			}
			t.Logf("sticky cohorts at %d%%: %d of 300 users on the canary", weight, canaryUsers)
			if share := 100 * float64(canaryUsers) / 300; share < float64(weight)-6 || share > float64(weight)+6 {
				t.Errorf("sticky cohorts at %d%%: %.1f%% of users on the canary", weight, share)
			}
			// The canary header always selects the canary.
			for i := 0; i < 20; i++ {
				req, _ := http.NewRequest("GET", "http://"+gw+"/", nil)
				req.Host = "hello.example.test"
				req.Header.Set("X-Berth-Canary", "always")
				var h helloReply
				if code := getJSON(t, http.DefaultClient, req, &h); code != 200 || h.Version != "v2" {
					t.Fatalf("request with the canary header at %d%%: %d %+v", weight, code, h)
				}
			}
		}
		// The 50% step waits for promote.
		eventually(t, 30*time.Second, "paused at 50% until promoted", func() (bool, string) {
			r := status()
			return r.Phase == "Paused" && strings.Contains(r.Message, "pause until promoted"), r.Message
		})
		mustBerth(t, api, "rollout", "promote", "hello")
		eventually(t, 60*time.Second, "rollout succeeded", func() (bool, string) {
			r := status()
			return r.Phase == "Succeeded", r.Message
		})
	})

	t.Run("a failing canary is rolled back on its own", func(t *testing.T) {
		writeFile(t, f, manifest("berth.local/hello:v1", "1"))
		// apply --wait follows the rollout to its end: exit 3 on a
		// rollback, with the reason (it used to say "all ready" at once).
		out, errOut, code := berth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")
		if code != 3 || !strings.Contains(errOut, "analysis failed") || !strings.Contains(out, "canary revision") {
			t.Fatalf("apply --wait of a failing canary: exit %d\n%s\n%s", code, out, errOut)
		}
		eventually(t, 60*time.Second, "automatic rollback", func() (bool, string) {
			r := status()
			return r.Phase == "RolledBack", r.Message
		})
		out, _, code = berth(t, api, "rollout", "status", "hello", "--watch")
		if code != 3 || !strings.Contains(out, "analysis failed") {
			t.Fatalf("status --watch after a rollback: exit %d\n%s", code, out)
		}
	})

	t.Run("a slow canary is rolled back on its p99 latency", func(t *testing.T) {
		slow := strings.Replace(manifest("berth.local/hello:v1", "0"), `env: {FAIL_RATE: "0"}`, `env: {FAIL_RATE: "0", DELAY: 400ms}`, 1)
		slow = strings.Replace(slow, "analysis: {maxErrorRate: 0.05, minRequests: 20}", "analysis: {maxErrorRate: 0.05, minRequests: 20, maxLatency: 250ms}", 1)
		writeFile(t, f, slow)
		mustBerth(t, api, "apply", "-f", f)
		out, _, code := berth(t, api, "rollout", "status", "hello", "--watch")
		if code != 3 || !strings.Contains(out, "canary p99 latency") || !strings.Contains(out, "above 250ms") {
			t.Fatalf("status --watch of a slow canary: exit %d\n%s", code, out)
		}
		hist := mustBerth(t, api, "rollout", "history", "hello")
		if !strings.Contains(hist, "[rolled back: analysis failed") {
			t.Fatalf("history does not mark the slow revision:\n%s", hist)
		}
	})

	t.Run("a manual abort", func(t *testing.T) {
		writeFile(t, f, manifest("berth.local/hello:v1", "0"))
		mustBerth(t, api, "apply", "-f", f)
		eventually(t, 60*time.Second, "canary at 10%", func() (bool, string) {
			r := status()
			return r.Weight == 10, r.Message
		})
		mustBerth(t, api, "rollout", "abort", "hello")
		eventually(t, 30*time.Second, "aborted", func() (bool, string) {
			r := status()
			return r.Phase == "Aborted", r.Message
		})
	})

	plain := func(image string, replicas int) string {
		return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: hello}
spec:
  image: %s
  replicas: %d
  env: {FAIL_RATE: "0"}
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  route: {hosts: [hello.example.test]}
`, image, replicas)
	}
	readyCount := func() int { return len(readyInstances(instances(t, api, "hello"))) }
	t.Run("a rolling update (maxSurge 1, maxUnavailable 0, minReady 1s) under load", func(t *testing.T) {
		// First 6 replicas of the current version, then a new image.
		writeFile(t, f, plain("berth.local/hello:v2", 6))
		mustBerth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")
		writeFile(t, f, plain("berth.local/hello:v1", 6)+"  rollout: {strategy: rolling, maxSurge: 1, maxUnavailable: 0, minReady: 1s}\n")
		if out := mustBerth(t, api, "apply", "-f", f); !strings.Contains(out, "configured") {
			t.Fatalf("no new revision: %s", out)
		}
		start := time.Now()
		// Never more than 6+1 replicas exist while it runs.
		peak := 0
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			ivs := instances(t, api, "hello")
			live := 0
			for _, iv := range ivs {
				if iv.Instance.Desired == "running" && !iv.Instance.Draining {
					live++
				}
			}
			peak = max(peak, live)
			if len(ivs) == 6 && readyCount() == 6 && onlyRevision(t, api) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if peak > 7 {
			t.Fatalf("%d replicas at once; maxSurge 1 allows 7", peak)
		}
		if !onlyRevision(t, api) {
			t.Fatal("the rolling update did not finish")
		}
		t.Logf("rolling update of 6 replicas, one at a time, minReady 1s: %s", time.Since(start).Round(100*time.Millisecond))
		eventually(t, 60*time.Second, "only the new revision left", func() (bool, string) {
			ivs := instances(t, api, "hello")
			return len(ivs) == 6 && readyCount() == 6, fmt.Sprint(len(ivs))
		})
		out, _, code := berth(t, api, "rollout", "status", "hello", "--watch")
		if code != 0 || !strings.Contains(out, "Succeeded  rolling") || !strings.Contains(out, "6/6 available") {
			t.Fatalf("status of the finished rolling update: exit %d\n%s", code, out)
		}
	})
	t.Run("a rolling update that never becomes ready is rolled back at its progress deadline", func(t *testing.T) {
		before := mustBerth(t, api, "get", "services")
		bad := strings.Replace(plain("berth.local/hello:v1", 6), "path: /healthz", "path: /never-ready", 1) +
			"  rollout: {strategy: rolling, maxSurge: 1, maxUnavailable: 0, progressDeadline: 5s}\n"
		writeFile(t, f, bad)
		mustBerth(t, api, "apply", "-f", f)
		start := time.Now()
		out, _, code := berth(t, api, "rollout", "status", "hello", "--watch")
		if code != 3 || !strings.Contains(out, "progress deadline 5s exceeded (0/6 new replicas available") {
			t.Fatalf("status --watch of a stalled rolling update: exit %d\n%s", code, out)
		}
		t.Logf("stalled rolling update rolled back after %s", time.Since(start).Round(100*time.Millisecond))
		eventually(t, 60*time.Second, "the good revision serving alone again", func() (bool, string) {
			ivs := instances(t, api, "hello")
			return len(ivs) == 6 && readyCount() == 6 && onlyRevision(t, api), fmt.Sprint(len(ivs))
		})
		if after := mustBerth(t, api, "get", "services"); !strings.Contains(before, "6/6") || !strings.Contains(after, "6/6") {
			t.Fatalf("services before:\n%s\nafter:\n%s", before, after)
		}
		if ev := mustBerth(t, api, "events"); !strings.Contains(ev, "progress deadline 5s exceeded") {
			t.Fatalf("no event for the rollback:\n%s", ev)
		}
	})
	t.Run("a scale-down from 6 to 2 under load", func(t *testing.T) {
		writeFile(t, f, plain("berth.local/hello:v2", 2))
		mustBerth(t, api, "apply", "-f", f)
		eventually(t, 60*time.Second, "2 instances", func() (bool, string) {
			ivs := instances(t, api, "hello")
			return len(ivs) == 2, fmt.Sprint(len(ivs))
		})
	})
	t.Run("rollout undo under load", func(t *testing.T) {
		out := mustBerth(t, api, "rollout", "undo", "hello")
		if !strings.Contains(out, "rolled back") {
			t.Fatalf("undo: %s", out)
		}
		eventually(t, 60*time.Second, "undone revision serving alone", func() (bool, string) {
			ivs := instances(t, api, "hello")
			return len(ivs) == 2 && readyCount() == 2, fmt.Sprint(len(ivs))
		})
		hist := mustBerth(t, api, "rollout", "history", "hello")
		if !strings.Contains(hist, "rollback to revision") {
			t.Fatalf("history:\n%s", hist)
		}
	})

	eventually(t, 30*time.Second, "every drained replica stopped, under load", func() (bool, string) {
		ivs := instances(t, api, "hello")
		return len(ivs) == 2 && len(readyInstances(ivs)) == 2, fmt.Sprint(ivs)
	})
	load.finish()
	inCluster.finish()
	inCluster.mu.Lock()
	t.Logf("in-cluster load by DNS name: %d requests, by version %v, %d failures", inCluster.total.Load(), inCluster.byVersion, len(inCluster.failures))
	if n := len(inCluster.failures); n > 0 {
		t.Errorf("%d failed in-cluster requests (first %d): %v", n, min(n, 10), inCluster.failures[:min(n, 10)])
	}
	inCluster.mu.Unlock()
	load.mu.Lock()
	defer load.mu.Unlock()
	t.Logf("load: %d requests, by version %v, %d failures", load.total.Load(), load.byVersion, len(load.failures))
	if len(load.failures) > 0 {
		n := min(len(load.failures), 10)
		t.Fatalf("%d failed requests (first %d): %v", len(load.failures), n, load.failures[:n])
	}
}

// onlyRevision reports whether every hello instance runs the service's
// current revision.
func onlyRevision(t *testing.T, api string) bool {
	var svcs []struct {
		Service struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Revision string `json:"revision"`
			} `json:"status"`
		} `json:"service"`
	}
	json.Unmarshal([]byte(mustBerth(t, api, "get", "services", "-o", "json")), &svcs)
	current := ""
	for _, s := range svcs {
		if s.Service.Metadata.Name == "hello" {
			current = s.Service.Status.Revision
		}
	}
	if current == "" {
		return false
	}
	var all []ordinalView
	json.Unmarshal([]byte(mustBerth(t, api, "get", "instances", "-o", "json")), &all)
	for _, iv := range all {
		if iv.Instance.Service == "hello" && iv.Instance.Revision != current {
			return false
		}
	}
	return true
}
