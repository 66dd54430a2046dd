package manifests

import (
	"github.com/berth-dev/berth/api"
	"slices"
	"strings"
	"testing"
	"time"
)

const volumeManifests = `apiVersion: berth.dev/v1
kind: Volume
metadata: {name: data}
spec: {size: 1Gi}
---
apiVersion: berth.dev/v1
kind: Service
metadata: {name: db}
spec:
  image: berth.local/hello:v1
  volumes:
    - {name: data, mountPath: /data}
    - {name: scratch, mountPath: /scratch, tmpfs: true, size: 64Mi}
  volumeTemplates:
    - {name: wal, mountPath: /wal, size: 256Mi}
`

func TestParseVolumes(t *testing.T) {
	objs, err := ParseObjects("v.yaml", []byte(volumeManifests))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Volumes) != 1 || objs.Volumes[0].Key() != "default/data" || objs.Volumes[0].Spec.Size != "1Gi" {
		t.Fatalf("volumes = %+v", objs.Volumes)
	}
	if len(objs.Services) != 1 {
		t.Fatalf("services = %+v", objs.Services)
	}
	spec := objs.Services[0].Spec
	if got := spec.VolumeNames("default", 2); strings.Join(got, ",") != "default/data,default/wal-2" {
		t.Fatalf("volume names = %v", got)
	}
}

func TestVolumeErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"    - {name: data, mountPath: data}\n", "spec.volumes[0].mountPath: must be an absolute path"},
		{"    - {name: data, mountPath: /d}\n    - {name: other, mountPath: /d}\n", "spec.volumes[1].mountPath: /d is already mounted by spec.volumes[0]"},
		{"    - {name: data, mountPath: /d, size: 1Gi}\n", "spec.volumes[0].size: only tmpfs mounts take a size"},
		{"    - {name: Bad_Name, mountPath: /d}\n", "spec.volumes[0].name"},
		{"    - {name: data, mountPath: /d/../e}\n", "must be a clean path"},
		{"    - {name: data, mountPath: /d, tmpfs: true, size: lots}\n", "spec.volumes[0].size: invalid memory"},
		{"    - {name: data, mountPth: /d}\n", "spec.volumes[0].mountPth: unknown field"},
	} {
		doc := "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: db}\nspec:\n  image: x\n  volumes:\n" + tc.doc
		_, err := ParseObjects("s.yaml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.doc, err, tc.want)
		}
	}
	_, err := ParseObjects("v.yaml", []byte("apiVersion: berth.dev/v1\nkind: Volume\nmetadata: {name: data}\nspec: {size: huge}\n"))
	if err == nil || !strings.Contains(err.Error(), "spec.size") {
		t.Fatalf("bad volume size: %v", err)
	}
}

func TestParseRollout(t *testing.T) {
	doc := "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  rollout:\n    strategy: canary\n    steps: [{weight: 10, pause: 1m}, {weight: 50, pause: promote}, {weight: 100}]\n    analysis: {maxErrorRate: 0.05, minRequests: 20}\n"
	objs, err := ParseObjects("r.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r := objs.Services[0].Spec.Rollout
	if r == nil || len(r.Steps) != 3 || r.Steps[1].Pause != "promote" || r.Steps[2].Weight != 100 || r.Analysis.MinRequests != 20 {
		t.Fatalf("rollout = %+v", r)
	}
	for _, bad := range []struct{ steps, want string }{
		{"[{weight: -1}]", "spec.rollout.steps[0].weight: must be a non-negative integer"},
		{"[{weight: 150}]", "spec.rollout.steps[0].weight: must be between 1 and 100"},
		{"[{weight: 50}, {weight: 10}]", "spec.rollout.steps[1].weight: must not be below"},
		{"[{weight: 10, pause: soon}]", "spec.rollout.steps[0].pause"},
	} {
		doc := "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  rollout:\n    strategy: canary\n    steps: " + bad.steps + "\n"
		if _, err := ParseObjects("r.yaml", []byte(doc)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want %q", bad.steps, err, bad.want)
		}
	}
}

func TestParseRolloutStickyDeadlineLatency(t *testing.T) {
	head := "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  rollout:\n    strategy: canary\n    steps: [{weight: 10}]\n"
	good := head + "    sticky: {cookie: session}\n    progressDeadline: 2m\n    analysis: {maxLatency: 250ms, maxErrorRateIncrease: 0.02}\n"
	objs, err := ParseObjects("r.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	r := objs.Services[0].Spec.Rollout
	if r.Sticky.Cookie != "session" || r.ProgressDeadline.Duration != 2*time.Minute || r.Analysis.MaxLatency.Duration != 250*time.Millisecond || r.Analysis.MaxErrorRateIncrease != 0.02 {
		t.Fatalf("rollout = %+v", r)
	}
	for _, bad := range []struct{ extra, want string }{
		{"    sticky: {}\n", "spec.rollout.sticky: set exactly one of header and cookie"},
		{"    sticky: {header: x-user, cookie: s}\n", "spec.rollout.sticky: set exactly one"},
		{"    sticky: {header: \"bad header\"}\n", "spec.rollout.sticky.header: must be an HTTP header name"},
		{"    sticky: {header: X-Berth-Cohort}\n", "spec.rollout.sticky.header: x-berth-cohort is what the gateway derives"},
		{"    sticky: {cookie: \"a;b\"}\n", "spec.rollout.sticky.cookie: must be a cookie name"},
		{"    progressDeadline: soon\n", "spec.rollout.progressDeadline"},
		{"    analysis: {maxErrorRateIncrease: 2}\n", "spec.rollout.analysis.maxErrorRateIncrease: must be between 0 and 1"},
	} {
		if _, err := ParseObjects("r.yaml", []byte(head+bad.extra)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want %q", bad.extra, err, bad.want)
		}
	}
}

// The form: a pause with no duration waits for promote; a pause
// may also be written as a mapping.
func TestParseRolloutPauseForms(t *testing.T) {
	head := "apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  rollout:\n    strategy: canary\n    steps:\n"
	for _, tc := range []struct {
		steps string
		want  []api.Pause
	}{
		{"    - {weight: 10, pause: 1m}\n    - {weight: 50, pause: 2m}\n    - {weight: 100}\n", []api.Pause{"1m", "2m", ""}},
		{"    - {weight: 10, pause: {duration: 30s}}\n    - {weight: 50, pause: {}}\n    - {weight: 100}\n", []api.Pause{"30s", api.PauseUntilPromoted, ""}},
		{"    - weight: 10\n      pause:\n    - {weight: 50, pause: promote}\n", []api.Pause{api.PauseUntilPromoted, api.PauseUntilPromoted}},
	} {
		objs, err := ParseObjects("r.yaml", []byte(head+tc.steps))
		if err != nil {
			t.Fatalf("%q: %v", tc.steps, err)
		}
		var got []api.Pause
		for _, st := range objs.Services[0].Spec.Rollout.Steps {
			got = append(got, st.Pause)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%q: pauses %q, want %q", tc.steps, got, tc.want)
		}
	}
	for _, bad := range []struct{ steps, want string }{
		{"    - {weight: 10, pause: {duration: 1m, until: x}}\n", `spec.rollout.steps[0].pause: unknown field "until" in pause (want duration)`},
		{"    - {weight: 10, pause: {duration: soon}}\n", "spec.rollout.steps[0].pause: must be a duration"},
		{"    - {weight: 10, pause: [1m]}\n", "spec.rollout.steps[0].pause: must be a duration like"},
	} {
		if _, err := ParseObjects("r.yaml", []byte(head+bad.steps)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want %q", bad.steps, err, bad.want)
		}
	}
}
