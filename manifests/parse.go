package manifests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/api"
	"sigs.k8s.io/yaml"
)

// StdinPath, given to Load, reads manifests from standard input.
const StdinPath = "-"

// stdinName names standard input in errors.
const stdinName = "<stdin>"

// Parse reads the manifests in data, which came from file (used only in
// errors). data holds one or more YAML (or JSON) documents separated by
// "---" lines; empty documents are skipped. Each object is decoded
// strictly, defaulted and validated. On any error Parse returns no services
// and a *Error, or an ErrorList when several documents are wrong.
func Parse(file string, data []byte) ([]api.Service, error) {
	objs, errs := parseObjects(file, data)
	errs = append(errs, checkDuplicates(objs)...)
	if len(errs) > 0 {
		return nil, asError(errs)
	}
	return services(objs), nil
}

// Load reads manifests from path: a file, "-" for standard input, or a
// directory, whose *.yaml, *.yml and *.json files are read in name order
// (not recursively; names starting with "." are skipped). An object defined
// twice is an error naming both places. Errors are as for Parse.
func Load(path string) ([]api.Service, error) {
	objs, err := loadObjects(path)
	if err != nil {
		return nil, err
	}
	return services(objs), nil
}

func loadObjects(path string) ([]object, error) {
	files, err := manifestFiles(path)
	if err != nil {
		return nil, err
	}
	var (
		objs []object
		errs []*Error
	)
	for _, f := range files {
		data, err := readManifest(f)
		if err != nil {
			errs = append(errs, fileError(displayName(f), err))
			continue
		}
		o, e := parseObjects(displayName(f), data)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	errs = append(errs, checkDuplicates(objs)...)
	if len(errs) > 0 {
		return nil, asError(errs)
	}
	return objs, nil
}

// manifestFiles lists the files Load reads for path.
func manifestFiles(path string) ([]string, error) {
	if path == StdinPath {
		return []string{path}, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fileError(path, err)
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path) // sorted by name
	if err != nil {
		return nil, fileError(path, err)
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		switch strings.ToLower(filepath.Ext(name)) {
		case ".yaml", ".yml", ".json":
		default:
			continue
		}
		if strings.HasPrefix(name, ".") {
			continue
		}
		f := filepath.Join(path, name)
		if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
			continue // a directory, or a dangling link
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, fileError(path, ErrNoManifests)
	}
	return files, nil
}

func readManifest(path string) ([]byte, error) {
	if path == StdinPath {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

func displayName(path string) string {
	if path == StdinPath {
		return stdinName
	}
	return path
}

// fileError is an error about a whole file. A path error's own path is
// dropped: the Error already names the file.
func fileError(file string, err error) *Error {
	msg := err.Error()
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		msg = pe.Err.Error()
	}
	return &Error{File: file, Msg: msg, Err: err}
}

// object is one decoded, defaulted and valid document.
type object struct {
	file  string
	doc   int
	kind  string
	meta  api.ObjectMeta
	value any // *api.Service, *api.Volume or *api.Secret
}

func (o *object) name() string { return o.meta.Namespace + "/" + o.meta.Name }

// Objects are the resources a set of manifests declares.
type Objects struct {
	Services []api.Service
	Volumes  []api.Volume
	Secrets  []api.Secret
}

func collect(objs []object) Objects {
	var out Objects
	for _, o := range objs {
		switch v := o.value.(type) {
		case *api.Service:
			out.Services = append(out.Services, *v)
		case *api.Volume:
			out.Volumes = append(out.Volumes, *v)
		case *api.Secret:
			out.Secrets = append(out.Secrets, *v)
		}
	}
	return out
}

// LoadObjects is Load for every kind: Services, Volumes and Secrets.
func LoadObjects(path string) (Objects, error) {
	objs, err := loadObjects(path)
	if err != nil {
		return Objects{}, err
	}
	return collect(objs), nil
}

// ParseObjects is Parse for every kind: Services, Volumes and Secrets.
func ParseObjects(file string, data []byte) (Objects, error) {
	objs, errs := parseObjects(file, data)
	errs = append(errs, checkDuplicates(objs)...)
	if len(errs) > 0 {
		return Objects{}, asError(errs)
	}
	return collect(objs), nil
}

func services(objs []object) []api.Service {
	var out []api.Service
	for _, o := range objs {
		if s, ok := o.value.(*api.Service); ok {
			out = append(out, *s)
		}
	}
	return out
}

// checkDuplicates reports every object whose kind, namespace and name an
// earlier object already had.
func checkDuplicates(objs []object) []*Error {
	var errs []*Error
	first := map[string]*object{}
	for i := range objs {
		o := &objs[i]
		key := o.kind + " " + o.name()
		if f, dup := first[key]; dup {
			errs = append(errs, &Error{
				File: o.file, Doc: o.doc, Kind: o.kind, Name: o.name(),
				Msg: fmt.Sprintf("duplicate %s %s: already defined in %s document %d", o.kind, o.name(), f.file, f.doc),
			})
			continue
		}
		first[key] = o
	}
	return errs
}

// parseObjects decodes every document of one file. It returns the objects
// of the good documents and an error for each bad one.
func parseObjects(file string, data []byte) ([]object, []*Error) {
	var (
		objs []object
		errs []*Error
		doc  int
	)
	for _, chunk := range splitDocuments(data) {
		generic, err := yamlToGeneric(chunk.data)
		if err != nil {
			doc++
			errs = append(errs, &Error{File: file, Doc: doc, Msg: yamlErrorMessage(err, chunk)})
			continue
		}
		if generic == nil {
			continue // an empty document
		}
		doc++
		obj, fieldErrs := decodeDocument(generic)
		if len(fieldErrs) > 0 {
			e := &Error{File: file, Doc: doc, Kind: obj.kind, Fields: fieldErrs}
			if obj.meta.Name != "" {
				e.Name = obj.name()
			}
			errs = append(errs, e)
			continue
		}
		obj.file, obj.doc = file, doc
		objs = append(objs, obj)
	}
	return objs, errs
}

type chunk struct {
	data []byte
	line int // 1-based line of data's first line in the file
}

// splitDocuments cuts data at lines starting with "---" followed by
// nothing or a blank. The separator line starts the next document, so the
// YAML parser still sees anything after the marker ("--- # comment").
func splitDocuments(data []byte) []chunk {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	var (
		chunks []chunk
		cur    = chunk{line: 1}
		start  int
		line   = 1
		pos    int
	)
	for pos < len(data) {
		end := bytes.IndexByte(data[pos:], '\n')
		next := len(data)
		if end >= 0 {
			next = pos + end + 1
		}
		if isSeparator(data[pos:next]) && pos > start {
			cur.data = data[start:pos]
			chunks = append(chunks, cur)
			cur, start = chunk{line: line}, pos
		}
		pos = next
		line++
	}
	cur.data = data[start:]
	return append(chunks, cur)
}

func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("---"))
	return ok && (len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\r' || rest[0] == '\n')
}

// yamlToGeneric parses one YAML document into the generic JSON form
// (numbers as json.Number). An empty document yields nil.
func yamlToGeneric(doc []byte) (v any, err error) {
	defer func() {
		// The YAML library is not ours; a panic on hostile input must not
		// take down the API server or the CLI.
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: parser failed: %v", r)
		}
	}()
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	return v, nil
}

var yamlLineRE = regexp.MustCompile(`\bline (\d+)`)

// yamlParserProblems are the errors of the YAML library's parser (as
// opposed to its scanner or decoder), whose line numbers it reports
// 0-based.
var yamlParserProblems = []string{
	"did not find expected <stream-start>",
	"did not find expected <document start>",
	"found undefined tag handle",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected key",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
}

// yamlErrorMessage rewrites a YAML library error for the user: line
// numbers relative to the document become lines of the file (never past
// the document's last line: errors at the end of input point there).
func yamlErrorMessage(err error, c chunk) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "unmarshal errors:"); ok {
		var parts []string
		sc := bufio.NewScanner(strings.NewReader(rest))
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				parts = append(parts, l)
			}
		}
		msg = strings.Join(parts, "; ")
	}
	zeroBased := slices.ContainsFunc(yamlParserProblems, func(p string) bool { return strings.HasSuffix(msg, p) })
	lines := bytes.Count(c.data, []byte("\n"))
	if len(c.data) > 0 && c.data[len(c.data)-1] != '\n' {
		lines++
	}
	msg = yamlLineRE.ReplaceAllStringFunc(msg, func(m string) string {
		n, err := strconv.Atoi(strings.TrimPrefix(m, "line "))
		if err != nil {
			return m
		}
		if zeroBased {
			n++
		}
		n = max(1, min(n, lines))
		return "line " + strconv.Itoa(c.line+n-1)
	})
	return "invalid YAML: " + msg
}

// decodeDocument turns one non-empty document into an object. It always
// returns what it learnt of the object's kind and metadata, for errors.
func decodeDocument(generic any) (object, FieldErrors) {
	var errs FieldErrors
	m, ok := generic.(map[string]any)
	if !ok {
		errs.add("", "a manifest must be a mapping with apiVersion, kind, metadata and spec, got %s", describe(generic))
		return object{}, errs
	}
	apiVersion := requiredString(&errs, m, "apiVersion")
	kind := requiredString(&errs, m, "kind")
	if apiVersion != "" && apiVersion != api.APIVersion {
		errs.add("apiVersion", "unsupported apiVersion %q, want %q", apiVersion, api.APIVersion)
	}
	if len(errs) > 0 {
		return object{}, errs
	}
	switch kind {
	case api.KindService:
		var s api.Service
		d := decoder{}
		if _, ok := m["status"]; ok {
			d.errs.add("status", "is set by the control plane and must not be in a manifest")
			delete(m, "status")
		}
		resolveNamedPorts(&d, m)
		d.decode("", m, reflect.ValueOf(&s).Elem())
		Defaults(&s)
		errs = mergeErrors(d.errs, validateService(&s))
		sortFieldErrors(errs, reflect.TypeFor[api.Service]())
		return object{kind: kind, meta: s.Metadata, value: &s}, errs
	case api.KindVolume:
		var v api.Volume
		d := decoder{}
		if _, ok := m["status"]; ok {
			d.errs.add("status", "is set by the control plane and must not be in a manifest")
			delete(m, "status")
		}
		d.decode("", m, reflect.ValueOf(&v).Elem())
		DefaultsVolume(&v)
		var verrs FieldErrors
		if err := ValidateVolume(&v); err != nil {
			verrs = err.(FieldErrors)
		}
		errs = mergeErrors(d.errs, verrs)
		sortFieldErrors(errs, reflect.TypeFor[api.Volume]())
		return object{kind: kind, meta: v.Metadata, value: &v}, errs
	case api.KindSecret:
		var v api.Secret
		d := decoder{}
		d.decode("", m, reflect.ValueOf(&v).Elem())
		DefaultsSecret(&v)
		var verrs FieldErrors
		if err := ValidateSecret(&v); err != nil {
			verrs = err.(FieldErrors)
		}
		errs = mergeErrors(d.errs, verrs)
		sortFieldErrors(errs, reflect.TypeFor[api.Secret]())
		return object{kind: kind, meta: v.Metadata, value: &v}, errs
	}
	known := []string{api.KindService, api.KindVolume, api.KindSecret}
	msg := fmt.Sprintf("unknown kind %q, want one of %s", kind, strings.Join(known, ", "))
	for _, k := range known {
		if strings.EqualFold(k, kind) {
			msg = fmt.Sprintf("unknown kind %q (did you mean %q?)", kind, k)
		}
	}
	errs.add("kind", "%s", msg)
	return object{}, errs
}

// requiredString reads a top-level string field that must be present.
func requiredString(errs *FieldErrors, m map[string]any, field string) string {
	v, ok := m[field]
	if !ok || v == nil {
		errs.add(field, "required")
		return ""
	}
	s, ok := v.(string)
	if !ok {
		errs.add(field, "must be a string, got %s", describe(v))
		return ""
	}
	if s == "" {
		errs.add(field, "required")
	}
	return s
}

// mergeErrors appends the validation errors to the decoding errors, less
// those about a field that could not be decoded (its zero value would
// only repeat the problem: "must be an integer" then "must be between 1
// and 65535").
func mergeErrors(decoding, validation FieldErrors) FieldErrors {
	failed := make(map[string]bool, len(decoding))
	for _, d := range decoding {
		failed[d.Path] = true
	}
	errs := decoding
	for _, v := range validation {
		if !failed[v.Path] && !underFailed(failed, v.Path) {
			errs = append(errs, v)
		}
	}
	return errs
}

// underFailed reports whether a parent of path ("spec.ports[0]" and
// "spec.ports" and "spec" for "spec.ports[0].port") failed to decode.
func underFailed(failed map[string]bool, path string) bool {
	for {
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			return failed[""]
		}
		path = path[:i]
		if failed[path] {
			return true
		}
	}
}

// resolveNamedPorts replaces a probe's port given by name (port: http) with
// the number of the spec.ports entry of that name, as Kubernetes allows;
// a name no port has is an error naming the field and the ports there are.
func resolveNamedPorts(d *decoder, m map[string]any) {
	spec, _ := m["spec"].(map[string]any)
	if spec == nil {
		return
	}
	byName := map[string]any{}
	var names []string
	ports, _ := spec["ports"].([]any)
	for _, p := range ports {
		pm, _ := p.(map[string]any)
		name, _ := pm["name"].(string)
		if name != "" && pm["port"] != nil {
			byName[name] = pm["port"]
			names = append(names, name)
		}
	}
	for _, probe := range []string{"health", "liveness"} {
		pr, _ := spec[probe].(map[string]any)
		for _, kind := range []string{"http", "tcp"} {
			k, _ := pr[kind].(map[string]any)
			name, ok := k["port"].(string)
			if !ok {
				continue
			}
			if _, err := strconv.Atoi(name); err == nil {
				continue // a number in quotes: the decoder says so
			}
			if port, ok := byName[name]; ok {
				k["port"] = port
				continue
			}
			have := "spec.ports names none"
			if len(names) > 0 {
				have = "spec.ports has " + strings.Join(names, ", ")
			}
			d.errs.add("spec."+probe+"."+kind+".port", "no port named %q (%s)", name, have)
			delete(k, "port")
		}
	}
}
