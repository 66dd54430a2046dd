package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/authz"
	"github.com/berth-dev/berth/controlplane/imagecheck"
	"github.com/berth-dev/berth/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// Upload limits, unless configured.
const (
	DefaultMaxImageSize = 4 << 30
	DefaultImageQuota   = 20 << 30
)

// LoadImage receives an image tarball, checks it (the digest the client
// computed, paths, blob digests, references, size and quota), stores it
// under ImageDir by digest and points its references at it. A reference
// that already names another upload is refused unless the client forces
// it, which only an admin may.
func (s *Server) LoadImage(stream pb.Berth_LoadImageServer) error {
	ctx := stream.Context()
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return storeErr(err)
	}
	var used int64
	for _, img := range imgs {
		used += img.Size
	}
	// Both bounds hold while the bytes arrive: an upload past them is cut
	// off, not written to disk first.
	// So does the room left on the data disk, which etcd shares.
	room := s.disk.room()
	limit := min(s.cfg.MaxImageSize, max(0, s.cfg.ImageQuota-used), room)
	tb, err := receiveTarball(s.cfg.ImageDir, "upload-*.tar", stream.Recv, limit)
	defer os.Remove(tb.path)
	name := tb.name
	switch {
	case errors.Is(err, errImageTooLarge) && limit == room:
		return s.disk.fullErr("load image "+name, room)
	case errors.Is(err, errImageTooLarge) && limit < s.cfg.MaxImageSize:
		return status.Errorf(codes.ResourceExhausted, "load image %s: more than %d bytes would exceed the image quota (%d of %d bytes used; berth image rm frees room, berth server --image-quota raises it)", name, limit, used, s.cfg.ImageQuota)
	case errors.Is(err, errImageTooLarge):
		return status.Errorf(codes.ResourceExhausted, "load image %s: larger than the %d bytes one upload may have (berth server --max-image-size)", name, s.cfg.MaxImageSize)
	case err != nil:
		if _, ok := status.FromError(err); ok {
			return err // the stream's own
		}
		return status.Errorf(codes.Internal, "load image %s: %v", name, err)
	}
	switch {
	case tb.sent == "":
		return status.Errorf(codes.InvalidArgument, "load image %s: the first chunk must carry the tarball's digest (sha256:<hex>), which the server checks", name)
	case tb.sent != tb.digest:
		return status.Errorf(codes.DataLoss, "load image %s: received %d bytes with digest %s, but the client sent %s: damaged in transit, nothing stored", name, tb.size, tb.digest, tb.sent)
	}
	if tb.force {
		if err := authz.Allowed(principalOf(ctx), authz.Request{Verb: authz.ImageAdmin}); err != nil {
			return status.Errorf(codes.PermissionDenied, "load image %s --force: %v", name, err)
		}
	}
	refs, err := imagecheck.Inspect(tb.path)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "load image %s: refused, nothing stored: %v", name, err)
	}
	digest, size := tb.digest, tb.size
	stored := slices.ContainsFunc(imgs, func(i store.Image) bool { return i.Digest == digest })
	path := s.imagePath(digest)
	if err := os.Rename(tb.path, path); err != nil {
		return status.Errorf(codes.Internal, "load image %s: %v", name, err)
	}
	img := store.Image{Digest: digest, Size: size, References: refs, Path: path, LoadedAt: time.Now().UTC()}
	if r := s.replica.Load(); r != nil {
		img.Source = r.addr
	}
	moved, err := s.store.PutImage(ctx, img, tb.force)
	var conflict *store.TagConflict
	if errors.As(err, &conflict) {
		if !stored {
			os.Remove(path)
		}
		return status.Errorf(codes.FailedPrecondition, "load image %s: %v: a tag names one upload, and revisions that use it keep those bytes; load it under a new tag, or re-point the tag with --force (admin)", name, err)
	}
	if err != nil {
		return storeErr(err)
	}
	who := principalOf(ctx)
	_ = s.store.RecordEvent(ctx, store.Event{Object: "image/" + refs[0], Reason: "Loaded", Message: fmt.Sprintf("image %v loaded (%s, %d bytes) by %s", refs, digest, size, who)})
	for _, ref := range slices.Sorted(maps.Keys(moved)) {
		_ = s.store.RecordEvent(ctx, store.Event{Object: "image/" + ref, Reason: "Repointed", Message: fmt.Sprintf("image %s re-pointed from %s to %s by %s (--force); new applies use the new upload", ref, moved[ref], digest, who)})
		s.logger.Warn("image tag re-pointed", "ref", ref, "from", moved[ref], "to", digest, "by", who.String())
	}
	s.logger.Info("image loaded", "refs", refs, "digest", digest, "size", size, "by", who.String())
	return stream.SendAndClose(&pb.LoadImageResponse{Digest: digest, Size: size, References: refs})
}

// ListImages lists uploaded images.
func (s *Server) ListImages(ctx context.Context, req *pb.ListImagesRequest) (*pb.ListImagesResponse, error) {
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	out := &pb.ListImagesResponse{}
	for _, img := range imgs {
		if len(img.References) == 0 { // kept for the revisions that pin it
			out.Images = append(out.Images, &pb.Image{Digest: img.Digest, Size: img.Size, LoadedAt: tsOf(img.LoadedAt)})
		}
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

// nodeNeedsImage reports whether an instance assigned to node runs img:
// its revision pinned img's digest, or (an image applied before it was
// uploaded) names one of img's references.
func nodeNeedsImage(v *store.View, node string, img *store.Image) bool {
	for _, vi := range v.NodeInstances(node) {
		if usesImage(&vi.Instance.Template, img) {
			return true
		}
	}
	return false
}

// usesImage reports whether a template runs the upload img.
func usesImage(t *api.ServiceSpec, img *store.Image) bool {
	if t.ImageDigest != "" {
		return t.ImageDigest == img.Digest
	}
	return t.Image == img.Digest || slices.Contains(img.References, t.Image)
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
	if room := s.disk.room(); img.Size > room { // a copy must not fill etcd's disk
		return s.disk.fullErr("copy upload "+img.Digest, room)
	}
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
	tb, err := receiveTarball(s.cfg.ImageDir, "pull-*.tar", stream.Recv, img.Size)
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

var errImageTooLarge = errors.New("upload too large")

// tarball is an image tarball received into a temporary file.
type tarball struct {
	path, name, digest string // name: the first chunk's file name
	size               int64
	// sent is the digest the first chunk claimed; force its force flag.
	sent  string
	force bool
}

// receiveTarball writes the chunks recv returns, until EOF, to a new
// temporary file in dir and syncs it. The file (path) is there even on an
// error: the caller removes it, or renames it into place. Past limit
// bytes it stops with errImageTooLarge, before writing them.
func receiveTarball(dir, pattern string, recv func() (*pb.ImageChunk, error), limit int64) (tarball, error) {
	tmp, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return tarball{}, err
	}
	defer tmp.Close()
	tb := tarball{path: tmp.Name()}
	h := sha256.New()
	for first := true; ; first = false {
		chunk, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return tb, err
		}
		if first {
			tb.name, tb.sent, tb.force = chunk.FileName, chunk.Digest, chunk.Force
		}
		tb.size += int64(len(chunk.Data))
		if tb.size > limit {
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

// RemoveImage removes a tag, or an upload by digest. A tag goes with its
// upload once no other tag names it and nothing pins it. Something still
// using it (a service, an instance, a kept revision) refuses the removal
// unless forced: containers that need it would then fail to start.
func (s *Server) RemoveImage(ctx context.Context, req *pb.RemoveImageRequest) (*pb.RemoveImageResponse, error) {
	target := strings.TrimSpace(req.Image)
	if target == "" {
		return nil, status.Error(codes.InvalidArgument, "image rm: name a reference (berth.local/web:v1) or an upload's digest (sha256:...)")
	}
	byDigest := strings.HasPrefix(target, "sha256:")
	var img *store.Image
	var err error
	if byDigest {
		img, err = s.store.GetImage(ctx, target)
	} else {
		img, err = s.store.FindImage(ctx, target)
	}
	if err != nil {
		return nil, storeErr(err)
	}
	users, err := s.imageUsers(ctx, img)
	if err != nil {
		return nil, storeErr(err)
	}
	pinned := slices.ContainsFunc(users, func(u imageUser) bool { return u.pinned })
	if !byDigest {
		// Removing a tag breaks only what names it without a pin.
		users = slices.DeleteFunc(users, func(u imageUser) bool { return u.pinned })
	}
	if len(users) > 0 && !req.Force {
		return nil, status.Errorf(codes.FailedPrecondition, "image rm %s: in use by %s; --force removes it anyway (their containers then cannot start on a node that lacks it)", target, describeUsers(users))
	}
	out := &pb.RemoveImageResponse{}
	deleteUpload := byDigest
	if !byDigest {
		if _, err := s.store.RemoveImageReference(ctx, target); err != nil {
			return nil, storeErr(err)
		}
		out.RemovedReferences = []string{target}
		rest, err := s.store.GetImage(ctx, img.Digest)
		if err != nil {
			return nil, storeErr(err)
		}
		// Users by this tag alone are gone with it; those by digest stay.
		deleteUpload = len(rest.References) == 0 && !pinned
	}
	if deleteUpload {
		refs, err := s.store.DeleteImage(ctx, img.Digest)
		if err != nil {
			return nil, storeErr(err)
		}
		out.RemovedReferences = slices.Compact(slices.Sorted(slices.Values(append(out.RemovedReferences, refs...))))
		out.RemovedDigest = img.Digest
		if err := os.Remove(s.imagePath(img.Digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.logger.Warn("could not remove an image file", "digest", img.Digest, "err", err)
		}
	}
	who := principalOf(ctx)
	_ = s.store.RecordEvent(ctx, store.Event{Object: "image/" + target, Reason: "Removed",
		Message: fmt.Sprintf("image %s removed by %s (references %v, upload removed: %v)", target, who, out.RemovedReferences, out.RemovedDigest != "")})
	s.logger.Info("image removed", "image", target, "references", out.RemovedReferences, "digest", out.RemovedDigest, "by", who.String())
	return out, nil
}

// imageUser is something that runs an upload: pinned by digest, or by a
// reference applied before the upload existed.
type imageUser struct {
	what   string
	pinned bool
}

// imageUsers lists the services, kept revisions and instances that run
// img.
func (s *Server) imageUsers(ctx context.Context, img *store.Image) ([]imageUser, error) {
	v := s.cache.View()
	var out []imageUser
	add := func(t *api.ServiceSpec, what string) {
		if usesImage(t, img) {
			out = append(out, imageUser{what: what, pinned: t.ImageDigest != ""})
		}
	}
	for i := range v.Services {
		svc := &v.Services[i]
		add(&svc.Spec, "service "+svc.Key())
		revs, err := s.store.ListRevisions(ctx, svc.Metadata.Namespace, svc.Metadata.Name)
		if err != nil {
			return nil, err
		}
		for j := range revs {
			add(&revs[j].Template, fmt.Sprintf("revision %d of %s", revs[j].Number, svc.Key()))
		}
	}
	for _, vi := range v.Instances {
		add(&vi.Instance.Template, "instance "+vi.Instance.ID)
	}
	return out, nil
}

func describeUsers(us []imageUser) string {
	names := make([]string, 0, len(us))
	for _, u := range us {
		names = append(names, u.what)
	}
	if len(names) > 5 {
		names = append(names[:5], fmt.Sprintf("and %d more", len(names)-5))
	}
	return strings.Join(names, ", ")
}

// SweepImages removes files in ImageDir that no upload in the store names
// (removed on another replica, or left by an interrupted upload).
func (s *Server) SweepImages(ctx context.Context) error {
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, img := range imgs {
		keep[filepath.Base(s.imagePath(img.Digest))] = true
	}
	entries, err := os.ReadDir(s.cfg.ImageDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || keep[e.Name()] || !strings.HasSuffix(e.Name(), ".tar") {
			continue
		}
		if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < time.Hour {
			continue // maybe an upload in flight, not yet recorded
		}
		if err := os.Remove(filepath.Join(s.cfg.ImageDir, e.Name())); err == nil {
			s.logger.Info("removed an image file no upload names", "file", e.Name())
		}
	}
	return nil
}

// imageResync is how often ReplicateImages looks for uploads it lacks
// besides the watch (one missed while etcd was away, a failed pull).
const imageResync = 30 * time.Second

// ReplicateImages keeps a copy of every upload on this replica's disk:
// an upload is fetched from the replica that received it as soon as it is
// recorded, so that an image still starts when that replica is down (an
// agent asks whichever replica it is connected to). Until then, and if a
// pull fails, localImage fetches on demand as before. A removed upload's
// copy goes at the next pass (SweepImages).
func (s *Server) ReplicateImages(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go func() {
		for ctx.Err() == nil {
			for range s.store.Client().Watch(ctx, store.ImagesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()) {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
			select { // the watch broke (etcd away): again in a moment
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	t := time.NewTicker(imageResync)
	defer t.Stop()
	failing := map[string]bool{} // digests whose pull failed, logged once
	for {
		s.replicateImages(ctx, failing)
		// An upload removed through another replica leaves this
		// replica's copy behind: image rm deletes the file only where it
		// runs, and the sweep ran only at start.
		if err := s.SweepImages(ctx); err != nil && ctx.Err() == nil {
			s.logger.Debug("image sweep failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-t.C:
		}
	}
}

func (s *Server) replicateImages(ctx context.Context, failing map[string]bool) {
	self := s.replica.Load()
	if self == nil {
		return // this replica's address is not known yet: every upload looks foreign
	}
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return // etcd away: the next wake or resync tries again
	}
	for i := range imgs {
		img := &imgs[i]
		if img.Source == "" || img.Source == self.addr {
			continue
		}
		if _, err := os.Stat(s.imagePath(img.Digest)); err == nil {
			continue
		}
		if _, err := s.localImage(ctx, img); err != nil {
			if !failing[img.Digest] && ctx.Err() == nil {
				s.logger.Warn("cannot copy an upload from the replica that received it; fetched on demand later", "digest", img.Digest, "from", img.Source, "err", err)
			}
			failing[img.Digest] = true
			continue
		}
		delete(failing, img.Digest)
	}
}
