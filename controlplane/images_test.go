package controlplane

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/imagebuild"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc/codes"
)

// buildImage is a small real image tarball for ref; content makes its
// bytes differ.
func buildImage(t *testing.T, ref, content string) []byte {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(bin, []byte("#!"+content), 0o755); err != nil {
		t.Fatal(err)
	}
	var tarball bytes.Buffer
	if err := imagebuild.BuildTarball(&tarball, ref, imagebuild.Options{Binary: bin}); err != nil {
		t.Fatal(err)
	}
	return tarball.Bytes()
}

func sha256Of(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// upload sends data in 64 KiB chunks the way `berth image load` does,
// the first chunk carrying digest ("" computes the right one) and force.
func upload(ctx context.Context, cli pb.BerthClient, data []byte, digest string, force bool) (*pb.LoadImageResponse, error) {
	resp, _, err := uploadCounting(ctx, cli, data, digest, force)
	return resp, err
}

// uploadCounting is upload, also saying how many bytes the client got to
// send before the server stopped the stream.
func uploadCounting(ctx context.Context, cli pb.BerthClient, data []byte, digest string, force bool) (*pb.LoadImageResponse, int, error) {
	if digest == "" {
		digest = sha256Of(data)
	}
	s, err := cli.LoadImage(ctx)
	if err != nil {
		return nil, 0, err
	}
	sent := 0
	for i := 0; i == 0 || i < len(data); i += 64 << 10 {
		chunk := &pb.ImageChunk{Data: data[i:min(i+64<<10, len(data))]}
		if i == 0 {
			chunk.FileName, chunk.Digest, chunk.Force = "img.tar", digest, force
		}
		if err := s.Send(chunk); err != nil {
			break // the server refused early: CloseAndRecv says why
		}
		sent += len(chunk.Data)
	}
	resp, err := s.CloseAndRecv()
	return resp, sent, err
}

func mustUpload(t *testing.T, cli pb.BerthClient, data []byte) *pb.LoadImageResponse {
	t.Helper()
	resp, err := upload(context.Background(), cli, data, "", false)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return resp
}

// fetchAs reads an upload the way an agent does.
func fetchAs(ctx context.Context, node pb.NodeAgentClient, ref, digest string) (string, error) {
	s, err := node.FetchImage(ctx, &pb.FetchImageRequest{Reference: ref, Digest: digest})
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for {
		c, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
		h.Write(c.Data)
	}
}

// A tag names one upload: new bytes under it are refused, --force is an
// admin's, and a revision keeps the bytes it was applied with even when
// the tag moves; applying again takes the new ones.
func TestTagsResolveToDigestsAtApply(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	const ref = "berth.local/hello:v1"
	v1, v1b := buildImage(t, ref, "one"), buildImage(t, ref, "evil")
	d1 := mustUpload(t, h.berth, v1).Digest
	if again := mustUpload(t, h.berth, v1); again.Digest != d1 {
		t.Fatalf("the same bytes again: digest %s, want %s", again.Digest, d1)
	}
	twoNodes(t, h)
	svc, err := h.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.Service.Spec.ImageDigest; got != d1 {
		t.Fatalf("the applied revision pins %q, want the upload %s", got, d1)
	}

	deployer := pb.NewBerthClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "deployer"}).Token))
	_, err = upload(ctx, deployer, v1b, "", false)
	refused(t, "other bytes under an existing tag", err, codes.FailedPrecondition, "already names upload "+d1)
	_, err = upload(ctx, deployer, v1b, "", true)
	refused(t, "a deployer forcing a tag", err, codes.PermissionDenied, `may not image.admin`)
	moved, err := upload(ctx, h.berth, v1b, "", true)
	if err != nil {
		t.Fatalf("an admin re-pointing a tag: %v", err)
	}
	d2 := moved.Digest

	// What runs is still d1: a node fetches it by digest, and its bytes
	// are the first upload's.
	n2 := pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, "n2"))
	if got, err := fetchAs(ctx, n2, ref, d1); err != nil || got != d1 {
		t.Fatalf("a node fetching its revision's upload after the tag moved: %s, %v", got, err)
	}
	_, err = fetchAs(ctx, n2, ref, d2)
	refused(t, "a node fetching the new upload no instance of it runs", err, codes.PermissionDenied, "only images its instances run")
	imgs, err := h.berth.ListImages(ctx, &pb.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var untagged bool
	for _, im := range imgs.Images {
		if im.Digest == d1 && im.Reference == "" {
			untagged = true
		}
		if im.Digest == d1 && im.Reference == ref {
			t.Fatalf("the tag still names the old upload: %v", imgs.Images)
		}
	}
	if !untagged {
		t.Fatalf("the old upload is not kept (untagged) for its revision: %v", imgs.Images)
	}
	// The old upload is pinned: removing it needs --force.
	_, err = h.berth.RemoveImage(ctx, &pb.RemoveImageRequest{Image: d1})
	refused(t, "removing an upload a revision pins", err, codes.FailedPrecondition, "in use by service default/hello")

	// Applying again is a new revision with the new bytes.
	res, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(2)}})
	if err != nil {
		t.Fatal(err)
	}
	if a := res.Results[0].Action; a != "configured" {
		t.Fatalf("apply after the tag moved: %s, want configured (a new revision)", a)
	}
	revs, err := h.berth.ListRevisions(ctx, &pb.ListRevisionsRequest{Namespace: "default", Name: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	if last := revs.Revisions[len(revs.Revisions)-1]; !strings.Contains(last.Change, d2) {
		t.Fatalf("the new revision's change %q does not name the new upload %s", last.Change, d2)
	}

	// A client cannot pin bytes of its choosing: the server resolves.
	forged := helloSpec(2)
	forged.Spec.ImageDigest = d1
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{forged}}); err != nil {
		t.Fatal(err)
	}
	svc, err = h.berth.GetService(ctx, &pb.GetServiceRequest{Namespace: "default", Name: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.Service.Spec.ImageDigest; got != d2 {
		t.Fatalf("a client-sent imageDigest was kept: %s, want the server's %s", got, d2)
	}
}

// Uploads are checked: the digest the client sent, the size, the quota,
// and what is inside.
func TestUploadsAreChecked(t *testing.T) {
	h := start(t, func(c *Config) { c.MaxImageSize = 2 << 20; c.ImageQuota = 3 << 20 })
	ctx := context.Background()
	img := buildImage(t, "berth.local/a:v1", "a")

	_, err := upload(ctx, h.berth, img, "sha256:"+strings.Repeat("0", 64), false)
	refused(t, "bytes that do not match the digest sent", err, codes.DataLoss, "damaged in transit")
	s, err := h.berth.LoadImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&pb.ImageChunk{FileName: "x.tar", Data: img})
	_, err = s.CloseAndRecv()
	refused(t, "an upload without a digest", err, codes.InvalidArgument, "must carry the tarball's digest")

	big := append(bytes.Clone(img), make([]byte, 3<<20)...)
	_, err = upload(ctx, h.berth, big, "", false)
	refused(t, "an upload over --max-image-size", err, codes.ResourceExhausted, "larger than the 2097152 bytes")

	padded := func(ref string, n int) []byte { // a valid tarball of about n bytes
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		writeEntry(t, tw, &tar.Header{Name: "manifest.json", Typeflag: tar.TypeReg}, `[{"RepoTags":["`+ref+`"]}]`)
		writeEntry(t, tw, &tar.Header{Name: "pad", Typeflag: tar.TypeReg}, strings.Repeat("x", n))
		tw.Close()
		return b.Bytes()
	}
	mustUpload(t, h.berth, padded("berth.local/big:v1", 1800<<10))
	_, err = upload(ctx, h.berth, padded("berth.local/big:v2", 1800<<10), "", false)
	refused(t, "an upload over the quota", err, codes.ResourceExhausted, "would exceed the image quota")
	// The quota holds while the bytes arrive: 64 MiB against 1.2 MiB of
	// room is cut off early, not written to disk and then refused.
	_, sent, err := uploadCounting(ctx, h.berth, padded("berth.local/huge:v1", 64<<20), "", false)
	refused(t, "a huge upload over the quota", err, codes.ResourceExhausted, "would exceed the image quota")
	if sent >= 32<<20 {
		t.Fatalf("the server read %d bytes of an upload over the quota before refusing it", sent)
	}
	if _, err := h.berth.RemoveImage(ctx, &pb.RemoveImageRequest{Image: "berth.local/big:v1"}); err != nil {
		t.Fatalf("removing an unused tag: %v", err)
	}
	mustUpload(t, h.berth, padded("berth.local/big:v2", 1800<<10)) // room again

	for _, evil := range evilTarballs(t) {
		_, err := upload(ctx, h.berth, evil.data, "", false)
		refused(t, evil.name, err, codes.InvalidArgument, evil.want)
	}
	imgs, err := h.berth.ListImages(ctx, &pb.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs.Images {
		if strings.Contains(im.Reference, "evil") {
			t.Fatalf("a refused tarball was stored: %v", im)
		}
	}
}

// Only admins remove images; a tag in use is refused without --force.
func TestImageRemoval(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	d := mustUpload(t, h.berth, buildImage(t, "berth.local/hello:v1", "one")).Digest
	twoNodes(t, h)
	deployer := pb.NewBerthClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "deployer"}).Token))
	_, err := deployer.RemoveImage(ctx, &pb.RemoveImageRequest{Image: "berth.local/hello:v1"})
	refused(t, "a deployer removing an image", err, codes.PermissionDenied, "may not image.admin")
	// The tag goes; the upload stays for the revision that pins it.
	resp, err := h.berth.RemoveImage(ctx, &pb.RemoveImageRequest{Image: "berth.local/hello:v1"})
	if err != nil || resp.RemovedDigest != "" {
		t.Fatalf("removing a tag whose upload a revision pins: %v, %v (the upload must stay)", resp, err)
	}
	if got, err := fetchAs(ctx, pb.NewNodeAgentClient(partConn(t, h.srv, pki.RoleNode, "n1")), "berth.local/hello:v1", d); err != nil || got != d {
		t.Fatalf("the pinned upload after its tag went: %s, %v", got, err)
	}
	resp, err = h.berth.RemoveImage(ctx, &pb.RemoveImageRequest{Image: d, Force: true})
	if err != nil || resp.RemovedDigest != d {
		t.Fatalf("forced removal of the upload: %v, %v", resp, err)
	}
	if _, err := os.Stat(filepath.Join(h.srv.cfg.DataDir, "images", "sha256-"+strings.TrimPrefix(d, "sha256:")+".tar")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the removed upload's file is still there: %v", err)
	}
	_, err = h.berth.RemoveImage(ctx, &pb.RemoveImageRequest{Image: d})
	refused(t, "removing it twice", err, codes.NotFound, "not found")
}

// Added capabilities widen the sandbox: only an admin may apply them.
func TestAddedCapabilitiesAreAdminOnly(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	svc := helloSpec(1)
	svc.Spec.SecurityContext = &pb.SecurityContext{CapabilitiesAdd: []string{"NET_ADMIN"}}
	deployer := pb.NewBerthClient(tokenConn(t, h.srv, createToken(t, h, &pb.CreateTokenRequest{Role: "deployer"}).Token))
	_, err := deployer.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{svc}})
	refused(t, "a deployer adding a capability", err, codes.PermissionDenied, "may not privileged")
	narrower := helloSpec(1)
	uid := int64(1000)
	narrower.Spec.SecurityContext = &pb.SecurityContext{RunAsUser: &uid, ReadOnlyRootFilesystem: true, CapabilitiesDrop: []string{"ALL"}}
	if _, err := deployer.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{narrower}}); err != nil {
		t.Fatalf("a deployer narrowing the sandbox: %v", err)
	}
	if _, err := h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{svc}}); err != nil {
		t.Fatalf("an admin adding a capability: %v", err)
	}
	svc.Spec.SecurityContext.CapabilitiesAdd = []string{"CAP_TELEPORT"}
	_, err = h.berth.Apply(ctx, &pb.ApplyRequest{Services: []*pb.Service{svc}})
	refused(t, "an unknown capability", err, codes.InvalidArgument, `securityContext.capabilities.add[0]: unknown capability "CAP_TELEPORT"`)
}

func writeEntry(t *testing.T, tw *tar.Writer, hdr *tar.Header, body string) {
	t.Helper()
	if hdr.Typeflag == tar.TypeReg {
		hdr.Size = int64(len(body))
	}
	if hdr.Mode == 0 {
		hdr.Mode = 0o644
	}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if body != "" {
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
}

type evilTarball struct {
	name, want string
	data       []byte
}

// evilTarballs are image tarballs an attacker would upload: each is
// otherwise valid (a manifest naming an image) and carries one trick.
func evilTarballs(t *testing.T) []evilTarball {
	manifest := `[{"RepoTags":["berth.local/evil:v1"]}]`
	make := func(name, want string, entries ...func(*tar.Writer)) evilTarball {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		writeEntry(t, tw, &tar.Header{Name: "manifest.json", Typeflag: tar.TypeReg}, manifest)
		for _, e := range entries {
			e(tw)
		}
		tw.Close()
		return evilTarball{name: name, want: want, data: b.Bytes()}
	}
	entry := func(hdr tar.Header, body string) func(*tar.Writer) {
		return func(tw *tar.Writer) { writeEntry(t, tw, &hdr, body) }
	}
	const blob = "blobs/sha256/"
	other := strings.Repeat("ab", 32)
	return []evilTarball{
		make("a path climbing out", "the path leaves the archive", entry(tar.Header{Name: "../../etc/cron.d/x", Typeflag: tar.TypeReg}, "* * * * * root sh")),
		make("a path climbing out after a detour", "the path leaves the archive", entry(tar.Header{Name: "blobs/../../x", Typeflag: tar.TypeReg}, "x")),
		make("an absolute path", "absolute path", entry(tar.Header{Name: "/etc/passwd", Typeflag: tar.TypeReg}, "root::0:0::/:/bin/sh")),
		make("a symlink to an absolute path", "symlink to the absolute path", entry(tar.Header{Name: "etc", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, "")),
		make("a symlink pointing out", "the path leaves the archive", entry(tar.Header{Name: "a/b", Typeflag: tar.TypeSymlink, Linkname: "../../../root"}, "")),
		make("a hard link pointing out", "the path leaves the archive", entry(tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../shadow"}, "")),
		make("a device node", "is not allowed", entry(tar.Header{Name: "sda", Typeflag: tar.TypeBlock, Devmajor: 8}, "")),
		make("a second manifest.json replacing the checked one", "appears twice", entry(tar.Header{Name: "./manifest.json", Typeflag: tar.TypeReg}, `[{"RepoTags":["berth.local/hello:v1"]}]`)),
		make("a blob whose bytes are not its name's digest", "not the one it is named by", entry(tar.Header{Name: blob + other, Typeflag: tar.TypeReg}, "swapped layer")),
		make("a config whose bytes are not its name's digest", "not the one it is named by", entry(tar.Header{Name: other + ".json", Typeflag: tar.TypeReg}, "{}")),
		{name: "a reference that is not one", want: "image reference", data: func() []byte {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			writeEntry(t, tw, &tar.Header{Name: "manifest.json", Typeflag: tar.TypeReg}, `[{"RepoTags":["../../evil:v1"]}]`)
			tw.Close()
			return b.Bytes()
		}()},
		{name: "not a tarball", want: "not a tar archive", data: []byte(strings.Repeat("evil", 300))},
	}
}
