package gateway

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/xds"
)

// savedSnapshot is hello.example.test on 127.0.0.1 and .2, translated
// and saved as a delta stream would (delta) or a state-of-the-world one.
func savedSnapshot(t testing.TB, delta bool) *savedConfig {
	t.Helper()
	snap := &discovery.Snapshot{Version: 3, Services: []discovery.Service{{
		Namespace: "default", Name: "hello", Ports: []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}},
		Route: &discovery.Route{Hosts: []string{"hello.example.test"}, Paths: []string{"/"}},
		Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: []discovery.Endpoint{
			{Instance: "a", Node: "n1", IP: "127.0.0.1", Ready: true},
			{Instance: "b", Node: "n1", IP: "127.0.0.2", Ready: true},
		}}},
	}}}
	res, err := xds.Translate(snap, xds.DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	c := &savedConfig{savedAt: time.Now().Add(-time.Minute).UTC(), nodeID: "test", version: "3"}
	add := func(typ string, ms []proto.Message) {
		resp := &discoverypb.DiscoveryResponse{TypeUrl: typ, VersionInfo: "3"}
		for _, m := range ms {
			a, err := anypb.New(m)
			if err != nil {
				t.Fatal(err)
			}
			if delta {
				name, err := resourceName(a)
				if err != nil {
					t.Fatal(err)
				}
				if a, err = anypb.New(&discoverypb.Resource{Name: name, Version: "3", Resource: a}); err != nil {
					t.Fatal(err)
				}
			}
			resp.Resources = append(resp.Resources, a)
		}
		c.types = append(c.types, resp)
	}
	add(resource.ClusterType, messages(res.Clusters))
	add(resource.EndpointType, messages(res.Endpoints))
	add(resource.ListenerType, messages(res.Listeners))
	add(resource.RouteType, messages(res.Routes))
	return c
}

func TestSavedEncodeDecode(t *testing.T) {
	for _, delta := range []bool{true, false} {
		want := savedSnapshot(t, delta)
		b, err := encodeSaved(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeSaved(b)
		if err != nil {
			t.Fatalf("delta %v: %v", delta, err)
		}
		if !got.savedAt.Equal(want.savedAt) || got.nodeID != want.nodeID || got.version != want.version || len(got.types) != len(want.types) {
			t.Fatalf("delta %v: got %v %q %d types, want %v %q %d", delta, got.savedAt, got.version, len(got.types), want.savedAt, want.version, len(want.types))
		}
		for i := range want.types {
			if !proto.Equal(got.types[i], want.types[i]) {
				t.Errorf("delta %v: type %d differs", delta, i)
			}
		}
		if _, err := decodeSaved(b[:len(b)-3]); err == nil {
			t.Errorf("delta %v: a file cut short was accepted", delta)
		}
		// A type twice: which one would be served?
		twice := *want
		twice.types = append(slices.Clone(want.types), want.types[2])
		if b, err = encodeSaved(&twice); err != nil {
			t.Fatal(err)
		}
		if _, err := decodeSaved(b); err == nil || !strings.Contains(err.Error(), "listed twice") {
			t.Errorf("delta %v: a type listed twice: %v", delta, err)
		}
	}
}

// TestRestoreFileRefusesOldOrHuge: a saved configuration older than
// StateMaxAge, or larger than any this gateway writes, is not served; a
// recent one is.
func TestRestoreFileRefusesOldOrHuge(t *testing.T) {
	path := filepath.Join(t.TempDir(), StateFileName)
	write := func(savedAt time.Time) {
		t.Helper()
		c := savedSnapshot(t, true)
		c.savedAt = savedAt
		b, err := encodeSaved(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	restored := func() bool {
		c := deltaClient(t)
		c.g.cfg.StateMaxAge = time.Hour
		c.restoreFile(path)
		return c.g.table.Load() != nil
	}
	write(time.Now().Add(-2 * time.Hour))
	if restored() {
		t.Error("a configuration saved two hours ago was served with StateMaxAge 1h")
	}
	write(time.Now().Add(-time.Minute))
	if !restored() {
		t.Fatal("a configuration saved a minute ago was not served")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func(old int) { maxSavedBytes = old }(maxSavedBytes)
	maxSavedBytes = int(fi.Size()) - 1
	if restored() {
		t.Error("a file larger than maxSavedBytes was served")
	}
	if _, err := readSaved(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("readSaved of a file over the bound: %v", err)
	}
}

// TestRestoredDeltaStaleUntilEachNameAnswered: a restored configuration
// is held without versions, so the next stream asks for every resource
// again; the gateway is stale until every saved resource was sent again
// or removed, and a resource the control plane no longer has leaves.
func TestRestoredDeltaStaleUntilEachNameAnswered(t *testing.T) {
	c := deltaClient(t)
	if err := c.restore(savedSnapshot(t, true)); err != nil {
		t.Fatal(err)
	}
	if !c.g.Stale() || len(c.stale) != 4 {
		t.Fatalf("after restore: Stale() %v, stale types %v", c.g.Stale(), c.stale)
	}
	for typ, names := range c.held {
		for name, v := range names {
			if v != "" {
				t.Errorf("restored %s %q held at version %q, want none", typ, name, v)
			}
		}
	}
	hello := xds.ClusterName("default", "hello", 1)
	if c.held[resource.ClusterType][hello] != "" || len(c.held[resource.ClusterType]) != 1 {
		t.Fatalf("restored clusters %v, want %s", c.held[resource.ClusterType], hello)
	}
	if tb := c.g.table.Load(); tb == nil || !tb.hasListener {
		t.Fatal("restored configuration not served")
	}

	// The control plane sends the endpoints, listener and routes again:
	// those types are answered. The clusters stay stale until hello's
	// cluster is answered too (here: removed).
	fresh := savedSnapshot(t, true)
	for _, resp := range fresh.types[1:] {
		d := &discoverypb.DeltaDiscoveryResponse{TypeUrl: resp.GetTypeUrl(), SystemVersionInfo: "9", Nonce: "n"}
		rs, err := namedResources(resp)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			r.Version = "9"
			d.Resources = append(d.Resources, r)
		}
		if ack := c.handleDelta(d); ack.GetErrorDetail() != nil {
			t.Fatalf("%s: NACK %v", resp.GetTypeUrl(), ack.GetErrorDetail())
		}
	}
	if !c.g.Stale() || !c.stale[resource.ClusterType] || len(c.stale) != 1 {
		t.Fatalf("clusters unanswered: Stale() %v, stale types %v, want clusters only", c.g.Stale(), c.stale)
	}
	// The control plane no longer has hello's cluster.
	if ack := c.handleDelta(&discoverypb.DeltaDiscoveryResponse{TypeUrl: resource.ClusterType, SystemVersionInfo: "9", Nonce: "n", RemovedResources: []string{hello}}); ack.GetErrorDetail() != nil {
		t.Fatalf("removal NACKed: %v", ack.GetErrorDetail())
	}
	if c.g.Stale() || len(c.stale) != 0 || metricValue(t, c.g.metrics.configStale) != 0 {
		t.Fatalf("every saved resource answered: Stale() %v, stale types %v", c.g.Stale(), c.stale)
	}
	if _, ok := c.state.clusters[hello]; ok {
		t.Error("a removed saved cluster is still held")
	}
}

// TestRestoreRefusesWhole: a configuration with one bad type changes
// nothing, not even the types before it.
func TestRestoreRefusesWhole(t *testing.T) {
	for _, delta := range []bool{true, false} {
		c := deltaClient(t)
		if !delta {
			c.g.cfg.XDSProtocol = XDSStateOfTheWorld
		}
		saved := savedSnapshot(t, delta)
		routes := saved.types[3]
		routes.Resources = append(routes.Resources, saved.types[0].Resources[0]) // a cluster among routes
		if err := c.restore(saved); err == nil {
			t.Fatalf("delta %v: restore accepted a cluster among routes", delta)
		}
		if c.g.table.Load() != nil || c.g.Stale() || len(c.state.versions) != 0 || len(c.held) != 0 {
			t.Errorf("delta %v: a refused configuration changed the client", delta)
		}
	}
}

// TestConfigSaverCoalesces: a burst of accepted responses is one write,
// made after the interval; stopping writes what is left; the file is 0600
// and reads back as the last configuration.
func TestConfigSaverCoalesces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", StateFileName)
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "w"}, []string{"result"})
	s := newConfigSaver(path, "test", slog.New(slog.DiscardHandler), writes)
	s.interval = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.run(ctx) }()

	saved := savedSnapshot(t, true)
	burst := func(version string) {
		for _, resp := range saved.types {
			rs, err := namedResources(resp)
			if err != nil {
				t.Fatal(err)
			}
			s.acceptedDelta(resp.GetTypeUrl(), version, slices.Collect(maps.Values(rs)), nil)
		}
	}
	burst("3")
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, writes.WithLabelValues("ok")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := metricValue(t, writes.WithLabelValues("ok")); n != 1 {
		t.Errorf("%v writes for one burst, want 1", n)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o, want 600", fi.Mode().Perm())
	}
	// Removed at shutdown, before the interval: written by the stop.
	s.acceptedDelta(resource.EndpointType, "4", nil, []string{xds.ClusterName("default", "hello", 1)})
	cancel()
	<-done
	if n := metricValue(t, writes.WithLabelValues("ok")); n != 2 {
		t.Errorf("%v writes after stop, want 2", n)
	}
	got, err := readSaved(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.version != "4" || len(got.types) != 4 || got.types[1].GetTypeUrl() != resource.EndpointType || len(got.types[1].GetResources()) != 0 || got.types[1].GetVersionInfo() != "4" {
		t.Errorf("saved after stop: version %q, %d types, endpoints %v", got.version, len(got.types), got.types[1])
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("state directory holds %d entries, want the file alone", len(ents))
	}
}

// metricValue reads a counter or gauge.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.GetCounter() != nil {
		return d.GetCounter().GetValue()
	}
	return d.GetGauge().GetValue()
}
