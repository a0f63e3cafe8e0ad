// Package atomicfile writes a file so that a reader (or a crash) sees the
// old content or the new, never a part: a temporary file in the same
// directory, written and synced, then renamed over the target.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data at mode, creating the directory if needed.
// The directory itself is not synced: the rename is durable at the file
// system's next commit.
func Write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
