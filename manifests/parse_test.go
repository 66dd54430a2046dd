package manifests

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// TestGolden parses each testdata/*.yaml and compares the result with
// testdata/*.golden: the services as JSON, or for err_*.yaml files the
// exact error text.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			svcs, err := Parse(file, data)
			wantErr := strings.HasPrefix(name, "err_")
			var got []byte
			switch {
			case wantErr && err == nil:
				t.Fatalf("Parse accepted %s: %+v", file, svcs)
			case !wantErr && err != nil:
				t.Fatalf("Parse(%s): %v", file, err)
			case err != nil:
				if svcs != nil {
					t.Errorf("Parse returned services with an error: %+v", svcs)
				}
				got = []byte(err.Error() + "\n")
			default:
				for i := range svcs {
					if err := Validate(&svcs[i]); err != nil {
						t.Errorf("accepted service %d fails Validate: %v", i, err)
					}
				}
				got, err = json.MarshalIndent(svcs, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, '\n')
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Parse(%s) differs from %s:\n got: %s\nwant: %s", file, golden, got, want)
			}
		})
	}
}

func TestParseErrorShape(t *testing.T) {
	data := []byte(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: one}
spec: {image: x}
---
apiVersion: berth.dev/v1
kind: Service
metadata: {name: hello}
spec:
  image: x
  ports: [{name: http, port: 8080, prot: tcp}]
`)
	svcs, err := Parse("examples/hello.yaml", data)
	if svcs != nil {
		t.Errorf("got services %v with an error", svcs)
	}
	want := `examples/hello.yaml: document 2 (Service default/hello): spec.ports[0].prot: unknown field`
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant %s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error is %T, want *Error", err)
	}
	if e.File != "examples/hello.yaml" || e.Doc != 2 || e.Kind != "Service" || e.Name != "default/hello" ||
		len(e.Fields) != 1 || e.Fields[0].Path != "spec.ports[0].prot" {
		t.Errorf("error fields = %+v", e)
	}
}

func TestParseSeveralBadDocuments(t *testing.T) {
	data, err := os.ReadFile("testdata/err_two_bad_docs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse("f.yaml", data)
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 || list[0].Doc != 1 || list[1].Doc != 3 {
		t.Fatalf("error = %#v, want an ErrorList for documents 1 and 3", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Doc != 1 {
		t.Errorf("errors.As(*Error) = %+v, want document 1", e)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "---\n---\n", "# nothing\n", "\ufeff"} {
		svcs, err := Parse("empty.yaml", []byte(in))
		if err != nil || len(svcs) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want nothing", in, svcs, err)
		}
	}
}

func TestSplitDocuments(t *testing.T) {
	tests := []struct {
		in    string
		lines []int
	}{
		{"a: 1\n", []int{1}},
		{"---\na: 1\n", []int{1}},
		{"a: 1\n---\nb: 2\n", []int{1, 2}},
		{"a: 1\n--- # c\nb: 2\n---\n", []int{1, 2, 4}},
		{"a: |\n  ---x\n----\n", []int{1}},
		{"a: 1\r\n---\r\nb: 1\r\n", []int{1, 2}},
	}
	for _, tt := range tests {
		var lines []int
		var joined string
		for _, c := range splitDocuments([]byte(tt.in)) {
			lines = append(lines, c.line)
			joined += string(c.data)
		}
		if joined != tt.in {
			t.Errorf("split(%q) lost text: %q", tt.in, joined)
		}
		if len(lines) != len(tt.lines) {
			t.Errorf("split(%q) lines = %v, want %v", tt.in, lines, tt.lines)
			continue
		}
		for i := range lines {
			if lines[i] != tt.lines[i] {
				t.Errorf("split(%q) lines = %v, want %v", tt.in, lines, tt.lines)
			}
		}
	}
}

func TestLoadExamples(t *testing.T) {
	svcs, err := Load("../examples")
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 {
		t.Fatalf("Load(examples) = %d services, want 2", len(svcs))
	}
	// Sorted by file name: client.yaml, hello.yaml.
	client, hello := svcs[0], svcs[1]
	if client.Key() != "default/client" || hello.Key() != "default/hello" {
		t.Fatalf("services = %s, %s", client.Key(), hello.Key())
	}
	if hello.Spec.Image != "berth.local/hello:v1" || hello.Spec.ReplicaCount() != 3 ||
		hello.Spec.Route == nil || hello.Spec.Route.Hosts[0] != "hello.example.test" ||
		hello.Spec.Resources.Request() != (api.Capacity{MilliCPU: 50, MemoryBytes: 32 << 20}) ||
		hello.Spec.Health == nil || hello.Spec.Health.HTTP.Path != "/healthz" ||
		hello.Spec.Health.Interval.Duration.String() != "1s" {
		t.Errorf("hello = %+v", hello.Spec)
	}
	if client.Spec.Image != hello.Spec.Image || client.Spec.ReplicaCount() != 1 || client.Spec.Route != nil ||
		len(client.Spec.Ports) != 1 || client.Spec.Ports[0] != hello.Spec.Ports[0] {
		t.Errorf("client = %+v", client.Spec)
	}
}

func TestLoadDuplicateAcrossFiles(t *testing.T) {
	svcs, err := Load("testdata/dupdir")
	want := "testdata/dupdir/b.yml: document 2 (Service default/hello): duplicate Service default/hello: already defined in testdata/dupdir/a.yaml document 1"
	if err == nil || err.Error() != want || svcs != nil {
		t.Fatalf("Load = %v, %v\nwant error %s", svcs, err, want)
	}
}

func TestLoadFileAndErrors(t *testing.T) {
	svcs, err := Load("testdata/multi.yaml")
	if err != nil || len(svcs) != 3 {
		t.Fatalf("Load(file) = %d services, %v", len(svcs), err)
	}

	_, err = Load("testdata/missing.yaml")
	if !errors.Is(err, os.ErrNotExist) || err.Error() != "testdata/missing.yaml: no such file or directory" {
		t.Errorf("Load(missing) = %v", err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("# hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrNoManifests) {
		t.Errorf("Load(dir without manifests) = %v, want ErrNoManifests", err)
	}

	// Not recursive; dotfiles and non-manifest extensions are ignored; JSON
	// files are read.
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub.yaml", "x.yaml"), []byte("garbage: ["), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".#lock.yaml"), []byte("garbage: ["), 0o644); err != nil {
		t.Fatal(err)
	}
	js := `{"apiVersion": "berth.dev/v1", "kind": "Service", "metadata": {"name": "j"}, "spec": {"image": "x"}}`
	if err := os.WriteFile(filepath.Join(dir, "j.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	svcs, err = Load(dir)
	if err != nil || len(svcs) != 1 || svcs[0].Key() != "default/j" {
		t.Errorf("Load(dir) = %v, %v", svcs, err)
	}
}

func TestLoadStdin(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdin
	os.Stdin = r
	t.Cleanup(func() { os.Stdin = old; r.Close() })
	go func() {
		w.WriteString("apiVersion: berth.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {image: x, replicas: -2}\n")
		w.Close()
	}()
	_, err = Load(StdinPath)
	want := "<stdin>: document 1 (Service default/a): spec.replicas: must be between 0 and 10000"
	if err == nil || err.Error() != want {
		t.Errorf("Load(-) = %v, want %s", err, want)
	}
}

// Probes may name a port (port: http), as in Kubernetes; liveness takes
// the same fields as readiness, with period as interval's other name.
func TestNamedPortsAndLiveness(t *testing.T) {
	svcs, err := Parse("np.yaml", []byte(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: web}
spec:
  image: berth.local/hello:v1
  ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
  health: {http: {path: /healthz, port: http}}
  liveness: {tcp: {port: admin}, initialDelay: 2s, period: 5s}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := svcs[0].Spec
	if s.Health.HTTP.Port != 8080 || s.Liveness.TCP.Port != 9090 {
		t.Fatalf("named ports: health %d, liveness %d", s.Health.HTTP.Port, s.Liveness.TCP.Port)
	}
	l := s.Liveness
	if l.Interval.Duration != 5*time.Second || l.Period.Duration != 0 || l.InitialDelay.Duration != 2*time.Second || l.FailureThreshold != DefaultLivenessFailures {
		t.Fatalf("liveness defaults: %+v", l)
	}
	for doc, want := range map[string]string{
		`health: {http: {path: /, port: htp}}`:                 `spec.health.http.port: no port named "htp" (spec.ports has http, admin)`,
		`liveness: {tcp: {port: 1}, interval: 5s, period: 6s}`: `spec.liveness.period: is interval's other name`,
		`liveness: {tcp: {port: 1}, failureThreshold: -1}`:     `spec.liveness.failureThreshold: must be between 1 and 100`,
	} {
		_, err := Parse("bad.yaml", []byte(`apiVersion: berth.dev/v1
kind: Service
metadata: {name: web}
spec:
  image: berth.local/hello:v1
  ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
  `+doc+"\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", doc, err, want)
		}
	}
}
