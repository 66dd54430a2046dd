package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/gateway"
	"github.com/berth-dev/berth/xds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstreams are three HTTP servers on 127.0.0.1, .2 and .3 sharing one
// port, as the instances of one service share a port on their own IPs.
type upstreams struct {
	port    uint32
	servers []*httptest.Server
	release chan struct{} // closes to let /slow requests finish
	slow    chan struct{} // gets a value when a /slow request arrives

	mu      sync.Mutex
	headers http.Header // of the last request
}

func startUpstreams(t *testing.T) *upstreams {
	t.Helper()
	u := &upstreams{release: make(chan struct{}), slow: make(chan struct{}, 1)}
	var lis []net.Listener
	for attempt := 0; attempt < 20 && lis == nil; attempt++ {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lis = []net.Listener{first}
		for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil { // port taken on that address: try another
				for _, l := range lis {
					l.Close()
				}
				lis = nil
				break
			}
			lis = append(lis, l)
		}
		u.port = uint32(port)
	}
	if lis == nil {
		t.Fatal("no port free on 127.0.0.1-3")
	}
	for i, l := range lis {
		name := fmt.Sprintf("up-%d", i+1)
		s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.mu.Lock()
			u.headers = r.Header.Clone()
			u.mu.Unlock()
			if r.URL.Path == "/slow" {
				u.slow <- struct{}{}
				<-u.release
			}
			// What a backend learns of its user's cohort.
			w.Header()["X-Seen-Cohort"] = r.Header.Values("X-Berth-Cohort")
			io.WriteString(w, name)
		}))
		s.Listener.Close()
		s.Listener = l
		s.Start()
		u.servers = append(u.servers, s)
	}
	t.Cleanup(func() {
		select {
		case <-u.release:
		default:
			close(u.release)
		}
		for _, s := range u.servers {
			s.Close()
		}
	})
	return u
}

func (u *upstreams) lastHeaders() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.headers
}

func endpoints(ips ...string) []discovery.Endpoint {
	var out []discovery.Endpoint
	for i, ip := range ips {
		out = append(out, discovery.Endpoint{Instance: fmt.Sprintf("i-%d", i), Node: "n1", IP: ip, Ready: true})
	}
	return out
}

// snapshot: hello over the given IPs, split 90/10 over .1 and .2, empty
// with no ready endpoint, broken on a closed port.
func snapshot(version uint64, port, closedPort uint32, helloIPs ...string) *discovery.Snapshot {
	ports := []discovery.Port{{Name: "http", Port: port, Protocol: "http"}}
	return &discovery.Snapshot{Version: version, Services: []discovery.Service{
		{Namespace: "default", Name: "broken", Ports: []discovery.Port{{Name: "http", Port: closedPort}},
			Route:     &discovery.Route{Hosts: []string{"broken.example.test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: endpoints("127.0.0.1")}}},
		{Namespace: "default", Name: "empty", Ports: ports,
			Route:     &discovery.Route{Hosts: []string{"empty.example.test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: []discovery.Endpoint{{Instance: "e", Node: "n1", IP: "127.0.0.1", Ready: false}}}}},
		{Namespace: "default", Name: "hello", Ports: ports,
			Route:     &discovery.Route{Hosts: []string{"hello.example.test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: endpoints(helloIPs...)}}},
		{Namespace: "default", Name: "split", Ports: ports,
			Route: &discovery.Route{Hosts: []string{"split.example.test"}, Paths: []string{"/"}},
			Revisions: []discovery.Revision{
				{Number: 1, Weight: 90, Endpoints: endpoints("127.0.0.1")},
				{Number: 2, Weight: 10, Endpoints: endpoints("127.0.0.2")},
			}},
	}}
}

type xdsHandle struct {
	srv  *xds.Server
	reg  *prometheus.Registry // the server's metrics
	stop func()
}

func startXDS(t *testing.T, addr string) *xdsHandle {
	t.Helper()
	cfg := xds.DefaultConfig()
	cfg.Addr = addr
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	srv, err := xds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("xds Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &xdsHandle{srv: srv, reg: reg, stop: stop}
}

type client struct {
	t    *testing.T
	addr string
	http *http.Client
}

func (c *client) get(host, path string) (int, string, http.Header) {
	c.t.Helper()
	req, err := http.NewRequest("GET", "http://"+c.addr+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Host = host
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, string(body), resp.Header
}

// spread sends n requests to host and counts answers by body.
func (c *client) spread(host string, n int) map[string]int {
	c.t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		code, body, _ := c.get(host, "/")
		if code != http.StatusOK {
			c.t.Fatalf("request %d to %s: %d %q", i, host, code, body)
		}
		got[body]++
	}
	return got
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGatewayEndToEnd runs the gateway against a real xDS server on each
// ADS protocol.
func TestGatewayEndToEnd(t *testing.T) {
	for _, protocol := range []string{gateway.XDSDelta, gateway.XDSStateOfTheWorld} {
		t.Run(protocol, func(t *testing.T) { testGatewayEndToEnd(t, protocol) })
	}
}

func testGatewayEndToEnd(t *testing.T, protocol string) {
	ups := startUpstreams(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := uint32(closed.Addr().(*net.TCPAddr).Port)
	closed.Close()

	cp := startXDS(t, "127.0.0.1:0")
	xdsAddr := cp.srv.Addr()

	reg := prometheus.NewRegistry()
	gw, err := gateway.New(gateway.Config{
		ListenAddr: "127.0.0.1:0", XDSAddr: xdsAddr, NodeID: "gw-test",
		ListenerName: "berth_http", Registerer: reg, XDSProtocol: protocol,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	gwCtx, stopGW := context.WithCancel(context.Background())
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Run(gwCtx) }()
	t.Cleanup(func() { stopGW(); <-gwDone })

	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	c := &client{t: t, addr: gw.Addr(), http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Before any configuration: 503, not a crash.
	if code, _, _ := c.get("hello.example.test", "/"); code != http.StatusServiceUnavailable {
		t.Errorf("before config: %d, want 503", code)
	}

	// Publish, wait for the gateway to connect and ACK.
	if err := cp.srv.Update(snapshot(1, ups.port, closedPort, "127.0.0.1", "127.0.0.2", "127.0.0.3")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "gateway to connect", func() bool { return len(cp.srv.Gateways()) == 1 })
	if err := cp.srv.WaitForAck(ctx, 1); err != nil {
		t.Fatalf("WaitForAck(1): %v", err)
	}
	for _, typ := range xds.TypeURLs {
		if v := gw.Versions()[typ]; v != "1" {
			t.Fatalf("after WaitForAck, gateway runs %s version %q", typ, v)
		}
	}
	if g := cp.srv.Gateways()[0]; g.NodeID != "gw-test" || g.LastNack != nil || g.Delta != (protocol == gateway.XDSDelta) || g.State != xds.StateSynced {
		t.Fatalf("gateway status %+v", g)
	}

	t.Run("spread over three", func(t *testing.T) {
		got := c.spread("hello.example.test", 300)
		for _, up := range []string{"up-1", "up-2", "up-3"} {
			if got[up] < 60 {
				t.Errorf("%s got %d of 300 (%v)", up, got[up], got)
			}
		}
	})

	t.Run("headers", func(t *testing.T) {
		code, _, h := c.get("HELLO.example.test:8080", "/x?y=1")
		if code != http.StatusOK {
			t.Fatalf("mixed-case host with port: %d", code)
		}
		up := ups.lastHeaders()
		if got := up.Get("X-Forwarded-For"); got != "127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q", got)
		}
		if got := up.Get("X-Forwarded-Proto"); got != "http" {
			t.Errorf("X-Forwarded-Proto = %q", got)
		}
		if id := up.Get("X-Request-Id"); len(id) != 32 || id != h.Get("X-Request-Id") {
			t.Errorf("X-Request-Id upstream %q, client %q", id, h.Get("X-Request-Id"))
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			host string
			want int
		}{
			{"unknown.example.test", http.StatusNotFound},
			{"empty.example.test", http.StatusServiceUnavailable},
			{"broken.example.test", http.StatusBadGateway},
		} {
			code, body, _ := c.get(tc.host, "/")
			if code != tc.want || len(body) == 0 || len(body) > 64 {
				t.Errorf("%s: %d %q, want %d with a short body", tc.host, code, body, tc.want)
			}
		}
	})

	t.Run("weights 90/10", func(t *testing.T) {
		const n = 2000
		got := c.spread("split.example.test", n)
		share := float64(got["up-1"]) / n
		if share < 0.87 || share > 0.93 || got["up-1"]+got["up-2"] != n {
			t.Errorf("split %v: revision 1 share %.3f, want 0.90±0.03", got, share)
		}
	})

	t.Run("endpoint removed", func(t *testing.T) {
		if n := seriesCount(t, reg, "berth_gateway_requests_total", map[string]string{"route": "default_split"}); n == 0 {
			t.Fatal("no series for the split service before it is removed")
		}
		// The split service goes too: its series must go with it.
		snap := snapshot(2, ups.port, closedPort, "127.0.0.1", "127.0.0.2")
		snap.Services = slices.DeleteFunc(snap.Services, func(s discovery.Service) bool { return s.Name == "split" })
		if err := cp.srv.Update(snap); err != nil {
			t.Fatal(err)
		}
		if err := cp.srv.WaitForAck(ctx, 2); err != nil {
			t.Fatalf("WaitForAck(2): %v", err)
		}
		for _, name := range []string{"berth_gateway_requests_total", "berth_gateway_request_duration_seconds"} {
			if n := seriesCount(t, reg, name, map[string]string{"route": "default_split"}); n != 0 {
				t.Errorf("%d %s series of the removed service left", n, name)
			}
		}
		got := c.spread("hello.example.test", 60)
		if got["up-3"] != 0 || got["up-1"] == 0 || got["up-2"] == 0 {
			t.Errorf("after removing up-3: %v", got)
		}
	})

	t.Run("nack keeps the old config", func(t *testing.T) {
		res, err := xds.Translate(snapshot(3, ups.port, closedPort, "127.0.0.1", "127.0.0.2"), xds.DefaultTranslateOptions())
		if err != nil {
			t.Fatal(err)
		}
		routeBefore := gw.Versions()[resource.RouteType]
		// Valid for Envoy, not for this gateway: a query parameter match.
		vh := res.Routes[0].VirtualHosts
		for _, v := range vh {
			for _, r := range v.Routes {
				r.Match.QueryParameters = []*route.QueryParameterMatcher{{Name: "canary", QueryParameterMatchSpecifier: &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}}}
			}
		}
		if err := cp.srv.Publish(3, res); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		err = cp.srv.WaitForAck(ctx, 3)
		if !errors.Is(err, xds.ErrNacked) {
			t.Fatalf("WaitForAck(3) = %v, want ErrNacked", err)
		}
		n := cp.srv.Gateways()[0].LastNack
		if n == nil || n.TypeURL != resource.RouteType || n.Version != "3" || !strings.Contains(n.Error, "query parameter matches are not supported") {
			t.Fatalf("LastNack = %+v", n)
		}
		if v := gw.Versions()[resource.RouteType]; v != routeBefore {
			t.Errorf("gateway route version %q, want %q (the last good)", v, routeBefore)
		}
		got := c.spread("hello.example.test", 30)
		if got["up-3"] != 0 {
			t.Errorf("after NACK: %v", got)
		}
	})

	t.Run("serves without control plane", func(t *testing.T) {
		cp.stop()
		waitFor(t, "gateway to notice", func() bool { return gaugeValue(t, reg, "berth_gateway_xds_connected") == 0 })
		c.spread("hello.example.test", 30)

		// A control plane comes back on the same address: the gateway
		// reconnects and follows it.
		cp2 := startXDS(t, xdsAddr)
		if err := cp2.srv.Update(snapshot(4, ups.port, closedPort, "127.0.0.1", "127.0.0.2", "127.0.0.3")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "gateway to apply version 4", func() bool {
			vs := gw.Versions()
			return vs[resource.ListenerType] == "4" && vs[resource.RouteType] == "4" && vs[resource.ClusterType] == "4" && vs[resource.EndpointType] == "4"
		})
		if got := c.spread("hello.example.test", 30); got["up-3"] == 0 {
			t.Errorf("after reconnect up-3 gets nothing: %v", got)
		}
	})

	if counterValue(t, reg, "berth_gateway_requests_total", map[string]string{"route": "default_hello", "cluster": "default_hello_r1", "code": "200"}) < 300 {
		t.Error("berth_gateway_requests_total for default_hello 200s below the requests sent")
	}
	if counterValue(t, reg, "berth_gateway_requests_total", map[string]string{"route": "", "cluster": "", "code": "404"}) < 1 {
		t.Error("404s not counted")
	}

	t.Run("graceful shutdown", func(t *testing.T) {
		type result struct {
			code int
			body string
			err  error
		}
		done := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest("GET", "http://"+gw.Addr()+"/slow", nil)
			req.Host = "hello.example.test"
			resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
			if err != nil {
				done <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			done <- result{resp.StatusCode, string(b), err}
		}()
		select {
		case <-ups.slow:
		case <-time.After(10 * time.Second):
			t.Fatal("slow request never reached an upstream")
		}
		stopGW()
		waitFor(t, "gateway to stop accepting", func() bool {
			conn, err := net.DialTimeout("tcp", gw.Addr(), 100*time.Millisecond)
			if err == nil {
				conn.Close()
			}
			return err != nil
		})
		close(ups.release)
		r := <-done
		if r.err != nil || r.code != http.StatusOK {
			t.Fatalf("in-flight request at shutdown: %d %q %v", r.code, r.body, r.err)
		}
		if err := <-gwDone; err != nil {
			t.Fatalf("Run: %v", err)
		}
		gwDone <- nil // for the cleanup
	})
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	return counterValue(t, reg, name, nil)
}

// counterValue reads one counter or gauge series whose labels include want.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	ms := matchingSeries(t, reg, name, want)
	switch {
	case len(ms) == 0:
		return 0
	case ms[0].GetCounter() != nil:
		return ms[0].GetCounter().GetValue()
	}
	return ms[0].GetGauge().GetValue()
}

// seriesCount counts the series of a metric family carrying the labels.
func seriesCount(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) int {
	t.Helper()
	return len(matchingSeries(t, reg, name, want))
}

// matchingSeries are the series of a metric family carrying the labels.
func matchingSeries(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) []*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.Metric
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			out = append(out, m)
		}
	}
	return out
}
