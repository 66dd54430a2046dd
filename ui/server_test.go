package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc/codes"
)

// syncBuffer is a log sink the test reads while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a real control plane (embedded etcd, API over TLS) with the
// dashboard in front of it, as cmd/berth wires them.
type env struct {
	cp    *controlplane.Server
	ui    *Server
	admin string // the admin's API token
	api   pb.BerthClient
	logs  *syncBuffer
	base  string
}

func startEnv(t *testing.T, opts ...func(*Config)) *env {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ccfg := controlplane.DefaultConfig()
	ccfg.DataDir, ccfg.APIAddr = t.TempDir(), "127.0.0.1:0"
	ccfg.Etcd = controlplane.EtcdTuning{TickMs: 10, ElectionMs: 100}
	ccfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cp, err := controlplane.New(ctx, ccfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.Run(ctx) }()
	ac, err := controlplane.ReadAdminConfig(cp.AdminConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pb.Dial(cp.APIAddr(), pki.ClientTLS(nil, cp.CA().Pool()))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Addr, cfg.API, cfg.Logger, cfg.Replica, cfg.Version = "127.0.0.1:0", pb.NewBerthClient(conn), logger, "test-replica", "test"
	cfg.Views, cfg.Discovery, cfg.History = cp.Cache(), cp.Publisher().Latest, cp.RolloutHistory()
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	uiDone := make(chan error, 1)
	go func() { uiDone <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-uiDone; err != nil {
			t.Errorf("ui run: %v", err)
		}
		<-cpDone
		conn.Close()
	})
	return &env{cp: cp, ui: srv, admin: ac.Token, api: cfg.API, logs: logs, base: "http://" + srv.Addr()}
}

// client is a browser: a cookie jar, no redirects followed.
func (e *env) client(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// login logs c in with tok and returns the CSRF token.
func (e *env) login(t *testing.T, c *http.Client, tok string) string {
	t.Helper()
	resp, err := c.Get(e.base + "/login?token=" + url.QueryEscape(tok))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("login: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	var who whoamiResponse
	if code := e.getJSON(t, c, "/api/whoami", &who); code != 200 {
		t.Fatalf("whoami: %d", code)
	}
	return who.CSRF
}

func (e *env) getJSON(t *testing.T, c *http.Client, path string, v any) int {
	t.Helper()
	resp, err := c.Get(e.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v in %s", path, err, b)
		}
	}
	return resp.StatusCode
}

// post sends a state-changing request as the dashboard's script would,
// with the given Origin and CSRF headers ("" leaves one out).
func (e *env) post(t *testing.T, c *http.Client, path, origin, csrf string) (int, apiError) {
	t.Helper()
	req, _ := http.NewRequest("POST", e.base+path, nil)
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out apiError
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestLoginAndEndpoints(t *testing.T) {
	e := startEnv(t)
	c := e.client(t)
	e.login(t, c, e.admin)
	var who whoamiResponse
	e.getJSON(t, c, "/api/whoami", &who)
	if !strings.HasPrefix(who.Principal, "admin token ") || who.Replica != "test-replica" || len(who.CSRF) != 32 {
		t.Fatalf("whoami: %+v", who)
	}
	// Protobuf JSON with the proto's names, empty fields included.
	resp, err := c.Get(e.base + "/api/services")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"services":[]}` {
		t.Fatalf("services: %d %s", resp.StatusCode, b)
	}
	var nodes map[string]any
	if code := e.getJSON(t, c, "/api/nodes", &nodes); code != 200 {
		t.Fatalf("nodes: %d", code)
	}
	var ae apiError
	if code := e.getJSON(t, c, "/api/rollouts/default/nothing", &ae); code != 404 || ae.Code != "NotFound" {
		t.Fatalf("rollout of no service: %d %+v", code, ae)
	}
	if code := e.getJSON(t, c, "/api/nope", &ae); code != 404 {
		t.Fatalf("unknown endpoint: %d", code)
	}
	// The page itself, and assets, from the embedded files.
	resp, err = c.Get(e.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("index: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	// Logged out: the session is gone.
	if code, _ := e.post(t, c, "/logout", e.base, who.CSRF); code != http.StatusSeeOther {
		t.Fatalf("logout: %d", code)
	}
	if code := e.getJSON(t, c, "/api/whoami", nil); code != 401 {
		t.Fatalf("after logout: %d", code)
	}
}

// Attack: no cookie. The API answers 401 JSON; pages send to the login.
func TestWithoutSessionNothingIsServed(t *testing.T) {
	e := startEnv(t)
	c := e.client(t)
	var ae apiError
	for _, p := range []string{"/api/whoami", "/api/services", "/api/stream", "/api/rollouts/default/web/history"} {
		if code := e.getJSON(t, c, p, &ae); code != 401 || ae.Code != "Unauthenticated" {
			t.Fatalf("%s: %d %+v", p, code, ae)
		}
	}
	if code, _ := e.post(t, c, "/api/rollouts/default/web/promote", e.base, "x"); code != 401 {
		t.Fatalf("promote without a session: %d", code)
	}
	resp, err := c.Get(e.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Fatalf("page without a session: %s %q", resp.Status, resp.Header.Get("Location"))
	}
	// A forged cookie is no session.
	u, _ := url.Parse(e.base)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: strings.Repeat("0", 32)}})
	if code := e.getJSON(t, c, "/api/whoami", nil); code != 401 {
		t.Fatalf("forged cookie: %d", code)
	}
}

// Attack: DNS rebinding. A page of evil.example, re-pointed at 127.0.0.1,
// sends Host: evil.example:PORT (with the victim's cookie, were it the
// same origin): refused before any route, logged in or not.
func TestDNSRebindingIsRefused(t *testing.T) {
	e := startEnv(t)
	c := e.client(t)
	e.login(t, c, e.admin)
	_, port, _ := strings.Cut(e.ui.Addr(), ":")
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.nip.io:" + port, "localhost:1", "10.0.0.1:" + port} {
		for _, p := range []string{"/api/whoami", "/", "/login?token=" + e.admin, "/assets/index.html"} {
			req, _ := http.NewRequest("GET", e.base+p, nil)
			req.Host = host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMisdirectedRequest {
				t.Fatalf("Host %s %s: %s", host, p, resp.Status)
			}
		}
	}
	for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "LOCALHOST:" + port} {
		req, _ := http.NewRequest("GET", e.base+"/api/whoami", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusMisdirectedRequest {
			t.Fatalf("Host %s refused", host)
		}
	}
}

// Attack: cross-site request forgery. A state change needs the session's
// CSRF token and a same-origin Origin; a GET changes nothing.
func TestStateChangesNeedCSRFAndOrigin(t *testing.T) {
	e := startEnv(t)
	c := e.client(t)
	csrf := e.login(t, c, e.admin)
	const path = "/api/rollouts/default/web/promote"
	for _, tc := range []struct {
		name, origin, csrf string
	}{
		{"no CSRF token", e.base, ""},
		{"wrong CSRF token", e.base, strings.Repeat("a", 32)},
		{"another site", "http://evil.example", csrf},
		{"no Origin", "", csrf},
		{"null Origin", "null", csrf},
	} {
		if code, ae := e.post(t, c, path, tc.origin, tc.csrf); code != http.StatusForbidden || ae.Code != "PermissionDenied" {
			t.Errorf("%s: %d %+v", tc.name, code, ae)
		}
	}
	resp, err := c.Get(e.base + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET promote (only POST changes anything): %s", resp.Status)
	}
	// The real thing reaches the API: no such rollout.
	if code, ae := e.post(t, c, path, e.base, csrf); code != http.StatusNotFound || ae.Code != "NotFound" {
		t.Fatalf("promote with CSRF and Origin: %d %+v", code, ae)
	}
	if code, ae := e.post(t, c, "/api/rollouts/default/web/delete", e.base, csrf); code != http.StatusNotFound || !strings.Contains(ae.Error, "promote, pause, resume or abort") {
		t.Fatalf("unknown action: %d %+v", code, ae)
	}
	// Login CSRF: another site cannot log the browser in as its user.
	req, _ := http.NewRequest("POST", e.base+"/login", strings.NewReader("token="+url.QueryEscape(e.admin)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	resp, err = e.client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("cross-site login: %s %v", resp.Status, resp.Cookies())
	}
}

// The session cookie: 128 random bits, HttpOnly, SameSite=Strict, not the
// token; a new id at every login.
func TestSessionCookie(t *testing.T) {
	e := startEnv(t)
	seen := map[string]bool{}
	for range 3 {
		resp, err := e.client(t).Get(e.base + "/login?token=" + url.QueryEscape(e.admin))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		cs := resp.Cookies()
		if len(cs) != 1 {
			t.Fatalf("cookies: %v", cs)
		}
		ck := cs[0]
		if ck.Name != cookieName || len(ck.Value) != 32 || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || strings.Contains(ck.Value, e.admin) {
			t.Fatalf("cookie: %+v", ck)
		}
		if seen[ck.Value] {
			t.Fatal("a session id came twice")
		}
		seen[ck.Value] = true
	}
	for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options"} {
		resp, err := e.client(t).Get(e.base + "/login")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get(h) == "" {
			t.Fatalf("no %s", h)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Fatalf("CSP: %s", csp)
		}
	}
}

// Attack: guessing tokens. A bad token is refused without being echoed
// or logged; after the burst, the address waits; a token never reaches
// the log, good or bad.
func TestLoginRefusesAndLimitsGuessing(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.LoginBurst, c.LoginEvery = 3, time.Hour })
	c := e.client(t)
	bad := "deadbeef.guessed-secret-" + strings.Repeat("x", 10)
	for i := range 4 {
		resp, err := c.PostForm(e.base+"/login", url.Values{"token": {bad}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := http.StatusUnauthorized
		if i == 3 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want || strings.Contains(string(b), bad) || len(resp.Cookies()) != 0 {
			t.Fatalf("attempt %d: %s (want %d), cookies %v, body %s", i+1, resp.Status, want, resp.Cookies(), b)
		}
		if i == 0 && !strings.Contains(string(b), "refused that token") {
			t.Fatalf("refusal does not say so: %s", b)
		}
	}
	// Even the right token waits now: the limit is on attempts.
	resp, err := c.Get(e.base + "/login?token=" + url.QueryEscape(e.admin))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("limited address, right token: %s", resp.Status)
	}
	logs := e.logs.String()
	if strings.Contains(logs, bad) || strings.Contains(logs, e.admin) || strings.Contains(logs, "guessed-secret") {
		t.Fatalf("a token reached the log:\n%s", logs)
	}
	if !strings.Contains(logs, "login refused") {
		t.Fatalf("refusals not logged:\n%s", logs)
	}
}

// A read-only token looks but cannot promote: the API's authorisation
// decides, through the user's own token.
func TestViewerCanLookButNotPromote(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	admin := e.client(t)
	e.login(t, admin, e.admin)
	created, err := e.api.CreateToken(ctx, &pb.CreateTokenRequest{Role: "viewer", Description: "ui test"}, pb.TokenCall(e.admin))
	if err != nil {
		t.Fatal(err)
	}
	c := e.client(t)
	csrf := e.login(t, c, created.Token)
	var who whoamiResponse
	e.getJSON(t, c, "/api/whoami", &who)
	if !strings.HasPrefix(who.Principal, "viewer token ") {
		t.Fatalf("viewer: %+v", who)
	}
	if code := e.getJSON(t, c, "/api/services", nil); code != 200 {
		t.Fatalf("viewer lists services: %d", code)
	}
	code, ae := e.post(t, c, "/api/rollouts/default/web/promote", e.base, csrf)
	if code != http.StatusForbidden || ae.Code != "PermissionDenied" || !strings.Contains(ae.Error, "rollout") {
		t.Fatalf("viewer promote: %d %+v", code, ae)
	}
	// Revoked: the next call ends the session.
	if _, err := e.api.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: strings.Fields(strings.TrimPrefix(who.Principal, "viewer token "))[0]}, pb.TokenCall(e.admin)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.getJSON(t, c, "/api/services", nil) == 200 {
		if time.Now().After(deadline) {
			t.Fatal("a revoked token still reads")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := e.getJSON(t, c, "/api/whoami", nil); code != 401 {
		t.Fatalf("session of a revoked token: %d", code)
	}
}

// Attack: opening streams without end. A session holds at most
// StreamsPerSession; closing one frees its place.
func TestStreamsPerSessionAreBounded(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.StreamsPerSession = 2 })
	c := e.client(t)
	e.login(t, c, e.admin)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/stream", nil)
		return c.Do(req)
	}
	var first *http.Response
	for i := range 2 {
		resp, err := open()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream %d: %s", i, resp.Status)
		}
		// The first event: fetch everything.
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		if !strings.Contains(string(buf[:n]), "event: change") {
			n2, _ := resp.Body.Read(buf[n:])
			n += n2
		}
		if !strings.Contains(string(buf[:n]), `event: change`) || !strings.Contains(string(buf[:n]), `"rollouts"`) {
			t.Fatalf("first event: %q", buf[:n])
		}
		if i == 0 {
			first = resp
		} else {
			defer resp.Body.Close()
		}
	}
	resp, err := open()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third stream: %s", resp.Status)
	}
	first.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := open()
		if err != nil {
			t.Fatal(err)
		}
		code := resp.StatusCode
		resp.Body.Close()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed stream's place was not freed: %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHTTPStatusOfEveryCode(t *testing.T) {
	for c := range 17 {
		if s := httpStatus(codeOf(c)); s < 200 || s > 599 {
			t.Errorf("code %d -> %d", c, s)
		}
	}
	if fmt.Sprint(httpStatus(codeOf(7))) != "403" {
		t.Error("PermissionDenied is not 403")
	}
}

func codeOf(c int) codes.Code { return codes.Code(c) }
