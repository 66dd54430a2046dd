// Package imagebuild builds minimal container images FROM SCRATCH around a
// single static binary and writes them as tarballs that containerd imports
// under their reference (docker-archive format, the name in RepoTags). It is
// shared by cmd/mkimage and the tests that need a real image; it does no
// registry I/O and knows nothing about containerd.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Options describe the image to build.
type Options struct {
	// Binary is the path of the static executable to put in the image.
	Binary string
	// Entrypoint is where the binary goes inside the image; default /hello.
	Entrypoint string
	// ExposedPorts like "8080/tcp"; default ["8080/tcp"].
	ExposedPorts []string
	// Env is the image's default environment, "KEY=value".
	Env []string
	// OS and Architecture of the image; default linux and runtime.GOARCH.
	// containerd only unpacks images matching its platform.
	OS, Architecture string
}

// epoch is the fixed mtime of every file, so that the same binary always
// yields the same image digest.
var epoch = time.Unix(0, 0).UTC()

const passwd = "root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
const group = "root:x:0:\nnobody:x:65534:\n"

// Build returns a scratch image holding the binary at opts.Entrypoint (mode
// 0755), a minimal /etc/passwd and /etc/group, and /tmp (mode 1777), with
// the entrypoint, exposed ports and working directory / in its config.
func Build(opts Options) (v1.Image, error) {
	if opts.Binary == "" {
		return nil, fmt.Errorf("imagebuild: no binary given")
	}
	if opts.Entrypoint == "" {
		opts.Entrypoint = "/hello"
	}
	if !path.IsAbs(opts.Entrypoint) {
		return nil, fmt.Errorf("imagebuild: entrypoint %q must be an absolute path", opts.Entrypoint)
	}
	if opts.ExposedPorts == nil {
		opts.ExposedPorts = []string{"8080/tcp"}
	}
	if opts.OS == "" {
		opts.OS = "linux"
	}
	if opts.Architecture == "" {
		opts.Architecture = runtime.GOARCH
	}
	bin, err := os.ReadFile(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: read binary: %w", err)
	}
	layerTar, err := rootfsTar(opts.Entrypoint, bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("imagebuild: layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagebuild: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = opts.OS
	cf.Architecture = opts.Architecture
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{opts.Entrypoint}
	cf.Config.WorkingDir = "/"
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, opts.Env...)
	cf.Config.ExposedPorts = map[string]struct{}{}
	for _, p := range opts.ExposedPorts {
		if !strings.Contains(p, "/") {
			p += "/tcp"
		}
		cf.Config.ExposedPorts[p] = struct{}{}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: set config: %w", err)
	}
	return img, nil
}

// rootfsTar returns the uncompressed layer: the binary, /etc/passwd,
// /etc/group and /tmp.
func rootfsTar(entrypoint string, bin []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDir := func(dir string, mode int64) error {
		if dir == "" || dir == "." || dirs[dir] {
			return nil
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	addFile := func(p string, mode int64, data []byte) error {
		// Parent directories first, outermost first.
		var parents []string
		for d := path.Dir(p); d != "." && d != ""; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := addDir(d, 0o755); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	steps := []func() error{
		func() error { return addFile("etc/passwd", 0o644, []byte(passwd)) },
		func() error { return addFile("etc/group", 0o644, []byte(group)) },
		func() error { return addDir("tmp", 0o1777) },
		func() error { return addFile(strings.TrimPrefix(path.Clean(entrypoint), "/"), 0o755, bin) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("imagebuild: layer tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("imagebuild: layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteTarball writes img as a docker-archive tarball (manifest.json with
// RepoTags) naming it ref; containerd's import (ctr images import, or
// client.Import) registers it under exactly that name.
func WriteTarball(w io.Writer, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref, name.WeakValidation)
	if err != nil {
		return fmt.Errorf("imagebuild: reference %q: %w", ref, err)
	}
	if err := tarball.Write(tag, img, w); err != nil {
		return fmt.Errorf("imagebuild: write tarball %s: %w", ref, err)
	}
	return nil
}

// BuildTarball is Build followed by WriteTarball.
func BuildTarball(w io.Writer, ref string, opts Options) error {
	img, err := Build(opts)
	if err != nil {
		return err
	}
	return WriteTarball(w, ref, img)
}
