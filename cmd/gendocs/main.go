// Command gendocs writes docs/manifest.md, the manifest field reference,
// from the api package's types and their doc comments: every field a
// manifest may set, its type, default and an example. `make docs` runs
// it; a test fails when the file is out of date. `berth explain` prints
// its sections.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strings"
)

// defaults are what the manifests package fills in (manifests/defaults.go)
// or what an absent field means.
var defaults = map[string]string{
	"metadata.namespace":                 "default",
	"spec.replicas":                      "1",
	"spec.ports[].protocol":              "http",
	"spec.route.paths":                   `["/"]`,
	"spec.health.interval":               "10s",
	"spec.health.timeout":                "1s (at most the interval)",
	"spec.health.failureThreshold":       "1",
	"spec.health.initialDelay":           "0s",
	"spec.liveness.interval":             "10s",
	"spec.liveness.timeout":              "1s (at most the interval)",
	"spec.liveness.failureThreshold":     "3",
	"spec.liveness.initialDelay":         "0s",
	"spec.resources.cpu":                 "the node's --default-cpu (1000m)",
	"spec.resources.memory":              "the node's --default-memory (512Mi)",
	"spec.resources.pids":                "the node's --default-pids (1024)",
	"spec.rollout.strategy":              "rolling",
	"spec.rollout.progressDeadline":      "10m",
	"spec.rollout.maxUnavailable":        "0",
	"spec.rollout.maxSurge":              "100%",
	"spec.rollout.analysis.maxErrorRate": "0.05",
	"spec.rollout.analysis.minRequests":  "20",
	"spec.volumes[].readOnly":            "false",
	"spec.secrets[].mountPath":           "none (env only)",
	"spec.securityContext.runAsUser":     "the image's user",
	"spec.securityContext.runAsGroup":    "the image's group",
	"spec.rollout.steps[].pause":         "none",
}

// examples for fields whose type says too little.
var examples = map[string]string{
	"apiVersion":                        "berth.dev/v1",
	"kind":                              "Service",
	"volume.apiVersion":                 "berth.dev/v1",
	"volume.kind":                       "Volume",
	"secret.apiVersion":                 "berth.dev/v1",
	"secret.kind":                       "Secret",
	"metadata.name":                     "hello",
	"metadata.labels":                   "{app: hello, tier: web}",
	"spec.image":                        "berth.local/hello:v1",
	"spec.command":                      `["/hello"]`,
	"spec.args":                         `["serve", "--verbose"]`,
	"spec.env":                          `{LOG_LEVEL: debug}`,
	"spec.replicas":                     "3",
	"spec.ports[].name":                 "http",
	"spec.ports[].port":                 "8080",
	"spec.resources.cpu":                "250m",
	"spec.resources.memory":             "128Mi",
	"spec.health.http.path":             "/healthz",
	"spec.health.http.port":             "http",
	"spec.liveness.tcp.port":            "8080",
	"spec.route.hosts":                  `["hello.example.test"]`,
	"spec.route.paths":                  `["/api"]`,
	"spec.nodeSelector":                 "{zone: a}",
	"spec.rollout.strategy":             "canary",
	"spec.rollout.steps":                "[{weight: 10, pause: 1m}, {weight: 50, pause: promote}, {weight: 100}]",
	"spec.rollout.maxSurge":             `"25%"`,
	"spec.rollout.canaryHeader":         "{name: x-canary, value: always}",
	"spec.rollout.sticky":               "{cookie: user}",
	"spec.volumes":                      "[{name: data, mountPath: /data}]",
	"spec.volumeTemplates":              "[{name: data, mountPath: /data, size: 1Gi}]",
	"spec.secrets":                      "[{name: db, env: {DB_PASSWORD: password}}]",
	"spec.securityContext.capabilities": `{drop: ["ALL"]}`,
}

type docs struct {
	types  map[string]*ast.TypeSpec
	tdocs  map[string]string
	fields map[string]map[string]string // type -> field -> doc
}

func load(dir string) (*docs, error) {
	fset := token.NewFileSet()
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	d := &docs{types: map[string]*ast.TypeSpec{}, tdocs: map[string]string{}, fields: map[string]map[string]string{}}
	{
		for _, f := range files {
			for _, decl := range f.Decls {
				gd, ok := decl.(*ast.GenDecl)
				if !ok || gd.Tok != token.TYPE {
					continue
				}
				for _, spec := range gd.Specs {
					ts := spec.(*ast.TypeSpec)
					d.types[ts.Name.Name] = ts
					text := ts.Doc.Text()
					if text == "" {
						text = gd.Doc.Text()
					}
					d.tdocs[ts.Name.Name] = oneParagraph(text)
					st, ok := ts.Type.(*ast.StructType)
					if !ok {
						continue
					}
					fd := map[string]string{}
					for _, fl := range st.Fields.List {
						for _, n := range fl.Names {
							fd[n.Name] = oneParagraph(fl.Doc.Text())
						}
					}
					d.fields[ts.Name.Name] = fd
				}
			}
		}
	}
	return d, nil
}

func oneParagraph(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// field is one documented manifest field.
type field struct {
	path, typ, doc string
}

func typeName(e ast.Expr) (name string, list, mp, ptr bool) {
	switch t := e.(type) {
	case *ast.StarExpr:
		n, l, m, _ := typeName(t.X)
		return n, l, m, true
	case *ast.ArrayType:
		n, _, _, _ := typeName(t.Elt)
		return n, true, false, false
	case *ast.MapType:
		n, _, _, _ := typeName(t.Value)
		return n, false, true, false
	case *ast.Ident:
		return t.Name, false, false, false
	case *ast.SelectorExpr:
		return t.Sel.Name, false, false, false
	}
	return "?", false, false, false
}

var scalar = map[string]string{
	"string": "string", "int32": "integer", "int64": "integer", "uint32": "integer", "int": "integer",
	"bool": "boolean", "float64": "number", "Duration": "duration (\"5s\", \"1m30s\")", "Time": "timestamp",
	"Pause": "duration or \"promote\"", "IntOrPercent": "integer or percentage (\"25%\")",
}

// serverSet fields are the control plane's: listed so a reader of `get -o
// yaml` knows them, never to be written.
var serverSet = map[string]bool{"imageDigest": true, "restartedAt": true, "status": true}

func (d *docs) walk(typ, prefix string, out *[]field) {
	ts := d.types[typ]
	st, ok := ts.Type.(*ast.StructType)
	if !ok {
		return
	}
	for _, fl := range st.Fields.List {
		if len(fl.Names) == 0 || fl.Tag == nil {
			continue
		}
		tag := reflect.StructTag(strings.Trim(fl.Tag.Value, "`")).Get("json")
		jname := strings.Split(tag, ",")[0]
		if jname == "" || jname == "-" || serverSet[jname] {
			continue
		}
		name, list, mp, _ := typeName(fl.Type)
		path := prefix + jname
		doc := d.fields[typ][fl.Names[0].Name]
		if doc == "" {
			doc = d.tdocs[name]
		}
		t, isScalar := scalar[name]
		if !isScalar {
			t = "object (" + name + ")"
		}
		switch {
		case list:
			t = "list of " + t
		case mp:
			t = "map of " + t
		}
		*out = append(*out, field{path: path, typ: t, doc: doc})
		if !isScalar && !mp {
			child := path + "."
			if list {
				child = path + "[]."
			}
			d.walk(name, child, out)
		}
	}
}

func render(d *docs) []byte {
	var b bytes.Buffer
	b.WriteString(`# Manifest field reference

Generated from the api package's types by ` + "`make docs`" + ` (cmd/gendocs):
every field a manifest may set, its type, its default and an example.
` + "`berth explain PATH`" + ` (e.g. ` + "`berth explain service.spec.health`" + `)
prints the same from the binary. Fields the control plane sets
(` + "`status`, `spec.imageDigest`, `spec.restartedAt`" + `) are left out: a manifest
never carries them, and ` + "`berth get -o yaml`" + ` does not print them.
`)
	for _, kind := range []string{"Service", "Volume", "Secret"} {
		fmt.Fprintf(&b, "\n## %s\n\n%s\n", kind, d.tdocs[kind])
		var fields []field
		d.walk(kind, "", &fields)
		for _, f := range fields {
			fmt.Fprintf(&b, "\n### %s.%s\n\n", strings.ToLower(kind), f.path)
			fmt.Fprintf(&b, "- type: %s\n", f.typ)
			key := f.path
			if kind != "Service" {
				key = strings.ToLower(kind) + "." + f.path
			}
			_ = key
			if v, ok := defaults[key]; ok {
				fmt.Fprintf(&b, "- default: %s\n", v)
			}
			if v, ok := examples[key]; ok && v != "" {
				fmt.Fprintf(&b, "- example: `%s: %s`\n", f.path[strings.LastIndex(f.path, ".")+1:], v)
			}
			if f.doc != "" {
				fmt.Fprintf(&b, "\n%s\n", f.doc)
			}
		}
	}
	return b.Bytes()
}

func main() {
	dir := flag.String("api", "api", "the api package's directory")
	out := flag.String("o", "docs/manifest.md", "where to write")
	flag.Parse()
	d, err := load(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, render(d), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}
