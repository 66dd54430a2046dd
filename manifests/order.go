package manifests

import (
	"cmp"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// sortFieldErrors orders errors the way the fields appear in the api type
// t (a struct), so a report reads top to bottom like the manifest: struct
// fields in declaration order with unknown fields first, list elements by
// index, map keys alphabetically, a field before the fields inside it.
// Errors on the same path keep their order.
func sortFieldErrors(errs FieldErrors, t reflect.Type) {
	type keyed struct {
		err  *FieldError
		segs []string
		pos  int
	}
	keys := make([]keyed, len(errs))
	for i, e := range errs {
		keys[i] = keyed{e, splitPath(e.Path), i}
	}
	o := orderer{fields: map[reflect.Type]structFields{}}
	slices.SortFunc(keys, func(a, b keyed) int {
		return cmp.Or(o.comparePaths(t, a.segs, b.segs), cmp.Compare(a.pos, b.pos))
	})
	for i, k := range keys {
		errs[i] = k.err
	}
}

// orderer caches the struct layouts that path comparison needs.
type orderer struct {
	fields map[reflect.Type]structFields
}

func (o *orderer) jsonFields(t reflect.Type) structFields {
	f, ok := o.fields[t]
	if !ok {
		f = jsonFields(t)
		o.fields[t] = f
	}
	return f
}

func (o *orderer) comparePaths(t reflect.Type, a, b []string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		ra, rb := o.segmentRank(t, a[i]), o.segmentRank(t, b[i])
		if c := cmp.Compare(ra, rb); c != 0 {
			return c
		}
		if c := strings.Compare(a[i], b[i]); c != 0 {
			return c
		}
		t = o.segmentType(t, a[i])
	}
	return cmp.Compare(len(a), len(b))
}

// segmentRank is a path segment's position within type t: the field
// number in a struct (-1 for an unknown field), the index in a list, and
// 0 for map keys, which then compare by name.
func (o *orderer) segmentRank(t reflect.Type, seg string) int {
	if t == nil {
		return 0
	}
	switch t.Kind() {
	case reflect.Struct:
		for i, f := range o.jsonFields(t).list {
			if f.name == seg {
				return i
			}
		}
		return -1
	case reflect.Slice:
		if n, err := strconv.Atoi(strings.Trim(seg, "[]")); err == nil {
			return n
		}
	}
	return 0
}

func (o *orderer) segmentType(t reflect.Type, seg string) reflect.Type {
	if t == nil {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if f, ok := o.jsonFields(t).byName[seg]; ok {
			return t.FieldByIndex(f.index).Type
		}
	case reflect.Slice, reflect.Map:
		return t.Elem()
	}
	return nil
}

// splitPath splits "spec.ports[1].name" into "spec", "ports", "[1]",
// "name"; a quoted map key (`env["a b"]`) is one segment, unquoted.
func splitPath(p string) []string {
	var segs []string
	for p != "" {
		switch {
		case p[0] == '.':
			p = p[1:]
		case strings.HasPrefix(p, `["`):
			q, err := strconv.QuotedPrefix(p[1:])
			if err != nil {
				return append(segs, p)
			}
			key, _ := strconv.Unquote(q)
			segs = append(segs, key)
			p = strings.TrimPrefix(p[1+len(q):], "]")
		case p[0] == '[':
			end := strings.IndexByte(p, ']')
			if end < 0 {
				return append(segs, p)
			}
			segs = append(segs, p[:end+1])
			p = p[end+1:]
		default:
			end := strings.IndexAny(p, ".[")
			if end < 0 {
				end = len(p)
			}
			segs = append(segs, p[:end])
			p = p[end:]
		}
	}
	return segs
}
