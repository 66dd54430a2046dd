package imagebuild

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestBuildTarball(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(bin, []byte("#!fake binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := Build(Options{Binary: bin, Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/hello" ||
		cf.Config.WorkingDir != "/" {
		t.Errorf("config = %+v", cf.Config)
	}
	if _, ok := cf.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("ExposedPorts = %v, want 8080/tcp", cf.Config.ExposedPorts)
	}

	files := map[string]*tar.Header{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
	}
	for name, mode := range map[string]int64{"hello": 0o755, "etc/passwd": 0o644, "etc/group": 0o644, "tmp": 0o1777} {
		h, ok := files[name]
		if !ok {
			t.Errorf("%s missing from the layer (have %v)", name, files)
			continue
		}
		if h.Mode&0o7777 != mode {
			t.Errorf("%s mode %o, want %o", name, h.Mode, mode)
		}
	}

	var buf bytes.Buffer
	if err := WriteTarball(&buf, "berth.local/hello:v1", img); err != nil {
		t.Fatal(err)
	}
	var manifest tarball.Manifest
	tr = tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("manifest.json not found: %v", err)
		}
		if h.Name == "manifest.json" {
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != "berth.local/hello:v1" {
		t.Errorf("manifest.json = %+v, want RepoTags [berth.local/hello:v1]", manifest)
	}

	// Same binary, same digest.
	img2, _ := Build(Options{Binary: bin, Architecture: "amd64"})
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("digests differ: %s vs %s", d1, d2)
	}
}
