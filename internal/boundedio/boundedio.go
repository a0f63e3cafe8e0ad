// Package boundedio reads files of untrusted size with a limit.
package boundedio

import (
	"fmt"
	"io"
	"os"
)

// ReadFile reads path, refusing a file over limit bytes without reading
// more than limit+1 of it.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s exceeds the %d-byte limit", path, limit)
	}
	return b, nil
}
