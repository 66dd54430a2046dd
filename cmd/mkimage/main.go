// Command mkimage builds a container image FROM SCRATCH around one static
// binary and writes it as a tarball that containerd imports under the given
// reference:
//
//	mkimage -binary bin/hello -ref berth.local/hello:v1 -o images/hello-v1.tar
//	ctr -n berth images import images/hello-v1.tar
//
// The image holds the binary (mode 0755) at -entrypoint, a minimal
// /etc/passwd and /etc/group, and /tmp. It is wiring only; the work is done
// by internal/imagebuild.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/internal/imagebuild"
)

func main() {
	binary := flag.String("binary", "", "path of the static binary to package (required)")
	ref := flag.String("ref", "", "image reference to name the image, e.g. berth.local/hello:v1 (required)")
	out := flag.String("o", "", "output tarball path (required)")
	entrypoint := flag.String("entrypoint", "/hello", "path of the binary inside the image")
	ports := flag.String("ports", "8080/tcp", "comma-separated exposed ports")
	arch := flag.String("arch", "", "image architecture (default: this machine's)")
	flag.Parse()
	if *binary == "" || *ref == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*binary, *ref, *out, *entrypoint, *ports, *arch); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(binary, ref, out, entrypoint, ports, arch string) error {
	opts := imagebuild.Options{Binary: binary, Entrypoint: entrypoint, Architecture: arch}
	for _, p := range strings.Split(ports, ",") {
		if p = strings.TrimSpace(p); p != "" {
			opts.ExposedPorts = append(opts.ExposedPorts, p)
		}
	}
	if dir := filepath.Dir(out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".mkimage-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := imagebuild.BuildTarball(tmp, ref, opts); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Printf("wrote %s (%s)\n", out, ref)
	return nil
}
