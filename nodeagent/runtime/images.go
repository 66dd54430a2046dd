package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// HasImage reports whether ref is in the image store.
func (r *Runtime) HasImage(ctx context.Context, ref string) (bool, error) {
	name, err := normalizeRef(ref)
	if err != nil {
		return false, err
	}
	_, err = r.client.ImageService().Get(ctx, name)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("runtime: image %s: %w", ref, err)
	}
	return true, nil
}

// ImportImage imports a docker-archive or OCI tarball, unpacks every image in
// it for the snapshotter and returns the image names.
func (r *Runtime) ImportImage(ctx context.Context, rd io.Reader) ([]string, error) {
	imgs, err := r.client.Import(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("runtime: import image: %w", err)
	}
	names := make([]string, 0, len(imgs))
	for _, img := range imgs {
		image := containerd.NewImage(r.client, img)
		if err := image.Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return names, fmt.Errorf("runtime: unpack image %s: %w", img.Name, err)
		}
		names = append(names, img.Name)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("runtime: import image: the tarball names no image")
	}
	return names, nil
}

// PullImage pulls ref from its registry and unpacks it.
func (r *Runtime) PullImage(ctx context.Context, ref string) error {
	name, err := normalizeRef(ref)
	if err != nil {
		return err
	}
	if _, err := r.client.Pull(ctx, name, containerd.WithPullUnpack, containerd.WithPullSnapshotter(r.cfg.Snapshotter)); err != nil {
		return fmt.Errorf("runtime: pull %s: %w", ref, err)
	}
	return nil
}

// normalizeRef turns "nginx" into "docker.io/library/nginx:latest", the
// name containerd stores.
func normalizeRef(ref string) (string, error) {
	if ref == "" {
		return "", errors.New("runtime: empty image reference")
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("runtime: image reference %q: %w", ref, err)
	}
	return named.String(), nil
}

// ImageLabel returns the value of a label on image ref; "" when the label
// or the image is missing.
func (r *Runtime) ImageLabel(ctx context.Context, ref, key string) (string, error) {
	name, err := normalizeRef(ref)
	if err != nil {
		return "", err
	}
	img, err := r.client.ImageService().Get(ctx, name)
	if errdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("runtime: image %s: %w", ref, err)
	}
	return img.Labels[key], nil
}

// LabelImage sets a label on image ref.
func (r *Runtime) LabelImage(ctx context.Context, ref, key, value string) error {
	name, err := normalizeRef(ref)
	if err != nil {
		return err
	}
	is := r.client.ImageService()
	img, err := is.Get(ctx, name)
	if err != nil {
		return fmt.Errorf("runtime: image %s: %w", ref, err)
	}
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	img.Labels[key] = value
	if _, err := is.Update(ctx, img, "labels."+key); err != nil {
		return fmt.Errorf("runtime: label image %s: %w", ref, err)
	}
	return nil
}
