package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// docs/manifest.md is what the types say now, and names every field.
func TestManifestReferenceIsCurrent(t *testing.T) {
	d, err := load("../../api")
	if err != nil {
		t.Fatal(err)
	}
	want := render(d)
	got, err := os.ReadFile("../../docs/manifest.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("docs/manifest.md is out of date with api/types.go: run make docs")
	}
	for _, path := range []string{"service.spec.env", "service.spec.command", "service.spec.args", "service.spec.nodeSelector", "service.metadata.labels",
		"service.spec.liveness.failureThreshold", "service.spec.health.http.port", "volume.spec.size", "secret.stringData"} {
		if !strings.Contains(string(want), "\n### "+path+"\n") {
			t.Errorf("no section for %s", path)
		}
	}
}
