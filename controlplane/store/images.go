package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Image is an uploaded image tarball that agents import.
type Image struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	// References are the tags that name this upload now (a tag names one
	// upload; re-pointing it moves it). An upload no tag names stays
	// while revisions pin its digest.
	References []string  `json:"references"`
	Path       string    `json:"path"` // on the disk of the replica that received it
	LoadedAt   time.Time `json:"loadedAt"`
	// Source is the API address of the replica that received it; other
	// replicas fetch the file from there when an agent asks them for it.
	Source string `json:"source,omitempty"`
}

// TagConflict is PutImage's refusal to move a tag that names another
// upload without force.
type TagConflict struct {
	Reference, Digest string // the tag and the upload it names now
}

func (e *TagConflict) Error() string {
	return fmt.Sprintf("image %s already names upload %s", e.Reference, e.Digest)
}

// GetImage returns the upload with this digest.
func (s *Store) GetImage(ctx context.Context, digest string) (*Image, error) {
	img, _, err := s.getImage(ctx, digest)
	if err != nil {
		return nil, err
	}
	if img == nil {
		return nil, fmt.Errorf("image %s: %w", digest, ErrNotFound)
	}
	return img, nil
}

// getImage returns the record (nil if none) and its mod revision.
func (s *Store) getImage(ctx context.Context, digest string) (*Image, int64, error) {
	resp, err := s.cli.Get(ctx, imageKey(digest))
	if err != nil {
		return nil, 0, fmt.Errorf("store: get image %s: %w", digest, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var img Image
	if err := json.Unmarshal(resp.Kvs[0].Value, &img); err != nil {
		return nil, 0, fmt.Errorf("store: decode image %s: %w", digest, err)
	}
	return &img, resp.Kvs[0].ModRevision, nil
}

// PutImage records an upload under its digest and points each of its
// references at it, in one transaction. A reference that names another
// upload is refused with a *TagConflict unless force, which moves it (the
// other upload stays, for the revisions that pin it). Uploading the same
// digest again adds its references. moved maps each moved reference to
// the digest it named before.
func (s *Store) PutImage(ctx context.Context, img Image, force bool) (moved map[string]string, err error) {
	err = casRetry("put image "+img.Digest, func() (bool, error) {
		moved = map[string]string{}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		old, rev, err := s.getImage(ctx, img.Digest)
		if err != nil {
			return false, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(imageKey(img.Digest)), "=", rev))
		rec := img
		if old != nil {
			rec.References = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(old.References), img.References...))))
		}
		others := map[string]*Image{}
		for _, ref := range img.References {
			resp, err := s.cli.Get(ctx, imageRefKey(ref))
			if err != nil {
				return false, fmt.Errorf("store: get image reference %s: %w", ref, err)
			}
			var refRev int64
			if len(resp.Kvs) > 0 {
				refRev = resp.Kvs[0].ModRevision
				if cur := string(resp.Kvs[0].Value); cur != img.Digest {
					if !force {
						return false, &TagConflict{Reference: ref, Digest: cur}
					}
					moved[ref] = cur
					if others[cur] == nil {
						o, orev, err := s.getImage(ctx, cur)
						if err != nil {
							return false, err
						}
						cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(imageKey(cur)), "=", orev))
						if o != nil {
							others[cur] = o
						}
					}
				}
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(imageRefKey(ref)), "=", refRev))
			ops = append(ops, clientv3.OpPut(imageRefKey(ref), img.Digest))
		}
		for digest, o := range others {
			o.References = slices.DeleteFunc(o.References, func(r string) bool { _, ok := moved[r]; return ok })
			ops = append(ops, clientv3.OpPut(imageKey(digest), mustJSON(o)))
		}
		ops = append(ops, clientv3.OpPut(imageKey(img.Digest), mustJSON(rec)))
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("store: put image %s: %w", img.Digest, err)
		}
		return resp.Succeeded, nil
	})
	if err != nil {
		return nil, err
	}
	return moved, nil
}

// ListImages returns uploaded images, newest first.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	resp, err := s.cli.Get(ctx, ImagesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list images: %w", err)
	}
	var out []Image
	for _, kv := range resp.Kvs {
		var img Image
		if err := json.Unmarshal(kv.Value, &img); err != nil {
			return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LoadedAt.After(out[j].LoadedAt) })
	return out, nil
}

// ImageReferences maps every reference to the digest of the upload it
// names.
func (s *Store) ImageReferences(ctx context.Context) (map[string]string, error) {
	resp, err := s.cli.Get(ctx, ImageRefsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list image references: %w", err)
	}
	out := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(ImageRefsPrefix):])] = string(kv.Value)
	}
	return out, nil
}

// FindImage returns the upload ref names.
func (s *Store) FindImage(ctx context.Context, ref string) (*Image, error) {
	resp, err := s.cli.Get(ctx, imageRefKey(ref))
	if err != nil {
		return nil, fmt.Errorf("store: get image reference %s: %w", ref, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("image %s: %w", ref, ErrNotFound)
	}
	return s.GetImage(ctx, string(resp.Kvs[0].Value))
}

// RemoveImageReference removes a tag; the upload it named stays (the
// caller decides whether to delete it). It returns that upload's digest.
func (s *Store) RemoveImageReference(ctx context.Context, ref string) (string, error) {
	var digest string
	err := casRetry("remove image reference "+ref, func() (bool, error) {
		resp, err := s.cli.Get(ctx, imageRefKey(ref))
		if err != nil {
			return false, fmt.Errorf("store: get image reference %s: %w", ref, err)
		}
		if len(resp.Kvs) == 0 {
			return false, fmt.Errorf("image %s: %w", ref, ErrNotFound)
		}
		var refRev int64
		digest, refRev = string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
		img, rev, err := s.getImage(ctx, digest)
		if err != nil {
			return false, err
		}
		ops := []clientv3.Op{clientv3.OpDelete(imageRefKey(ref))}
		if img != nil {
			img.References = slices.DeleteFunc(img.References, func(r string) bool { return r == ref })
			ops = append(ops, clientv3.OpPut(imageKey(digest), mustJSON(img)))
		}
		tr, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(imageRefKey(ref)), "=", refRev),
			clientv3.Compare(clientv3.ModRevision(imageKey(digest)), "=", rev),
		).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("store: remove image reference %s: %w", ref, err)
		}
		return tr.Succeeded, nil
	})
	return digest, err
}

// DeleteImage removes an upload and every tag that names it; it returns
// the tags.
func (s *Store) DeleteImage(ctx context.Context, digest string) ([]string, error) {
	var refs []string
	err := casRetry("delete image "+digest, func() (bool, error) {
		img, rev, err := s.getImage(ctx, digest)
		if err != nil {
			return false, err
		}
		if img == nil {
			return false, fmt.Errorf("image %s: %w", digest, ErrNotFound)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(imageKey(digest)), "=", rev)}
		ops := []clientv3.Op{clientv3.OpDelete(imageKey(digest))}
		refs = nil
		for _, ref := range img.References {
			resp, err := s.cli.Get(ctx, imageRefKey(ref))
			if err != nil {
				return false, fmt.Errorf("store: get image reference %s: %w", ref, err)
			}
			if len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != digest {
				continue // names another upload (data from before the index)
			}
			refs = append(refs, ref)
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(imageRefKey(ref)), "=", resp.Kvs[0].ModRevision))
			ops = append(ops, clientv3.OpDelete(imageRefKey(ref)))
		}
		tr, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("store: delete image %s: %w", digest, err)
		}
		return tr.Succeeded, nil
	})
	return refs, err
}

// IndexImageReferences gives every tag recorded in an upload (as data from
// before the reference index has them) its index key, pointing at the
// newest upload that carries it. Tags already indexed are left alone.
func (s *Store) IndexImageReferences(ctx context.Context) error {
	imgs, err := s.ListImages(ctx) // newest first
	if err != nil {
		return err
	}
	indexed, err := s.ImageReferences(ctx)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		for _, ref := range img.References {
			if _, ok := indexed[ref]; ok {
				continue // the usual case: nothing to write at start
			}
			indexed[ref] = img.Digest
			_, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(imageRefKey(ref)), "=", 0)).
				Then(clientv3.OpPut(imageRefKey(ref), img.Digest)).Commit()
			if err != nil {
				return fmt.Errorf("store: index image reference %s: %w", ref, err)
			}
		}
	}
	return nil
}
