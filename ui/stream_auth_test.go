package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/rollouthistory"
	"github.com/berth-dev/berth/controlplane/store"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// liveIn is a recorder with a rollout in progress in each namespace, a
// new point at every call.
type liveIn []string

func (l liveIn) History(string, string) (rollouthistory.History, bool) {
	return rollouthistory.History{}, false
}

func (l liveIn) Live() []rollouthistory.Live {
	var out []rollouthistory.Live
	for _, ns := range l {
		out = append(out, rollouthistory.Live{Namespace: ns, Service: "web", Point: rollouthistory.Point{TMs: time.Now().UnixNano()}})
	}
	return out
}

// apiDown answers RolloutStatus as an API that cannot be reached would.
type apiDown struct{ pb.BerthClient }

func (apiDown) RolloutStatus(context.Context, *pb.RolloutRequest, ...grpc.CallOption) (*pb.Rollout, error) {
	return nil, status.Error(codes.Unavailable, "connection refused")
}

// streamPoints reads c's event stream for a while and returns the
// namespaces its points came from.
func (e *env) streamPoints(t *testing.T, c *http.Client, d time.Duration) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/stream", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %s", resp.Status)
	}
	got := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	point := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "event: point":
			point = true
		case point && strings.HasPrefix(line, "data: "):
			var l rollouthistory.Live
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &l); err != nil {
				t.Fatalf("point %q: %v", line, err)
			}
			got[l.Namespace]++
			point = false
		}
	}
	return got
}

// Attack: a token of one namespace reads the stream. It gets the points
// of its own namespace's rollouts and none of another's, also while the
// API cannot answer whether it may read them (the check fails closed).
func TestStreamPointsStayInTheirNamespace(t *testing.T) {
	for _, down := range []bool{false, true} {
		e := startEnv(t, func(c *Config) {
			c.History, c.PointEvery = liveIn{"team-a", "team-b"}, 50*time.Millisecond
			if down {
				c.API = apiDown{c.API}
			}
		})
		created, err := e.api.CreateToken(context.Background(), &pb.CreateTokenRequest{Role: "viewer", Namespaces: []string{"team-a"}, Description: "team a"}, pb.TokenCall(e.admin))
		if err != nil {
			t.Fatal(err)
		}
		c := e.client(t)
		e.login(t, c, created.Token)
		got := e.streamPoints(t, c, time.Second)
		if got["team-b"] > 0 {
			t.Errorf("API down %v: a team-a token got %d points of team-b's rollout", down, got["team-b"])
		}
		if !down && got["team-a"] == 0 {
			t.Errorf("no points of the token's own namespace: %v", got)
		}
	}
}

// A revoked token's stream ends at the next check (as its next call would).
func TestStreamOfARevokedTokenEnds(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.History, c.PointEvery = liveIn{"default"}, 50*time.Millisecond })
	ctx := context.Background()
	created, err := e.api.CreateToken(ctx, &pb.CreateTokenRequest{Role: "viewer", Description: "revoked"}, pb.TokenCall(e.admin))
	if err != nil {
		t.Fatal(err)
	}
	c := e.client(t)
	e.login(t, c, created.Token)
	id, _, _ := store.SplitToken(created.Token)
	if _, err := e.api.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: id}, pb.TokenCall(e.admin)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := e.api.Version(ctx, &pb.VersionRequest{}, pb.TokenCall(created.Token)); status.Code(err) == codes.Unauthenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the API still takes the revoked token")
		}
	}
	start := time.Now()
	e.streamPoints(t, c, 10*time.Second)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the stream of a revoked token ran on for %s", took.Round(time.Millisecond))
	}
	if code := e.getJSON(t, c, "/api/whoami", nil); code != 401 {
		t.Fatalf("session of a revoked token: %d", code)
	}
}

// Attack: login CSRF through the link. Another site's page navigates the
// browser to /login?token=<the attacker's token> (a link, a redirect):
// the browser says cross-site (or same-site: another port of this host)
// and no session starts; the link opened from a terminal still logs in.
func TestLoginLinkFromAnotherSiteIsRefused(t *testing.T) {
	e := startEnv(t)
	for _, tc := range []struct {
		site string
		want int
	}{{"cross-site", http.StatusForbidden}, {"same-site", http.StatusForbidden}, {"none", http.StatusSeeOther}, {"", http.StatusSeeOther}} {
		req, _ := http.NewRequest("GET", e.base+"/login?token="+e.admin, nil)
		if tc.site != "" {
			req.Header.Set("Sec-Fetch-Site", tc.site)
		}
		resp, err := e.client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want || (tc.want == http.StatusForbidden) != (len(resp.Cookies()) == 0) {
			t.Errorf("Sec-Fetch-Site %q: %s, cookies %v", tc.site, resp.Status, resp.Cookies())
		}
	}
}

// bigLive is a recorder whose one live rollout has a new, large point at
// every call (many revisions), to fill a stalled client's buffers fast.
type bigLive struct{}

func (bigLive) History(string, string) (rollouthistory.History, bool) {
	return rollouthistory.History{}, false
}

func (bigLive) Live() []rollouthistory.Live {
	p := rollouthistory.Point{TMs: time.Now().UnixNano()}
	for i := range 2000 {
		p.Revisions = append(p.Revisions, rollouthistory.RevisionPoint{Revision: int64(i), Role: "stable"})
	}
	return []rollouthistory.Live{{Namespace: "default", Service: "web", Point: p}}
}

// Attack: a logged-in client opens a stream and stops reading. Once its
// buffers are full the server's write must give up (a deadline), freeing
// the goroutine and the session's stream slot, not block for ever.
func TestStalledStreamReaderIsDropped(t *testing.T) {
	e := startEnv(t, func(c *Config) {
		c.History, c.PointEvery, c.Heartbeat = bigLive{}, 5*time.Millisecond, 100*time.Millisecond
	})
	c := e.client(t)
	e.login(t, c, e.admin)
	u, _ := url.Parse(e.base)
	var cookie string
	for _, ck := range c.Jar.Cookies(u) {
		cookie = ck.Name + "=" + ck.Value
	}
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/stream HTTP/1.1\r\nHost: %s\r\nCookie: %s\r\n\r\n", u.Host, cookie)
	// Never read. The stream opens, then its writes stall.
	streams := func() float64 {
		var m dto.Metric
		if err := e.ui.metrics.streams.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetGauge().GetValue()
	}
	for deadline := time.Now().Add(5 * time.Second); streams() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the stream did not open: %v streams", streams())
		}
	}
	for deadline := time.Now().Add(10 * time.Second); streams() != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a stream whose client stopped reading is still held after 10s")
		}
	}
}
