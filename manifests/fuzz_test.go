package manifests

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts is
// valid.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	examples, _ := filepath.Glob("examples/*.yaml")
	for _, file := range append(files, examples...) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		svcs, err := Parse("fuzz.yaml", data)
		if err != nil {
			if svcs != nil {
				t.Fatalf("Parse returned services and an error: %v", err)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "fuzz.yaml" || err.Error() == "" {
				t.Fatalf("Parse error %T %v is not a *Error for fuzz.yaml", err, err)
			}
			return
		}
		for i := range svcs {
			if err := Validate(&svcs[i]); err != nil {
				t.Fatalf("Parse accepted service %d that fails Validate: %v", i, err)
			}
		}
	})
}
