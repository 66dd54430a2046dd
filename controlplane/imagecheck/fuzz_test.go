package imagecheck

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"testing"
)

// FuzzInspect checks Inspect against the standard library: whatever it
// accepts, archive/tar reads entry by entry with every name, link target
// and symlink destination local by filepath.IsLocal (the reference for
// "stays inside a directory"), no name twice, and only files,
// directories and links. The fuzzer picks two entries' names, link
// targets and types after a valid manifest.json.
func FuzzInspect(f *testing.F) {
	f.Add("a/", byte(tar.TypeDir), "", "a/l", byte(tar.TypeSymlink), "../b")
	f.Add("a/l", byte(tar.TypeSymlink), "../../b", "x", byte(tar.TypeReg), "")
	f.Add("../x", byte(tar.TypeReg), "", "/y", byte(tar.TypeReg), "")
	f.Add("h", byte(tar.TypeLink), "a/../../x", "./manifest.json", byte(tar.TypeReg), "")
	f.Add("blobs/sha256/"+string(bytes.Repeat([]byte("0"), 64)), byte(tar.TypeReg), "", "d", byte(tar.TypeChar), "")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, name1 string, type1 byte, link1, name2 string, type2 byte, link2 string) {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		m := []byte(`[{"RepoTags":["berth.local/x:v1"]}]`)
		tw.WriteHeader(&tar.Header{Name: "manifest.json", Typeflag: tar.TypeReg, Size: int64(len(m)), Mode: 0o644})
		tw.Write(m)
		for _, e := range []tar.Header{{Name: name1, Typeflag: type1, Linkname: link1}, {Name: name2, Typeflag: type2, Linkname: link2}} {
			e.Mode = 0o644
			if tw.WriteHeader(&e) != nil {
				return // archive/tar cannot write it: nothing to check
			}
		}
		if tw.Close() != nil {
			return
		}
		data := b.Bytes()
		file := filepath.Join(dir, "in.tar")
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Inspect(file); err != nil {
			return
		}
		tr := tar.NewReader(bytes.NewReader(data))
		seen := map[string]bool{}
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				t.Fatalf("accepted, but archive/tar fails: %v", err)
			}
			name := path.Clean(hdr.Name)
			if !filepath.IsLocal(name) {
				t.Fatalf("accepted the non-local name %q", hdr.Name)
			}
			if seen[name] && hdr.Typeflag != tar.TypeDir {
				t.Fatalf("accepted %q twice", hdr.Name)
			}
			seen[name] = true
			switch hdr.Typeflag {
			case tar.TypeReg, tar.TypeDir:
			case tar.TypeSymlink:
				if path.IsAbs(hdr.Linkname) || !filepath.IsLocal(path.Join(path.Dir(name), hdr.Linkname)) {
					t.Fatalf("accepted the symlink %q -> %q", hdr.Name, hdr.Linkname)
				}
			case tar.TypeLink:
				if !filepath.IsLocal(hdr.Linkname) {
					t.Fatalf("accepted the hard link %q -> %q", hdr.Name, hdr.Linkname)
				}
			default:
				t.Fatalf("accepted type %q", hdr.Typeflag)
			}
		}
	})
}
