package pb

import (
	"reflect"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/google/go-cmp/cmp"
)

// fill sets every field reachable from v to a non-zero value, so a field
// that a conversion forgets shows up as a difference after a round trip.
func fill(t *testing.T, v reflect.Value, path string) {
	switch v.Type() {
	case reflect.TypeOf(api.Duration{}):
		v.Set(reflect.ValueOf(api.Duration{Duration: 3 * time.Second}))
		return
	case reflect.TypeOf(api.IntOrPercent{}):
		v.Set(reflect.ValueOf(api.IntOrPercent{Value: 25, Percent: true}))
		return
	case reflect.TypeOf(time.Time{}):
		v.Set(reflect.ValueOf(time.Unix(1_700_000_000, 0).UTC()))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x-" + path)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int32, reflect.Int64:
		v.SetInt(7)
	case reflect.Uint32, reflect.Uint64:
		v.SetUint(7)
	case reflect.Float64:
		v.SetFloat(0.25)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), path)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(t, v.Index(0), path+"[0]")
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, k, path+".key")
		fill(t, e, path+".value")
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() || f.Tag.Get("json") == "-" {
				continue
			}
			fill(t, v.Field(i), path+"."+f.Name)
		}
	default:
		t.Fatalf("fill: %s has kind %s; teach fill about it", path, v.Kind())
	}
}

// TestSpecRoundTrip: every field of a service spec survives the wire, so
// a field added to api.ServiceSpec and not to the protobuf (or to
// FromSpec/ToSpec) fails here instead of being silently dropped by apply.
func TestSpecRoundTrip(t *testing.T) {
	var spec api.ServiceSpec
	fill(t, reflect.ValueOf(&spec).Elem(), "spec")
	got := ToSpec(FromSpec(&spec))
	if diff := cmp.Diff(spec, got); diff != "" {
		t.Fatalf("service spec changed on the wire (-sent +received):\n%s", diff)
	}
}
