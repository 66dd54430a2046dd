package manifests

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// decoder fills a typed value from the generic form of a document (what
// encoding/json produces with UseNumber: map[string]any, []any, string,
// json.Number, bool, nil), walking the target's json tags. Unlike
// json.Unmarshal it matches field names exactly, rejects unknown fields and
// reports every problem with its full path instead of stopping at the first.
type decoder struct {
	errs FieldErrors
}

var jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// decode stores in into out, which must be settable.
func (d *decoder) decode(path string, in any, out reflect.Value) {
	t := out.Type()
	// Types with their own JSON form (api.Duration, api.Pause) decode
	// themselves, null included (an empty `pause:` means something); their
	// error becomes the field's message.
	if t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(jsonUnmarshalerType) {
		raw, err := json.Marshal(in)
		if err == nil {
			err = out.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(raw)
		}
		if err != nil {
			d.errs.add(path, "%s", err)
		}
		return
	}
	if in == nil {
		return // null leaves the zero value, as in encoding/json
	}
	switch t.Kind() {
	case reflect.Pointer:
		v := reflect.New(t.Elem())
		d.decode(path, in, v.Elem())
		out.Set(v)
	case reflect.Struct:
		m, ok := in.(map[string]any)
		if !ok {
			d.wrongType(path, "a mapping", in)
			return
		}
		d.decodeStruct(path, m, out)
	case reflect.Slice:
		list, ok := in.([]any)
		if !ok {
			d.wrongType(path, "a list", in)
			return
		}
		s := reflect.MakeSlice(t, len(list), len(list))
		for i, elem := range list {
			d.decode(fmt.Sprintf("%s[%d]", path, i), elem, s.Index(i))
		}
		out.Set(s)
	case reflect.Map:
		m, ok := in.(map[string]any)
		if !ok || t.Key().Kind() != reflect.String {
			d.wrongType(path, "a mapping", in)
			return
		}
		mv := reflect.MakeMapWithSize(t, len(m))
		for _, k := range sortedKeys(m) {
			v := reflect.New(t.Elem()).Elem()
			d.decode(joinKey(path, k), m[k], v)
			mv.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), v)
		}
		out.Set(mv)
	case reflect.String:
		s, ok := in.(string)
		if !ok {
			d.wrongType(path, "a string", in)
			return
		}
		out.SetString(s)
	case reflect.Bool:
		b, ok := in.(bool)
		if !ok {
			d.wrongType(path, "a boolean", in)
			return
		}
		out.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := in.(json.Number)
		if !ok {
			d.wrongType(path, "an integer", in)
			return
		}
		v, err := strconv.ParseInt(n.String(), 10, t.Bits())
		if errors.Is(err, strconv.ErrRange) {
			d.errs.add(path, "must be an integer between %d and %d, got %s", int64(-1)<<(t.Bits()-1), int64(1)<<(t.Bits()-1)-1, n)
			return
		}
		if err != nil {
			d.wrongType(path, "an integer", in)
			return
		}
		out.SetInt(v)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := in.(json.Number)
		if !ok {
			d.wrongType(path, "a non-negative integer", in)
			return
		}
		v, err := strconv.ParseUint(n.String(), 10, t.Bits())
		if errors.Is(err, strconv.ErrRange) {
			d.errs.add(path, "must be an integer between 0 and %d, got %s", uint64(1)<<(t.Bits())-1, n)
			return
		}
		if err != nil {
			d.wrongType(path, "a non-negative integer", in)
			return
		}
		out.SetUint(v)
	case reflect.Float32, reflect.Float64:
		n, ok := in.(json.Number)
		if !ok {
			d.wrongType(path, "a number", in)
			return
		}
		v, err := strconv.ParseFloat(n.String(), t.Bits())
		if err != nil || math.IsInf(v, 0) {
			d.wrongType(path, "a number", in)
			return
		}
		out.SetFloat(v)
	default:
		// A programming error: an api type grew a field kind the decoder
		// does not know. Report it rather than panic.
		d.errs.add(path, "cannot decode into %s", t)
	}
}

// decodeStruct decodes a mapping into a struct by exact json tag names.
// Unknown keys are reported first (sorted), then the fields in struct order.
func (d *decoder) decodeStruct(path string, m map[string]any, out reflect.Value) {
	fields := jsonFields(out.Type())
	for _, k := range sortedKeys(m) {
		if _, ok := fields.byName[k]; ok {
			continue
		}
		msg := "unknown field"
		names := make([]string, 0, len(fields.byName))
		for name := range fields.byName {
			names = append(names, name)
		}
		if near := Closest(k, names); near != "" {
			msg = fmt.Sprintf("unknown field (did you mean %q?)", near)
		}
		d.errs.add(joinField(path, k), "%s", msg)
	}
	for _, f := range fields.list {
		if v, ok := m[f.name]; ok {
			d.decode(joinField(path, f.name), v, out.FieldByIndex(f.index))
		}
	}
}

func (d *decoder) wrongType(path, want string, got any) {
	d.errs.add(path, "must be %s, got %s", want, describe(got))
}

// describe names a generic value for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return strconv.Quote(v)
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	}
	return fmt.Sprintf("%T", v)
}

type jsonField struct {
	name  string
	index []int
}

type structFields struct {
	list   []jsonField
	byName map[string]jsonField
}

// jsonFields lists a struct's exported fields under their json names,
// flattening embedded structs without a tag the way encoding/json does.
func jsonFields(t reflect.Type) structFields {
	sf := structFields{byName: map[string]jsonField{}}
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			idx := append(slices.Clone(index), i)
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			jf := jsonField{name: name, index: idx}
			sf.list = append(sf.list, jf)
			sf.byName[name] = jf
		}
	}
	walk(t, nil)
	return sf
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// joinField appends a struct field name to a path.
func joinField(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// joinKey appends a map key to a path: "spec.env.KEY", or
// `spec.env["odd key"]` when the key is not a plain identifier.
func joinKey(path, key string) string {
	if isPlainKey(key) {
		return joinField(path, key)
	}
	return path + "[" + strconv.Quote(key) + "]"
}

func isPlainKey(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '/':
		default:
			return false
		}
	}
	return true
}
