package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"sigs.k8s.io/yaml"
)

const (
	metNamespace = "berth-e2e-metrics"
	metBridge    = "berthmet0"
	metCluster   = "10.213.112.0/20"
	metSubnet    = "10.213.112.0/24"
)

// TestGrafanaDashboardAndAlertsQueryRealMetrics runs `berth dev` with a
// service in a canary and traffic through the gateway and DNS, then
// checks that every metric the Grafana dashboard (deploy/grafana) and the
// alerting rules (deploy/prometheus) query exists in its /metrics, parsing
// each expression with Prometheus' own parser (bin/promql-names) and
// loading the rules as Prometheus does. It also
// checks /healthz and /readyz, and that a deleted service's series go.
func TestGrafanaDashboardAndAlertsQueryRealMetrics(t *testing.T) {
	requireContainerd(t)
	promqlNames := filepath.Join(repoRoot, "bin", "promql-names")
	if _, err := os.Stat(promqlNames); err != nil {
		t.Fatalf("%s missing (make promql-names installs it): %v", promqlNames, err)
	}
	// The rules load in Prometheus (rulefmt: fields, durations, label
	// names, templates, expressions), and what the dashboard and the rules
	// query parses: a broken file fails before anything starts.
	rulesFile := filepath.Join(repoRoot, "deploy/prometheus/alerts.yml")
	if out, err := exec.Command(promqlNames, "-rules", rulesFile).CombinedOutput(); err != nil {
		t.Fatalf("%s does not load in Prometheus: %v\n%s", rulesFile, err, out)
	}
	exprs := dashboardExprs(t, filepath.Join(repoRoot, "deploy/grafana/berth.json"))
	exprs = append(exprs, alertExprs(t, rulesFile)...)
	wanted := queriedNames(t, promqlNames, exprs)

	data := t.TempDir()
	stateDir := filepath.Join(data, "node")
	cleanNode(t, metNamespace, metBridge, metSubnet, metCluster, stateDir, false)
	t.Cleanup(func() { cleanNode(t, metNamespace, metBridge, metSubnet, metCluster, stateDir, true) })
	dev := startProc(t, "dev", "dev", "--data-dir", data, "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0",
		"--gateway-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ui-addr", "", "--cluster-cidr", metCluster, "--containerd-namespace", metNamespace,
		"--bridge", metBridge, "--node-name", "metrics-node", "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9", "--stop-grace", "3s")
	api := dev.waitLine(`^\s+api\s+(\S+)`, 60*time.Second)[1]
	dev.adminConfig(api)
	gw := dev.waitLine(`^\s+gateway\s+http://(\S+)`, 5*time.Second)[1]
	hostDNS := dev.waitLine(`^\s+dns\s+(\S+) \(host\)`, 5*time.Second)[1]
	metrics := dev.waitLine(`^\s+metrics\s+(\S+)`, 5*time.Second)[1]
	base := strings.TrimSuffix(metrics, "/metrics")

	// /healthz answers at once; /readyz once the control plane, gateway
	// and agent are ready (berth dev printed its addresses after the
	// agent's first assignments).
	if code, body := httpGet(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %q", code, body)
	}
	eventually(t, 30*time.Second, "/readyz ready", func() (bool, string) {
		code, body := httpGet(t, base+"/readyz")
		return code == 200 && strings.Contains(body, "ok control plane") && strings.Contains(body, "ok agent") && strings.Contains(body, "ok gateway"), fmt.Sprint(code, " ", body)
	})

	mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"), filepath.Join(imagesDir, "hello-v2.tar"))
	dir := t.TempDir()
	manifest := func(image string) string {
		return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: hello}
spec:
  image: %s
  replicas: 2
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  route: {hosts: [hello.example.test]}
  rollout:
    strategy: canary
    steps: [{weight: 10, pause: promote}, {weight: 100}]
`, image)
	}
	f := filepath.Join(dir, "hello.yaml")
	writeFile(t, f, manifest("berth.local/hello:v1"))
	mustBerth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")
	writeFile(t, filepath.Join(dir, "client.yaml"), readFile(t, filepath.Join(repoRoot, "examples/client.yaml")))
	mustBerth(t, api, "apply", "-f", filepath.Join(dir, "client.yaml"), "--wait", "--timeout", "2m")
	// v2 as a canary that waits for promote at 10%: rollout phase, step
	// and weight series exist.
	writeFile(t, f, manifest("berth.local/hello:v2"))
	mustBerth(t, api, "apply", "-f", f)

	// Traffic through the gateway (200s, and a 404) and a DNS query.
	eventually(t, 60*time.Second, "requests through the gateway", func() (bool, string) {
		ok := 0
		for range 20 {
			req, _ := http.NewRequest("GET", "http://"+gw+"/", nil)
			req.Host = "hello.example.test"
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				ok++
			}
		}
		return ok == 20, fmt.Sprintf("%d of 20 answered 200", ok)
	})
	if code, _ := httpGet(t, "http://"+gw+"/nowhere"); code != 404 { // Host is the gateway's address: no route
		t.Errorf("a request matching no route: %d, want 404", code)
	}
	m := new(dns.Msg)
	m.SetQuestion("hello.default.svc.berth.internal.", dns.TypeA)
	if _, err := dns.Exchange(m, hostDNS); err != nil {
		t.Errorf("DNS query to %s: %v", hostDNS, err)
	}

	var missing []string
	eventually(t, 60*time.Second, "every queried metric in /metrics", func() (bool, string) {
		exported := exportedNames(t, metrics)
		missing = missing[:0]
		for _, n := range wanted {
			if !exported[n] {
				missing = append(missing, n)
			}
		}
		return len(missing) == 0, fmt.Sprint("missing: ", missing)
	})
	// The canary waits for promote at its first step, 10%: Progressing
	// until the step is in place, then Paused.
	eventually(t, 60*time.Second, "the canary's series", func() (bool, string) {
		body := scrape(t, metrics)
		if !strings.Contains(body, `berth_rollout_phase{namespace="default",phase="Progressing",service="hello",strategy="canary"} 1`) &&
			!strings.Contains(body, `berth_rollout_phase{namespace="default",phase="Paused",service="hello",strategy="canary"} 1`) {
			return false, "hello's rollout neither Progressing nor Paused"
		}
		for _, series := range []string{
			`berth_rollout_phase{namespace="default",phase="RolledBack",service="hello",strategy="canary"} 0`,
			`berth_rollout_step{namespace="default",service="hello"} 0`,
			`berth_rollout_canary_weight_ratio{namespace="default",service="hello"} 0.1`,
			`berth_service_replicas_desired{namespace="default",service="client"} 1`,
			`berth_service_replicas_ready{namespace="default",service="client"} 1`,
		} {
			if !strings.Contains(body, series) {
				var rollout []string
				for _, l := range strings.Split(body, "\n") {
					if strings.HasPrefix(l, "berth_rollout") || strings.HasPrefix(l, "berth_service_") {
						rollout = append(rollout, l)
					}
				}
				return false, "lacks " + series + "; has:\n" + strings.Join(rollout, "\n")
			}
		}
		return true, ""
	})
	body := scrape(t, metrics)
	if !regexp.MustCompile(`berth_gateway_requests_total\{cluster="default_hello_r1",code="200",route="default_hello"\} [1-9]`).MatchString(body) {
		t.Error("/metrics lacks hello's 200s by their real code")
	}

	// A deleted service's series go: the control plane's and the agent's.
	mustBerth(t, api, "delete", "service", "client")
	eventually(t, 60*time.Second, "client's series gone", func() (bool, string) {
		var left []string
		for _, l := range strings.Split(scrape(t, metrics), "\n") {
			if strings.Contains(l, `service="client"`) {
				left = append(left, l)
			}
		}
		return len(left) == 0, strings.Join(left, "\n")
	})
}

// dashboardExprs are the PromQL expressions of every panel (rows'
// panels too) and the metric selectors of the templating queries.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	var d struct {
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(readFile(t, path)), &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q queries nothing", p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
				}
				out = append(out, grafanaVars(tg.Expr))
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("templating %s: %v", v.Name, err)
		}
		sm := labelValues.FindStringSubmatch(q.Query)
		if sm == nil {
			t.Fatalf("templating %s: %q is not label_values(selector, label)", v.Name, q.Query)
		}
		out = append(out, grafanaVars(sm[1]))
	}
	if len(out) < 20 {
		t.Fatalf("%s: only %d expressions", path, len(out))
	}
	return out
}

type grafanaPanel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

// grafanaVars replaces Grafana's range variables by a duration, as
// Grafana does before it sends a query (the others sit in label values,
// where PromQL takes any string).
func grafanaVars(expr string) string {
	return strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h").Replace(expr)
}

// alertExprs are the expressions of every alerting rule.
func alertExprs(t *testing.T, path string) []string {
	t.Helper()
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert string `json:"alert"`
				Expr  string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, path)), &rules); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: group %s has a rule without alert or expr", path, g.Name)
			}
			out = append(out, r.Expr)
		}
	}
	if len(out) < 5 {
		t.Fatalf("%s: only %d rules", path, len(out))
	}
	return out
}

// queriedNames parses exprs with bin/promql-names and returns every
// metric name they select.
func queriedNames(t *testing.T, tool string, exprs []string) []string {
	t.Helper()
	in, _ := json.Marshal(exprs)
	cmd := exec.Command(tool)
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("promql-names: %v", err)
	}
	var res []struct {
		Names []string `json:"names"`
		Error string   `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(exprs) {
		t.Fatalf("promql-names answered %d results for %d expressions (%v): %s", len(res), len(exprs), err, out)
	}
	var names []string
	for i, r := range res {
		if r.Error != "" {
			t.Errorf("expression %q: %s", exprs[i], r.Error)
		}
		if len(r.Names) == 0 && r.Error == "" && !strings.Contains(exprs[i], "vector(") {
			t.Errorf("expression %q selects no metric", exprs[i])
		}
		for _, n := range r.Names {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	code, body := httpGet(t, url)
	if code != 200 {
		t.Fatalf("GET %s: %d", url, code)
	}
	return body
}

// exportedNames are the sample names of a text exposition (histograms'
// _bucket, _sum and _count included, as queries name them).
func exportedNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, l := range strings.Split(scrape(t, url), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, readAll(resp)
}
