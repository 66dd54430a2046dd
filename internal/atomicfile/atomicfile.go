// Package atomicfile replaces files so that a crash or a power cut leaves
// the old content or the new, never a part, and the new one once Write
// has returned.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, with mode perm: a temporary file in the
// same directory (given perm before anything is written into it, so a
// secret is never readable by others), synced, renamed over path, and the
// directory synced so that the rename itself is on disk.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, true)
}

// Replace is Write without the syncs, for files made again from other
// state at every start (a container's hosts file): a crash leaves the old
// content or the new, but a power cut may lose the new.
func Replace(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

func write(path string, data []byte, perm os.FileMode, durable bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	done = true
	if !durable {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
