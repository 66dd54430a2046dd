package gateway_test

import (
	"bytes"
	"context"
	"hash/crc32"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/gateway"
	"github.com/berth-dev/berth/gateway/internal/savedpb"
	"github.com/berth-dev/berth/xds"
)

// TestSavedConfigurationServedWithoutControlPlane: a gateway restarted
// while the control plane is away serves the configuration it saved,
// without a failed request, marked stale; when a control plane is back,
// its configuration replaces the saved one whole (a service it no longer
// has is gone), on each ADS protocol.
func TestSavedConfigurationServedWithoutControlPlane(t *testing.T) {
	for _, protocol := range []string{gateway.XDSDelta, gateway.XDSStateOfTheWorld} {
		t.Run(protocol, func(t *testing.T) { testSavedConfiguration(t, protocol) })
	}
}

func testSavedConfiguration(t *testing.T, protocol string) {
	ups := startUpstreams(t)
	dead := closedPort(t)
	dir := filepath.Join(t.TempDir(), "state") // made by the gateway
	cp := startXDS(t, "127.0.0.1:0")
	xdsAddr := cp.srv.Addr()
	withState := func(cfg *gateway.Config) {
		cfg.XDSAddr, cfg.XDSProtocol, cfg.StateDir = xdsAddr, protocol, dir
		cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}

	first := runGateway(t, withState)
	// Readiness (/readyz): no configuration yet, none saved.
	if err := first.gw.CheckReady(context.Background()); err == nil || !strings.Contains(err.Error(), "no configuration") {
		t.Errorf("a gateway with no configuration: CheckReady = %v, want not ready", err)
	}
	publish(t, cp, snapshot(1, ups.port, dead, "127.0.0.1"))
	onlyFrom(t, "first gateway", first.c.spread("hello.example.test", 10), "up-1")
	if err := first.gw.CheckReady(context.Background()); err != nil {
		t.Errorf("a gateway with the control plane's configuration: CheckReady = %v", err)
	}
	if first.gw.Stale() || gaugeValue(t, first.reg, "berth_gateway_config_stale") != 0 {
		t.Error("a gateway that never restored a file reports stale")
	}
	cp.stop()
	first.stop() // writes the state file

	path := filepath.Join(dir, gateway.StateFileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("state file after shutdown: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("state file mode %o, want 600", mode)
	}

	// A new gateway, the control plane still away: the saved routes serve
	// from the first request on.
	second := runGateway(t, withState)
	onlyFrom(t, "restored gateway", second.c.spread("hello.example.test", 50), "up-1") // spread fails on any non-200
	if err := second.gw.CheckReady(context.Background()); err != nil {
		t.Errorf("a gateway serving its saved configuration: CheckReady = %v, want ready", err)
	}
	if !second.gw.Stale() || gaugeValue(t, second.reg, "berth_gateway_config_stale") != 1 {
		t.Errorf("restored gateway: Stale() = %v, berth_gateway_config_stale = %v, want stale",
			second.gw.Stale(), gaugeValue(t, second.reg, "berth_gateway_config_stale"))
	}
	for _, typ := range xds.TypeURLs {
		if v := second.gw.Versions()[typ]; v != "1" {
			t.Errorf("restored gateway runs %s version %q, want 1", typ, v)
		}
	}
	if !strings.Contains(second.logs.String(), "serving the saved configuration") {
		t.Errorf("no log of the restored configuration:\n%s", second.logs)
	}

	// A control plane comes back with hello gone and hello2 new: hello
	// must leave, though the new server never sent it to this gateway.
	cp2 := startXDS(t, xdsAddr)
	snap := snapshot(2, ups.port, dead, "127.0.0.1")
	snap.Services = slices.DeleteFunc(snap.Services, func(s discovery.Service) bool { return s.Name == "hello" })
	snap.Services = append(snap.Services, discovery.Service{Namespace: "default", Name: "hello2",
		Ports:     []discovery.Port{{Name: "http", Port: ups.port, Protocol: "http"}},
		Route:     &discovery.Route{Hosts: []string{"hello2.example.test"}, Paths: []string{"/"}},
		Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: endpoints("127.0.0.2")}}})
	publish(t, cp2, snap)
	waitFor(t, "the restored gateway to follow the control plane", func() bool {
		return !second.gw.Stale() && gaugeValue(t, second.reg, "berth_gateway_config_stale") == 0
	})
	for _, typ := range xds.TypeURLs {
		if v := second.gw.Versions()[typ]; v != "2" {
			t.Errorf("after the control plane's return: %s version %q, want 2", typ, v)
		}
	}
	if code, body, _ := second.c.get("hello.example.test", "/"); code != http.StatusNotFound {
		t.Errorf("hello after it left: %d %q, want 404", code, body)
	}
	onlyFrom(t, "hello2", second.c.spread("hello2.example.test", 10), "up-2")
	second.stop()

	// What the second gateway saved is the control plane's configuration:
	// hello's cluster and load assignment left with it.
	saved := readStateFile(t, path)
	for _, typ := range []string{resource.ClusterType, resource.EndpointType} {
		names := saved[typ]
		if slices.Contains(names, xds.ClusterName("default", "hello", 1)) || !slices.Contains(names, xds.ClusterName("default", "hello2", 1)) {
			t.Errorf("saved %s names %v: want hello2's and not hello's", typ, names)
		}
	}
}

// readStateFile returns the resource names a state file holds by type.
func readStateFile(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f savedpb.File
	var c savedpb.Configuration
	if err := proto.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(f.GetConfiguration(), &c); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, a := range c.GetTypes() {
		var resp discoverypb.DiscoveryResponse
		if err := anypb.UnmarshalTo(a, &resp, proto.UnmarshalOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResources() {
			m, err := r.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			if env, ok := m.(*discoverypb.Resource); ok {
				out[resp.GetTypeUrl()] = append(out[resp.GetTypeUrl()], env.GetName())
				continue
			}
			name := ""
			switch m := m.(type) {
			case interface{ GetClusterName() string }:
				name = m.GetClusterName()
			case interface{ GetName() string }:
				name = m.GetName()
			}
			out[resp.GetTypeUrl()] = append(out[resp.GetTypeUrl()], name)
		}
	}
	return out
}

// stateFile is a state file as a gateway writes it, holding the
// translation of snap state-of-the-world style; mangle may change the
// responses first.
func stateFile(t *testing.T, snap *discovery.Snapshot, mangle func(map[string]*discoverypb.DiscoveryResponse)) []byte {
	t.Helper()
	res, err := xds.Translate(snap, xds.DefaultTranslateOptions())
	if err != nil {
		t.Fatal(err)
	}
	v := "7"
	resps := map[string]*discoverypb.DiscoveryResponse{}
	add := func(typ string, m proto.Message) {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		if resps[typ] == nil {
			resps[typ] = &discoverypb.DiscoveryResponse{TypeUrl: typ, VersionInfo: v}
		}
		resps[typ].Resources = append(resps[typ].Resources, a)
	}
	for _, m := range res.Listeners {
		add(resource.ListenerType, m)
	}
	for _, m := range res.Routes {
		add(resource.RouteType, m)
	}
	for _, m := range res.Clusters {
		add(resource.ClusterType, m)
	}
	for _, m := range res.Endpoints {
		add(resource.EndpointType, m)
	}
	if mangle != nil {
		mangle(resps)
	}
	c := &savedpb.Configuration{Version: v, NodeId: "gw-saved", SavedAt: timestamppb.Now()}
	for _, typ := range xds.TypeURLs {
		if r := resps[typ]; r != nil {
			a, err := anypb.New(r)
			if err != nil {
				t.Fatal(err)
			}
			c.Types = append(c.Types, a)
		}
	}
	cb, err := proto.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&savedpb.File{Configuration: cb, Crc32C: crc32.Checksum(cb, crc32.MakeTable(crc32.Castagnoli))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSavedConfigurationRefused: a state file that is damaged, cut short
// or holds a configuration the gateway would NACK is refused with a log
// naming the file and the reason; the gateway starts empty, answering 503
// as without a file, and is not stale. A good file, built the same way,
// is served (so the refusals are the file's fault).
func TestSavedConfigurationRefused(t *testing.T) {
	ups := startUpstreams(t)
	snap := snapshot(7, ups.port, closedPort(t), "127.0.0.1")
	good := stateFile(t, snap, nil)
	// One byte changed where the file still decodes and compiles (an
	// endpoint's 127.0.0.1 becomes 127.0.0.3): only the checksum refuses it.
	flipped := slices.Clone(good)
	at := bytes.LastIndex(flipped, []byte("127.0.0.1"))
	if at < 0 {
		t.Fatal("no endpoint address in the state file")
	}
	flipped[at+len("127.0.0.1")-1] = '3'
	for _, tc := range []struct {
		name   string
		file   []byte
		reason string // in the log; "" for a file that is served
	}{
		{"good", good, ""},
		{"truncated", good[:len(good)/2], "saved configuration"},
		{"last byte cut", good[:len(good)-1], "saved configuration"},
		{"one byte changed", flipped, "checksum"},
		{"not protobuf", []byte("listeners: all of them\n"), "saved configuration"},
		{"empty", nil, "no configuration in it"},
		{"another gateway's", func() []byte {
			var f savedpb.File
			var c savedpb.Configuration
			if proto.Unmarshal(good, &f) != nil || proto.Unmarshal(f.GetConfiguration(), &c) != nil {
				t.Fatal("cannot read the good file")
			}
			c.NodeId = "gw-other"
			cb, _ := proto.Marshal(&c)
			b, _ := proto.Marshal(&savedpb.File{Configuration: cb, Crc32C: crc32.Checksum(cb, crc32.MakeTable(crc32.Castagnoli))})
			return b
		}(), `saved by node \"gw-other\"`},
		{"nacked resource", stateFile(t, snap, func(r map[string]*discoverypb.DiscoveryResponse) {
			// A listener among the clusters: a response the gateway NACKs.
			r[resource.ClusterType].Resources = append(r[resource.ClusterType].Resources, r[resource.ListenerType].Resources[0])
		}), "has type " + resource.ListenerType + " in a " + resource.ClusterType + " response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, gateway.StateFileName)
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			xdsAddr := closedAddr(t)
			g := runGateway(t, func(cfg *gateway.Config) { cfg.XDSAddr, cfg.StateDir = xdsAddr, dir })
			code, body, _ := g.c.get("hello.example.test", "/")
			if tc.reason == "" {
				if code != http.StatusOK || body != "up-1" || !g.gw.Stale() {
					t.Fatalf("good file: %d %q stale %v, want 200 from up-1, stale", code, body, g.gw.Stale())
				}
				return
			}
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "no configuration yet") {
				t.Errorf("after a refused file: %d %q, want 503 no configuration yet", code, body)
			}
			if g.gw.Stale() || gaugeValue(t, g.reg, "berth_gateway_config_stale") != 0 {
				t.Error("a refused file left the gateway stale")
			}
			logs := g.logs.String()
			var line string
			for l := range strings.SplitSeq(logs, "\n") {
				if strings.Contains(l, "saved configuration refused") {
					line = l
				}
			}
			if !strings.Contains(line, path) || !strings.Contains(line, tc.reason) {
				t.Errorf("refusal log %q: want the file %s and %q\n%s", line, path, tc.reason, logs)
			}
		})
	}
}
