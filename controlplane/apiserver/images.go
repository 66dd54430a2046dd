package apiserver

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func tsOf(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// maxImageSize bounds one upload.
const maxImageSize = 4 << 30

// LoadImage receives an image tarball, stores it under ImageDir by digest
// and records the references it carries, so agents can import it.
func (s *Server) LoadImage(stream pb.Berth_LoadImageServer) error {
	tb, err := receiveTarball(s.cfg.ImageDir, "upload-*.tar", stream.Recv)
	defer os.Remove(tb.path)
	name := tb.name
	switch {
	case errors.Is(err, errImageTooLarge):
		return status.Errorf(codes.ResourceExhausted, "load image %s: %v", name, err)
	case err != nil:
		if _, ok := status.FromError(err); ok {
			return err // the stream's own
		}
		return status.Errorf(codes.Internal, "load image %s: %v", name, err)
	}
	refs, err := TarballReferences(tb.path)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "load image %s: %v", name, err)
	}
	if len(refs) == 0 {
		return status.Errorf(codes.InvalidArgument, "load image %s: the tarball names no image (no RepoTags in manifest.json, no ref annotation in index.json)", name)
	}
	digest, size := tb.digest, tb.size
	path := s.imagePath(digest)
	if err := os.Rename(tb.path, path); err != nil {
		return status.Errorf(codes.Internal, "load image %s: %v", name, err)
	}
	img := store.Image{Digest: digest, Size: size, References: refs, Path: path, LoadedAt: time.Now().UTC()}
	if r := s.replica.Load(); r != nil {
		img.Source = r.addr
	}
	if err := s.store.PutImage(stream.Context(), img); err != nil {
		return storeErr(err)
	}
	_ = s.store.RecordEvent(stream.Context(), store.Event{Object: "image/" + refs[0], Reason: "Loaded", Message: fmt.Sprintf("image %v loaded (%s, %d bytes)", refs, digest, size)})
	s.logger.Info("image loaded", "refs", refs, "digest", digest, "size", size)
	return stream.SendAndClose(&pb.LoadImageResponse{Digest: digest, Size: size, References: refs})
}

// TarballReferences reads the image names a docker-archive (manifest.json
// RepoTags) or OCI layout tarball (index.json ref annotations) carries.
func TarballReferences(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var refs []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("not a tar archive: %w", err)
		}
		switch filepath.Clean(hdr.Name) {
		case "manifest.json":
			var m []struct{ RepoTags []string }
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&m); err != nil {
				return nil, fmt.Errorf("manifest.json: %w", err)
			}
			for _, e := range m {
				refs = append(refs, e.RepoTags...)
			}
		case "index.json":
			var idx struct {
				Manifests []struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"manifests"`
			}
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&idx); err != nil {
				return nil, fmt.Errorf("index.json: %w", err)
			}
			for _, m := range idx.Manifests {
				if r := m.Annotations["io.containerd.image.name"]; r != "" {
					refs = append(refs, r)
				} else if r := m.Annotations["org.opencontainers.image.ref.name"]; r != "" {
					refs = append(refs, r)
				}
			}
		}
	}
	return dedupe(refs), nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// ListImages lists uploaded images.
func (s *Server) ListImages(ctx context.Context, req *pb.ListImagesRequest) (*pb.ListImagesResponse, error) {
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	out := &pb.ListImagesResponse{}
	for _, img := range imgs {
		for _, r := range img.References {
			out.Images = append(out.Images, &pb.Image{Reference: r, Digest: img.Digest, Size: img.Size, LoadedAt: tsOf(img.LoadedAt)})
		}
	}
	return out, nil
}

// FetchImage streams an uploaded image tarball to an agent.
func (s *Server) FetchImage(req *pb.FetchImageRequest, stream pb.NodeAgent_FetchImageServer) error {
	ctx := stream.Context()
	var img *store.Image
	var err error
	if req.Digest != "" {
		img, err = s.store.GetImage(ctx, req.Digest)
	} else {
		img, err = s.store.FindImage(ctx, req.Reference)
	}
	if err != nil {
		return storeErr(err)
	}
	if node := nodeCaller(ctx); node != "" && !nodeNeedsImage(s.cache.View(), node, img) {
		return errNotYours("node %s may fetch only images its instances run; %s is not one", node, req.Reference)
	}
	path, err := s.localImage(ctx, img)
	if err != nil {
		return status.Errorf(codes.Unavailable, "fetch image %s: %v", req.Reference, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return status.Errorf(codes.Internal, "fetch image %s: %v", req.Reference, err)
	}
	defer f.Close()
	// The digest goes alone first: an agent that already imported this
	// upload stops here without the server reading the file.
	if err := stream.Send(&pb.ImageChunk{Digest: img.Digest}); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if serr := stream.Send(&pb.ImageChunk{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return status.Errorf(codes.Internal, "fetch image %s: %v", req.Reference, err)
		}
	}
}

// nodeNeedsImage reports whether an instance assigned to node runs img
// (by one of its references or its digest).
func nodeNeedsImage(v *store.View, node string, img *store.Image) bool {
	for _, vi := range v.NodeInstances(node) {
		ref := vi.Instance.Template.Image
		if ref == img.Digest || slices.Contains(img.References, ref) {
			return true
		}
	}
	return false
}

// localImage returns the path of the upload on this replica's disk. An
// upload another replica received is fetched from it first (once; later
// requests find it here) and checked against its digest.
func (s *Server) localImage(ctx context.Context, img *store.Image) (string, error) {
	local := s.imagePath(img.Digest)
	self := s.replica.Load()
	paths := []string{local}
	if img.Source == "" || (self != nil && img.Source == self.addr) {
		paths = append(paths, img.Path) // img.Path is on this replica's disk
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if img.Source == "" || self == nil || img.Source == self.addr {
		return "", fmt.Errorf("the file of upload %s is gone from this replica", img.Digest)
	}
	s.pulls.Lock()
	defer s.pulls.Unlock()
	if _, err := os.Stat(local); err == nil {
		return local, nil // pulled meanwhile
	}
	if err := s.pullImage(ctx, img, local); err != nil {
		return "", fmt.Errorf("from replica %s: %w", img.Source, err)
	}
	s.logger.Info("image fetched from the replica that received it", "digest", img.Digest, "from", img.Source, "size", img.Size)
	return local, nil
}

func (s *Server) pullImage(ctx context.Context, img *store.Image, dest string) error {
	conn, err := pb.Dial(img.Source, s.cfg.ReplicaTLS)
	if err != nil {
		return err
	}
	defer conn.Close()
	ref := ""
	if len(img.References) > 0 {
		ref = img.References[0]
	}
	stream, err := pb.NewNodeAgentClient(conn).FetchImage(ctx, &pb.FetchImageRequest{Reference: ref, Digest: img.Digest})
	if err != nil {
		return err
	}
	tb, err := receiveTarball(s.cfg.ImageDir, "pull-*.tar", stream.Recv)
	defer os.Remove(tb.path)
	if err != nil {
		return err
	}
	if tb.digest != img.Digest {
		return fmt.Errorf("received %d bytes with digest %s, want %s", tb.size, tb.digest, img.Digest)
	}
	return os.Rename(tb.path, dest)
}

// imagePath is where this replica keeps the upload with digest.
func (s *Server) imagePath(digest string) string {
	return filepath.Join(s.cfg.ImageDir, "sha256-"+strings.TrimPrefix(digest, "sha256:")+".tar")
}

var errImageTooLarge = fmt.Errorf("larger than %d bytes", maxImageSize)

// tarball is an image tarball received into a temporary file.
type tarball struct {
	path, name, digest string // name: the first chunk's file name
	size               int64
}

// receiveTarball writes the chunks recv returns, until EOF, to a new
// temporary file in dir and syncs it. The file (path) is there even on an
// error: the caller removes it, or renames it into place. Past
// maxImageSize it stops with errImageTooLarge.
func receiveTarball(dir, pattern string, recv func() (*pb.ImageChunk, error)) (tarball, error) {
	tmp, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return tarball{}, err
	}
	defer tmp.Close()
	tb := tarball{path: tmp.Name()}
	h := sha256.New()
	for {
		chunk, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return tb, err
		}
		if tb.name == "" {
			tb.name = chunk.FileName
		}
		tb.size += int64(len(chunk.Data))
		if tb.size > maxImageSize {
			return tb, errImageTooLarge
		}
		if _, err := tmp.Write(chunk.Data); err != nil {
			return tb, err
		}
		h.Write(chunk.Data)
	}
	tb.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return tb, tmp.Sync()
}
