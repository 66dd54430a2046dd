package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

const (
	uiNamespace = "berth-e2e-ui"
	uiBridge    = "berthui0"
	uiCluster   = "10.213.160.0/20"
	uiSubnet    = "10.213.160.0/24"
)

// rolloutPageState is what the rollout page shows, read from its DOM
// (the ids ui/assets/js/pages/rollout.js keeps stable for this test).
type rolloutPageState struct {
	Phase      string `json:"phase"`
	Weight     string `json:"weight"`
	Step       string `json:"step"`
	Points     int    `json:"points"`
	LivePoints int    `json:"livePoints"`
	Outcome    string `json:"outcome"`
	Reason     string `json:"reason"`
	Title      string `json:"title"`
	Live       string `json:"live"`
	Marker     bool   `json:"marker"`
	Promote    bool   `json:"promote"`
	Canvases   int    `json:"canvases"`
	Error      string `json:"error"`
	// RollbackMark: the timeline holds the rollback (from the history,
	// not the status).
	RollbackMark bool `json:"rollbackMark"`
}

const readRolloutPage = `(() => {
  const q = (s) => document.querySelector(s);
  const d = (s, k) => (q(s) && q(s).dataset[k]) || '';
  return {
    phase: d('#rollout-phase', 'phase'),
    weight: d('#rollout-weight', 'weight'),
    step: d('#rollout-step', 'step'),
    points: Number(d('#rollout-charts', 'points') || 0),
    livePoints: Number(d('#rollout-charts', 'livePoints') || 0),
    outcome: q('#rollout-verdict') && !q('#rollout-verdict').hidden ? d('#rollout-verdict', 'outcome') : '',
    reason: (q('#verdict-reason') && q('#verdict-reason').textContent) || '',
    title: (q('#rollout-title') && q('#rollout-title').textContent) || '',
    live: d('#live', 'state'),
    marker: window.__berthTestMarker === 1,
    promote: !!q('#btn-promote') && !q('#btn-promote').disabled,
    canvases: document.querySelectorAll('#rollout-charts canvas').length,
    error: (q('#action-error') && !q('#action-error').hidden && q('#action-error').textContent) || '',
    rollbackMark: !!q('#rollout-marks [data-kind="rollback"]'),
  };
})()`

// TestDashboardInBrowser opens the dashboard of a real berth dev in
// headless Chromium and follows canaries on the rollout page while the
// CLI starts them under load: the weight moves through the steps, points
// arrive live over the stream (no reload), the promote button with its
// confirmation moves a rollout waiting for promote, and a failing canary's
// rollback shows its reason. It writes screenshots of the rollout page
// (promoted, rolled back) to $BERTH_ARTIFACTS (make test: bin/artifacts),
// and to docs/ with BERTH_DOCS_SCREENSHOT=1.
func TestDashboardInBrowser(t *testing.T) {
	requireContainerd(t)
	chrome := findChromium(t)
	data := t.TempDir()
	stateDir := filepath.Join(data, "node")
	cleanNode(t, uiNamespace, uiBridge, uiSubnet, uiCluster, stateDir, false)
	t.Cleanup(func() { cleanNode(t, uiNamespace, uiBridge, uiSubnet, uiCluster, stateDir, true) })
	dev := startProc(t, "dev", "dev", "--data-dir", data, "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0",
		"--gateway-addr", "127.0.0.1:0", "--metrics-addr", "", "--ui-addr", "127.0.0.1:0", "--cluster-cidr", uiCluster, "--containerd-namespace", uiNamespace,
		"--bridge", uiBridge, "--node-name", "ui-node", "--dns-ttl", "1s", "--dns-upstream", "127.0.0.1:9", "--stop-grace", "2s")
	api := dev.waitLine(`^\s+api\s+(\S+)`, 60*time.Second)[1]
	dev.adminConfig(api)
	gw := dev.waitLine(`^\s+gateway\s+http://(\S+)`, 5*time.Second)[1]
	login := dev.waitLine(`^\s+dashboard\s+(http://127\.0\.0\.1:\d+/login\?token=\S+)`, 5*time.Second)[1]
	mustBerth(t, api, "image", "load", filepath.Join(imagesDir, "hello-v1.tar"), filepath.Join(imagesDir, "hello-v2.tar"))

	dir := t.TempDir()
	f := filepath.Join(dir, "hello.yaml")
	manifest := func(image, failRate string) string {
		return fmt.Sprintf(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: hello}
spec:
  image: %s
  replicas: 2
  env: {FAIL_RATE: "%s"}
  ports: [{name: http, port: 8080}]
  health: {http: {path: /healthz, port: 8080}, interval: 1s}
  route: {hosts: [hello.example.test]}
  rollout:
    strategy: canary
    steps: [{weight: 20, pause: 5s}, {weight: 50, pause: promote}, {weight: 100}]
    analysis: {maxErrorRate: 0.05, minRequests: 20}
`, image, failRate)
	}
	writeFile(t, f, manifest("berth.local/hello:v1", "0"))
	mustBerth(t, api, "apply", "-f", f, "--wait", "--timeout", "2m")
	load := startLoad(t, gw, 40)
	defer load.finish()

	ctx := newBrowser(t, chrome)
	// The login link sets the session cookie and lands on the services page.
	if err := chromedp.Do(ctx, chromedp.Navigate(login), chromedp.WaitVisible(chromedp.CSS(`[data-testid="service-row"][data-service="default/hello"]`))); err != nil {
		t.Fatalf("services page after login: %v", err)
	}
	row, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`[data-service="default/hello"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(row, "2/2") || !strings.Contains(row, "hello.example.test") {
		t.Errorf("services row for hello: %q, want 2/2 ready and its route", row)
	}
	// From here on the page is never reloaded: the marker would be lost.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`window.__berthTestMarker = 1; location.hash = '#/rollouts/default/hello'`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("rollout-charts"))); err != nil {
		t.Fatal(err)
	}
	page := func() rolloutPageState {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[rolloutPageState](readRolloutPage))
		if err != nil {
			t.Fatalf("read the rollout page: %v", err)
		}
		if !s.Marker {
			t.Fatalf("the rollout page was reloaded (%+v)", s)
		}
		return s
	}
	waitPage := func(timeout time.Duration, what string, ok func(rolloutPageState) bool) rolloutPageState {
		t.Helper()
		var s rolloutPageState
		eventually(t, timeout, what, func() (bool, string) {
			s = page()
			return ok(s), fmt.Sprintf("%+v", s)
		})
		return s
	}

	t.Run("the weight moves through the steps and points arrive live", func(t *testing.T) {
		writeFile(t, f, manifest("berth.local/hello:v2", "0"))
		mustBerth(t, api, "apply", "-f", f)
		weights := map[string]bool{}
		var first rolloutPageState
		s := waitPage(90*time.Second, "the page at the promote pause, 50%", func(s rolloutPageState) bool {
			weights[s.Weight] = true
			if first.LivePoints == 0 && s.LivePoints > 0 {
				first = s
			}
			return s.Phase == "Paused" && s.Weight == "50" && s.Promote
		})
		if !weights["20"] {
			t.Errorf("the page never showed the 20%% step; weights seen: %v", weights)
		}
		if s.Canvases < 4 {
			t.Errorf("%d plot canvases, want 4", s.Canvases)
		}
		// Points keep coming over the stream while the rollout waits.
		s = waitPage(15*time.Second, "more live points", func(s rolloutPageState) bool { return s.LivePoints >= first.LivePoints+3 && s.Points > first.Points+2 })
		t.Logf("points on the plot: %d (%d by the stream) after %d", s.Points, s.LivePoints, first.Points)
		if os.Getenv("BERTH_DOCS_SCREENSHOT") == "1" {
			// For the README's picture, a pause long enough to read.
			waitPage(60*time.Second, "points for the picture", func(s rolloutPageState) bool { return s.LivePoints >= 25 })
		}
	})

	t.Run("the promote button asks, then moves the waiting rollout", func(t *testing.T) {
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("btn-promote"))); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#confirm-dialog[open] #confirm-ok`))); err != nil {
			t.Fatalf("no confirmation dialog: %v", err)
		}
		// Nothing happens before the confirmation.
		if s := page(); s.Phase != "Paused" {
			t.Fatalf("phase %s before the confirmation", s.Phase)
		}
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("confirm-ok"))); err != nil {
			t.Fatal(err)
		}
		s := waitPage(60*time.Second, "the promoted verdict", func(s rolloutPageState) bool { return s.Outcome == "promoted" || s.Error != "" })
		if s.Error != "" {
			t.Fatalf("promote refused: %s", s.Error)
		}
		if out := mustBerth(t, api, "rollout", "status", "hello"); !strings.Contains(out, "Succeeded") {
			t.Fatalf("the CLI does not see the promote: %s", out)
		}
		writeScreenshot(t, ctx, "dashboard-rollout.png", true)
	})

	t.Run("a failing canary's rollback shows its reason", func(t *testing.T) {
		writeFile(t, f, manifest("berth.local/hello:v1", "1"))
		mustBerth(t, api, "apply", "-f", f)
		s := waitPage(90*time.Second, "the rolled back verdict with its reason", func(s rolloutPageState) bool {
			return s.Outcome == "rolled_back" && strings.Contains(s.Title, "r3")
		})
		if !strings.Contains(s.Reason, "analysis failed") || !strings.Contains(s.Reason, "error rate") {
			t.Errorf("the verdict's reason is %q, want the analysis' (error rate)", s.Reason)
		}
		if s.Points == 0 {
			t.Error("the rolled back rollout has no points")
		}
		// The plot ends with the rollback too: the history fetched when the
		// status first said RolledBack may predate the recorder's sight of
		// it, and the page asks again until it has it.
		waitPage(15*time.Second, "the rollback mark on the timeline", func(s rolloutPageState) bool { return s.RollbackMark })
		writeScreenshot(t, ctx, "dashboard-rollback.png", true)
	})

	t.Run("a viewer limited to a namespace names it and sees its services", func(t *testing.T) {
		tok := strings.TrimSpace(mustBerth(t, api, "token", "create", "--role", "viewer", "--namespace", "default", "--description", "ui test"))
		link := strings.SplitN(login, "?token=", 2)[0] + "?token=" + url.QueryEscape(tok)
		// The whole list is refused to this token: the page says what to do.
		if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`localStorage.removeItem('berth.namespace')`), chromedp.Navigate(link),
			chromedp.WaitVisible(chromedp.CSS(`[data-testid="load-error"]`))); err != nil {
			t.Fatalf("services page of a namespaced viewer: %v", err)
		}
		msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`[data-testid="load-error"]`)))
		if err != nil || !strings.Contains(msg, "Namespace field") {
			t.Fatalf("the refusal says %q (%v), want a hint to name a namespace", msg, err)
		}
		if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.ID("namespace-filter"), "default"),
			chromedp.Evaluate[chromedp.Void](`document.getElementById('namespace-filter').dispatchEvent(new Event('change'))`),
			chromedp.WaitVisible(chromedp.CSS(`[data-testid="service-row"][data-service="default/hello"]`))); err != nil {
			t.Fatalf("services of the named namespace: %v", err)
		}
	})
}

// findChromium finds Debian's headless Chromium; the test never skips.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium-headless-shell", "chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the dashboard's browser test needs Chromium: apt-get install chromium-headless-shell (make test installs it)")
	return ""
}

// newBrowser starts headless Chromium that can reach loopback only: every
// other host name fails to resolve and any other address goes to a proxy
// that is not there.
func newBrowser(t *testing.T, chrome string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.WindowSize(1440, 1000),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.Flag("proxy-server", "http://127.0.0.1:9"),
		chromedp.Flag("proxy-bypass-list", "127.0.0.1"),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("dns-prefetch-disable", true),
		chromedp.Flag("force-prefers-reduced-motion", true),
	)
	if os.Geteuid() == 0 {
		// Chromium's sandbox refuses to run as root.
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 8*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", chrome, err)
	}
	// The page's own errors fail the test (a failed fetch it handles is a
	// network log entry, not an exception or a console.error).
	var mu sync.Mutex
	var errs []string
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleException || (m.Type == "error" && len(m.Args) > 0) {
				mu.Lock()
				errs = append(errs, string(m.Type)+": "+m.Text)
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range errs {
			t.Errorf("browser console: %s", e)
		}
	})
	return ctx
}

// writeScreenshot saves the page as a PNG under $BERTH_ARTIFACTS, and to
// docs/ when docs is set and BERTH_DOCS_SCREENSHOT=1.
func writeScreenshot(t *testing.T, ctx context.Context, name string, docs bool) {
	t.Helper()
	var dirs []string
	if d := os.Getenv("BERTH_ARTIFACTS"); d != "" {
		dirs = append(dirs, d)
	}
	if docs && os.Getenv("BERTH_DOCS_SCREENSHOT") == "1" {
		dirs = append(dirs, filepath.Join(repoRoot, "docs"))
	}
	if len(dirs) == 0 {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
}
