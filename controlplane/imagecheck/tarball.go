// Package imagecheck decides whether an uploaded image tarball is fit to
// store: paths that stay inside the archive, blobs that match their
// digests, references that are well formed. Pure: it reads a file and
// touches nothing else.
package imagecheck

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/distribution/reference"
)

// Bounds on what one image tarball may hold.
const (
	maxTarEntries    = 100_000
	maxTarReferences = 64
	maxMetadataJSON  = 1 << 20 // manifest.json, index.json
)

// blobName is a content-addressed file: an OCI blob or a docker-archive
// image config, named by the sha256 of its bytes.
var blobName = regexp.MustCompile(`^(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)$`)

// Inspect checks an uploaded image tarball (docker-archive or OCI
// layout) and returns the image references it carries (manifest.json
// RepoTags, index.json name annotations). It refuses: names that are
// absolute or climb out with "..", the same name twice, links whose
// target leaves the archive, device nodes and fifos, a blob whose bytes do
// not match the digest it is named by, an invalid reference, and more
// than maxTarEntries entries. containerd reads the archive as a content
// store, not by extracting it, but a tarball that would escape a
// directory when unpacked has no business being an image.
func Inspect(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var refs []string
	seen := map[string]bool{}
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("not a tar archive: %w", err)
		}
		if n >= maxTarEntries {
			return nil, fmt.Errorf("more than %d entries", maxTarEntries)
		}
		name, err := archivePath(hdr.Name)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if seen[name] && hdr.Typeflag != tar.TypeDir {
			return nil, fmt.Errorf("entry %q: the name appears twice (a later copy would replace what was checked)", hdr.Name)
		}
		seen[name] = true
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir:
		case tar.TypeSymlink:
			if path.IsAbs(hdr.Linkname) {
				return nil, fmt.Errorf("entry %q: symlink to the absolute path %q", hdr.Name, hdr.Linkname)
			}
			if _, err := archivePath(path.Join(path.Dir(name), hdr.Linkname)); err != nil {
				return nil, fmt.Errorf("entry %q: symlink to %q: %w", hdr.Name, hdr.Linkname, err)
			}
		case tar.TypeLink:
			if _, err := archivePath(hdr.Linkname); err != nil {
				return nil, fmt.Errorf("entry %q: hard link to %q: %w", hdr.Name, hdr.Linkname, err)
			}
		default:
			return nil, fmt.Errorf("entry %q: type %q is not allowed in an image tarball (only files, directories and links)", hdr.Name, hdr.Typeflag)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		switch name {
		case "manifest.json":
			var m []struct{ RepoTags []string }
			if err := json.NewDecoder(io.LimitReader(tr, maxMetadataJSON)).Decode(&m); err != nil {
				return nil, fmt.Errorf("manifest.json: %w", err)
			}
			for _, e := range m {
				refs = append(refs, e.RepoTags...)
			}
			continue
		case "index.json":
			var idx struct {
				Manifests []struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"manifests"`
			}
			if err := json.NewDecoder(io.LimitReader(tr, maxMetadataJSON)).Decode(&idx); err != nil {
				return nil, fmt.Errorf("index.json: %w", err)
			}
			for _, m := range idx.Manifests {
				if r := m.Annotations["io.containerd.image.name"]; r != "" {
					refs = append(refs, r)
				} else if r := m.Annotations["org.opencontainers.image.ref.name"]; r != "" {
					refs = append(refs, r)
				}
			}
			continue
		}
		if m := blobName.FindStringSubmatch(name); m != nil {
			want := m[1] + m[2]
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				return nil, fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != want {
				return nil, fmt.Errorf("entry %q: its bytes have digest sha256:%s, not the one it is named by", hdr.Name, got)
			}
		}
	}
	refs = slices.Compact(slices.Sorted(slices.Values(refs)))
	if len(refs) == 0 {
		return nil, errors.New("the tarball names no image (no RepoTags in manifest.json, no name annotation in index.json)")
	}
	if len(refs) > maxTarReferences {
		return nil, fmt.Errorf("%d references; at most %d", len(refs), maxTarReferences)
	}
	for _, r := range refs {
		if err := ValidImageReference(r); err != nil {
			return nil, err
		}
	}
	return refs, nil
}

// archivePath cleans a name inside an archive and refuses one that is
// absolute or leaves the archive's root.
func archivePath(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", errors.New("NUL in the name")
	}
	if path.IsAbs(name) {
		return "", errors.New("absolute path")
	}
	clean := path.Clean(name)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", errors.New("the path leaves the archive (..)")
	}
	return clean, nil
}

// ValidImageReference checks a reference an upload is stored under: a
// well-formed name[:tag][@digest] (distribution/reference's grammar, the
// one registries and containerd use), which also keeps it from escaping
// an etcd key prefix or a file name.
func ValidImageReference(ref string) error {
	if _, err := reference.ParseNormalizedNamed(ref); err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	return nil
}
