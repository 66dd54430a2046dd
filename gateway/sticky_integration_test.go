package gateway_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/gateway"
)

// stickySnapshot: a canary (revision 2, up-2) at weight w beside stable
// (revision 1, up-1), once with a sticky cookie and once with a sticky
// header, as discovery.Build publishes a sticky rollout.
func stickySnapshot(version uint64, port, w uint32) *discovery.Snapshot {
	ports := []discovery.Port{{Name: "http", Port: port, Protocol: "http"}}
	revs := []discovery.Revision{
		{Number: 1, Weight: 100 - w, Endpoints: endpoints("127.0.0.1")},
		{Number: 2, Weight: w, Endpoints: endpoints("127.0.0.2")},
	}
	return &discovery.Snapshot{Version: version, Services: []discovery.Service{
		{Namespace: "default", Name: "bycookie", Ports: ports, Revisions: revs,
			Route: &discovery.Route{Hosts: []string{"cookie.example.test"}, Paths: []string{"/"}, StickyCookie: "sid", CanaryRevision: 2}},
		{Namespace: "default", Name: "byheader", Ports: ports, Revisions: revs,
			Route: &discovery.Route{Hosts: []string{"header.example.test"}, Paths: []string{"/"}, StickyHeader: "x-user", CanaryRevision: 2}},
	}}
}

// stickyGateway runs a control plane and a gateway following it, with
// the canary at weight 10.
func stickyGateway(t *testing.T) (*upstreams, *xdsHandle, *client) {
	t.Helper()
	ups := startUpstreams(t)
	cp := startXDS(t, "127.0.0.1:0")
	gw, err := gateway.New(gateway.Config{
		ListenAddr: "127.0.0.1:0", XDSAddr: cp.srv.Addr(), NodeID: "gw-sticky",
		ListenerName: "berth_http", Registerer: prometheus.NewRegistry(),
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("gateway Run: %v", err)
		}
	})
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	c := &client{t: t, addr: gw.Addr(), http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	publish(t, cp, stickySnapshot(1, ups.port, 10))
	return ups, cp, c
}

// publish pushes snap and waits until the gateway has ACKed it.
func publish(t *testing.T, cp *xdsHandle, snap *discovery.Snapshot) {
	t.Helper()
	if err := cp.srv.Update(snap); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, "gateway to connect", func() bool { return len(cp.srv.Gateways()) == 1 })
	if err := cp.srv.WaitForAck(ctx, snap.Version); err != nil {
		t.Fatalf("WaitForAck(%d): %v", snap.Version, err)
	}
}

// send makes one request with the given headers and returns the backend
// that answered and the cohort header(s) it saw. general sends a chunked
// body, which the fast path hands to the net/http path.
func (c *client) send(host string, hdr http.Header, general bool) (backend, seen string) {
	c.t.Helper()
	req, err := http.NewRequest("GET", "http://"+c.addr+"/", nil)
	if general {
		req, err = http.NewRequest("POST", "http://"+c.addr+"/", strings.NewReader("body"))
		req.TransferEncoding = []string{"chunked"}
	}
	if err != nil {
		c.t.Fatal(err)
	}
	req.Host = host
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("%s %s %v: %d %q", req.Method, host, hdr, resp.StatusCode, body)
	}
	return string(body), strings.Join(resp.Header.Values("X-Seen-Cohort"), ",")
}

// cohortKey is the cohort header as net/http spells it.
var cohortKey = http.CanonicalHeaderKey(api.CohortHeader)

func fnv64a(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// TestStickyCohortsThroughGateway: with a sticky cookie, each user keeps
// one backend over repeated requests on both request paths, the
// canary's share of users follows its weight, the backend sees the
// user's cohort, and raising the weight moves users only from stable to
// canary.
func TestStickyCohortsThroughGateway(t *testing.T) {
	ups, cp, c := stickyGateway(t)
	const users = 1000
	user := func(i int) string { return fmt.Sprintf("user-%d", i) }
	// backendsAt asks, for every user, three times (two fast-path GETs
	// and a chunked POST through net/http) and returns where each went.
	backendsAt := func(weight uint64) []string {
		t.Helper()
		out := make([]string, users)
		for i := range users {
			hdr := http.Header{"Cookie": {"theme=dark; sid=" + user(i) + "; lang=en"}}
			wantCohort := strconv.FormatUint(fnv64a(user(i)), 10)
			for try, general := range []bool{false, true, false} {
				got, seen := c.send("cookie.example.test", hdr, general)
				if seen != wantCohort {
					t.Fatalf("%s (try %d): backend saw cohort %q, want FNV-1a 64 of the cookie %s", user(i), try, seen, wantCohort)
				}
				if try == 0 {
					out[i] = got
				} else if got != out[i] {
					t.Fatalf("%s: went to %s, then to %s", user(i), out[i], got)
				}
			}
			want := "up-1"
			if fnv64a(user(i))%100 < weight {
				want = "up-2"
			}
			if out[i] != want {
				t.Fatalf("%s (cohort %s) at weight %d went to %s, want %s", user(i), wantCohort, weight, out[i], want)
			}
		}
		return out
	}
	share := func(backends []string) float64 {
		n := 0
		for _, b := range backends {
			if b == "up-2" {
				n++
			}
		}
		return float64(n) / users
	}

	at10 := backendsAt(10)
	if s := share(at10); s < 0.07 || s > 0.13 {
		t.Errorf("canary share of users at weight 10: %.3f, want 0.10±0.03", s)
	}

	publish(t, cp, stickySnapshot(2, ups.port, 50))
	at50 := backendsAt(50)
	for i := range users {
		if at10[i] == "up-2" && at50[i] != "up-2" {
			t.Errorf("%s was on the canary at weight 10 and left it at 50", user(i))
		}
	}
	if s := share(at50); s < 0.45 || s > 0.55 {
		t.Errorf("canary share of users at weight 50: %.3f, want 0.50±0.05", s)
	}

	// Without the cookie: the smooth weighted round robin, no cohort.
	got := map[string]int{}
	for range 200 {
		b, seen := c.send("cookie.example.test", http.Header{"Cookie": {"theme=dark"}}, false)
		if seen != "" {
			t.Fatalf("request without the cookie reached the backend with cohort %q", seen)
		}
		got[b]++
	}
	if got["up-1"] != 100 || got["up-2"] != 100 {
		t.Errorf("requests without the sticky cookie at 50/50: %v, want 100 each", got)
	}
}

// TestStickyCohortHeader: a numeric cohort a client (or a proxy in front)
// sends decides by itself and goes upstream as it is; one that is not a
// number is replaced by the hash of the sticky header.
func TestStickyCohortHeader(t *testing.T) {
	_, _, c := stickyGateway(t)
	for _, general := range []bool{false, true} {
		for _, tc := range []struct {
			host     string
			hdr      http.Header
			backend  string
			upstream string // the cohort the backend sees
		}{
			{"cookie.example.test", http.Header{cohortKey: {"5"}}, "up-2", "5"},
			{"cookie.example.test", http.Header{cohortKey: {"50"}}, "up-1", "50"},
			{"cookie.example.test", http.Header{cohortKey: {"1005"}, "Cookie": {"sid=x"}}, "up-2", "1005"},
			{"header.example.test", http.Header{cohortKey: {"50"}, "X-User": {"alice"}}, "up-1", "50"},
			{"header.example.test", http.Header{cohortKey: {"9"}}, "up-2", "9"},
		} {
			got, seen := c.send(tc.host, tc.hdr, general)
			if got != tc.backend || seen != tc.upstream {
				t.Errorf("general path %v: %s %v went to %s seeing cohort %q, want %s seeing %q", general, tc.host, tc.hdr, got, seen, tc.backend, tc.upstream)
			}
		}
		// Users by the sticky header; a cohort that is not a number gives
		// way to the hash.
		for i := range 300 {
			name := fmt.Sprintf("u%d", i)
			want, backend := fnv64a(name), "up-1"
			if want%100 < 10 {
				backend = "up-2"
			}
			got, seen := c.send("header.example.test", http.Header{"X-User": {name}, cohortKey: {"soon"}}, general)
			if got != backend || seen != strconv.FormatUint(want, 10) {
				t.Fatalf("general path %v: x-user %s went to %s seeing cohort %q, want %s seeing %d", general, name, got, seen, backend, want)
			}
		}
	}
}
