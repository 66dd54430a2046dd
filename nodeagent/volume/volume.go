// Package volume keeps a node's volume data: one directory per volume
// under the agent's state dir, loop-mounted from an ext4 image of the
// volume's size when it has one (so the limit holds), nodev,nosuid. It
// decides nothing: the control plane says which volumes exist, where.
package volume

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/berth-dev/berth/api"
)

// Store is the volumes of one node under Root.
type Store struct {
	Root   string
	Logger *slog.Logger
}

// path is a volume's directory; names are DNS labels (apply validated
// them too), so none climbs out of Root.
func (s Store) path(namespace, name string) (string, error) {
	if !api.IsDNSLabel(namespace) || !api.IsDNSLabel(name) {
		return "", fmt.Errorf("volume %s/%s: not a valid name", namespace, name)
	}
	return filepath.Join(s.Root, namespace, name), nil
}

// Dir returns (creating it on first use) the directory holding a
// volume's data on this node: <Root>/<namespace>/<name>. With
// a size limit the directory is the mount point of an ext4 file system in
// <name>.img of exactly that size, loop-mounted, so the limit holds; a
// volume that already has plain data keeps it (the limit is then logged as
// not enforced rather than hiding the data under a new mount).
func (s Store) Dir(namespace, name string, sizeBytes int64) (string, error) {
	dir, err := s.path(namespace, name)
	if err != nil {
		return "", err
	}
	img := dir + ".img"
	_, dirErr := os.Stat(dir)
	_, imgErr := os.Stat(img)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("volume %s/%s: %w", namespace, name, err)
	}
	if sizeBytes <= 0 {
		return dir, nil
	}
	if imgErr != nil && dirErr == nil {
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			s.Logger.Warn("volume has data from before its size limit; the limit is not enforced", "volume", namespace+"/"+name)
			return dir, nil
		}
	}
	if err := ensureSizedVolume(dir, img, sizeBytes); err != nil {
		return "", fmt.Errorf("volume %s/%s (size %d bytes): %w", namespace, name, sizeBytes, err)
	}
	return dir, nil
}

// ensureSizedVolume makes dir the mount point of the ext4 image img,
// creating the image on first use.
func ensureSizedVolume(dir, img string, size int64) error {
	if mounted, err := isMountPoint(dir); err != nil {
		return err
	} else if mounted {
		return nil
	}
	if _, err := os.Stat(img); os.IsNotExist(err) {
		f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		err = f.Truncate(size)
		f.Close()
		if err != nil {
			os.Remove(img)
			return err
		}
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0", img).CombinedOutput(); err != nil {
			os.Remove(img)
			return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
		}
	}
	if out, err := exec.Command("mount", "-o", "loop,nodev,nosuid", img, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s: %v: %s", img, err, out)
	}
	return nil
}

// isMountPoint reports whether dir is a mount point (its device differs
// from its parent's).
func isMountPoint(dir string) (bool, error) {
	var st, parent syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return false, err
	}
	if err := syscall.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}

// Remove deletes a volume's data (unmounting its image first) and
// returns the directory it was in.
func (s Store) Remove(namespace, name string) (string, error) {
	dir, err := s.path(namespace, name)
	if err != nil {
		return "", err
	}
	if mounted, err := isMountPoint(dir); err == nil && mounted {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			return "", fmt.Errorf("umount %s: %v: %s", dir, err, out)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("remove %s: %w", dir, err)
	}
	if err := os.Remove(dir + ".img"); err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("remove %s.img: %w", dir, err)
	}
	return dir, nil
}
