package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/manifests"
)

// What `get services -o yaml` prints parses back to the same spec: a
// manifest (apiVersion, kind, no status, integers as integers), so piping
// it to apply changes nothing. Before it printed protojson's form, which
// apply refused.
func TestServiceYAMLRoundTrips(t *testing.T) {
	var in []api.Service
	for _, f := range []string{"../../manifests/testdata/full.yaml", "../../manifests/testdata/multi.yaml", "../../examples/hello.yaml", "../../examples/client.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := manifests.ParseObjects(filepath.Base(f), data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		in = append(in, objs.Services...)
	}
	var docs []any
	for i := range in {
		manifests.Defaults(&in[i])
		in[i].Status = api.ServiceStatus{Revision: 7}
		in[i].Spec.ImageDigest = "sha256:abc" // server-set: not printed
		docs = append(docs, manifestOf(pb.ToService(pb.FromService(&in[i]))))
	}
	var buf bytes.Buffer
	if err := writeManifests(&buf, docs); err != nil {
		t.Fatal(err)
	}
	back, err := manifests.ParseObjects("get.yaml", buf.Bytes())
	if err != nil {
		t.Fatalf("apply would refuse what get printed: %v\n%s", err, buf.String())
	}
	if len(back.Services) != len(in) {
		t.Fatalf("%d services back, %d printed", len(back.Services), len(in))
	}
	for i := range in {
		got := back.Services[i]
		manifests.Defaults(&got)
		want := in[i].Spec
		want.ImageDigest = ""
		a, _ := json.Marshal(want)
		b, _ := json.Marshal(got.Spec)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: spec changed in the round trip\nprinted from %s\nparsed back %s", in[i].Key(), a, b)
		}
		if mustJSONOf(in[i].Metadata) != mustJSONOf(got.Metadata) {
			t.Errorf("%s: metadata changed: %s -> %s", in[i].Key(), mustJSONOf(in[i].Metadata), mustJSONOf(got.Metadata))
		}
	}
}

func mustJSONOf(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestParseSelector(t *testing.T) {
	sel, err := parseSelector("app=web, tier!=db,canary,!legacy")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"app": "web", "canary": ""}, true},
		{map[string]string{"app": "web", "canary": "", "tier": "db"}, false},
		{map[string]string{"app": "web"}, false},
		{map[string]string{"app": "web", "canary": "y", "legacy": "1"}, false},
		{map[string]string{"app": "api", "canary": ""}, false},
	} {
		if got := sel.matches(c.labels); got != c.want {
			t.Errorf("%v: %v, want %v", c.labels, got, c.want)
		}
	}
	for _, bad := range []string{"=x", "a=b=c", "a b", ","} {
		if _, err := parseSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestExplain(t *testing.T) {
	var b bytes.Buffer
	if err := explain(&b, "spec.health"); err != nil || !strings.Contains(b.String(), "FIELD: service.spec.health") || !strings.Contains(b.String(), "failureThreshold") {
		t.Fatalf("explain spec.health: %v\n%s", err, b.String())
	}
	b.Reset()
	if err := explain(&b, "svc.spec.env"); err != nil || !strings.Contains(b.String(), "map of string") {
		t.Fatalf("explain svc.spec.env: %v\n%s", err, b.String())
	}
	if err := explain(&b, "spec.replica"); err == nil || !strings.Contains(err.Error(), "did you mean service.spec.replicas?") {
		t.Fatalf("explain spec.replica: %v", err)
	}
}

// An instance served only by panic routing says so in READY: its node's
// last report is all there is.
func TestInstancesShowPanicRouting(t *testing.T) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	ivs := []*pb.InstanceView{
		{Instance: &pb.Instance{Id: "web-1", Namespace: "default", Service: "web", Node: "a", Desired: api.DesiredRunning},
			Status: &pb.InstanceStatus{Phase: api.PhaseRunning, Ready: true, Ip: "10.213.0.2"}, PanicRouting: true},
		{Instance: &pb.Instance{Id: "web-2", Namespace: "default", Service: "web", Node: "b", Desired: api.DesiredRunning},
			Status: &pb.InstanceStatus{Phase: api.PhaseRunning, Ready: true, Ip: "10.213.1.2"}},
	}
	printInstances(tw, ivs, painter{})
	tw.Flush()
	lines := strings.Split(b.String(), "\n")
	if !strings.Contains(lines[1], "web-1") || !strings.Contains(lines[1], panicReady) || strings.Contains(lines[2], "panic") || !strings.Contains(lines[2], "true") {
		t.Fatalf("get instances:\n%s", b.String())
	}
}
