package controlplane

import (
	"archive/tar"
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
)

// Image uploads live on the data disk etcd writes to (DataDir/images), and
// one may be 4 GiB: an upload is refused while the disk is below the
// minimum (the guard covered unary writes only, and LoadImage is a
// stream), and one larger than the room left above the minimum is cut
// off as its bytes arrive, naming the disk, instead of filling it and
// stopping etcd.
func TestUploadsKeepRoomOnTheDataDisk(t *testing.T) {
	ctx := context.Background()
	full := start(t, func(c *Config) { c.MinFreeDisk = 1 << 62 })
	_, err := upload(ctx, full.berth, buildImage(t, "berth.local/a:v1", "a"), "", false)
	refused(t, "an upload to a full data disk", err, codes.ResourceExhausted, "data disk")

	dir := t.TempDir()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := st.Bavail * uint64(st.Bsize)
	if free < 256<<20 {
		t.Skipf("%s has %d bytes free", dir, free)
	}
	tight := start(t, func(c *Config) { c.DataDir, c.MinFreeDisk = dir, free-16<<20 })
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	writeEntry(t, tw, &tar.Header{Name: "manifest.json", Typeflag: tar.TypeReg}, `[{"RepoTags":["berth.local/huge:v1"]}]`)
	writeEntry(t, tw, &tar.Header{Name: "pad", Typeflag: tar.TypeReg}, strings.Repeat("x", 96<<20))
	tw.Close()
	_, sent, err := uploadCounting(ctx, tight.berth, b.Bytes(), "", false)
	refused(t, "an upload larger than the room left on the data disk", err, codes.ResourceExhausted, "data disk")
	if sent >= 64<<20 {
		t.Fatalf("the server read %d bytes of an upload larger than the disk's room before refusing it", sent)
	}
}
