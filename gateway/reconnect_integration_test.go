package gateway_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/gateway"
)

// logBuffer collects a gateway's log records.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runningGateway is a gateway whose Run the test may end before its
// cleanup does.
type runningGateway struct {
	gw   *gateway.Gateway
	c    *client
	reg  *prometheus.Registry
	logs *logBuffer
	stop func() // ends Run and waits for it; idempotent
}

func runGateway(t *testing.T, opt func(*gateway.Config)) *runningGateway {
	t.Helper()
	reg, logs := prometheus.NewRegistry(), &logBuffer{}
	cfg := gateway.DefaultConfig()
	cfg.ListenAddr, cfg.NodeID, cfg.Registerer = "127.0.0.1:0", "gw-saved", reg
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.LoadReporting = false
	opt(&cfg)
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("gateway Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &runningGateway{gw: gw, reg: reg, logs: logs, stop: stop,
		c: &client{t: t, addr: gw.Addr(), http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func closedPort(t *testing.T) uint32 {
	_, port, _ := net.SplitHostPort(closedAddr(t))
	var p uint32
	for _, c := range port {
		p = p*10 + uint32(c-'0')
	}
	return p
}

// TestReconnectAfterOutage: with the default backoff, a gateway is back
// on a control plane that was away for 10 s (long enough for gRPC's own
// backoff to reach its cap) within 3 s of its return.
func TestReconnectAfterOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 10 s outage")
	}
	ups := startUpstreams(t)
	dead := closedPort(t)
	cp := startXDS(t, "127.0.0.1:0")
	xdsAddr := cp.srv.Addr()
	g := runGateway(t, func(cfg *gateway.Config) { cfg.XDSAddr = xdsAddr }) // default backoff
	publish(t, cp, snapshot(1, ups.port, dead, "127.0.0.1"))
	cp.stop()
	waitFor(t, "the gateway to notice", func() bool { return gaugeValue(t, g.reg, "berth_gateway_xds_connected") == 0 })
	time.Sleep(10 * time.Second) // the outage itself, not a wait for a condition

	back := time.Now()
	cp2 := startXDS(t, xdsAddr)
	if err := cp2.srv.Update(snapshot(2, ups.port, dead, "127.0.0.2")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), back.Add(3*time.Second))
	defer cancel()
	for len(cp2.srv.Gateways()) == 0 {
		if ctx.Err() != nil {
			t.Fatalf("not connected within 3 s of the control plane's return\n%s", g.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cp2.srv.WaitForAck(ctx, 2); err != nil {
		t.Fatalf("not ACKed within 3 s of the control plane's return: %v\n%s", err, g.logs)
	}
	t.Logf("ACKed %v after the control plane's return", time.Since(back).Round(time.Millisecond))
	onlyFrom(t, "after the return", g.c.spread("hello.example.test", 10), "up-2")
}
