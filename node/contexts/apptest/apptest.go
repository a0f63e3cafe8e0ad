// Package apptest builds fleetbox applications from source for tests, once
// per test process: nothing prebuilt is committed.
package apptest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string][]byte{}
)

// Root is the module's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// Known application packages, relative to the module root.
const (
	KV        = "node/contexts/examples/kv"
	Ledger    = "node/contexts/examples/ledger"
	Hostile   = "node/contexts/wasmhost/testdata/hostile"
	BadImport = "node/contexts/wasmhost/testdata/badimport"
)

// Build compiles the package at pkg (relative to the module root) with
// GOOS=wasip1 GOARCH=wasm -buildmode=c-shared and returns the module bytes.
// Each package is built once per process.
func Build(tb testing.TB, pkg string) []byte {
	tb.Helper()
	b, err := BuildErr(pkg)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// BuildErr is Build without a testing.TB (benchmark helpers, the demo's
// tests).
func BuildErr(pkg string) ([]byte, error) {
	mu.Lock()
	defer mu.Unlock()
	if b, ok := built[pkg]; ok {
		return b, nil
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "fleetbox-apps-")
		if err != nil {
			return nil, err
		}
		dir = d
	}
	out := filepath.Join(dir, filepath.Base(pkg)+".wasm")
	cmd := exec.Command("go", "build", "-trimpath", "-buildmode=c-shared", "-o", out, "./"+pkg)
	cmd.Dir = Root()
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, &BuildError{Pkg: pkg, Output: string(msg), Err: err}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	built[pkg] = b
	return b, nil
}

// BuildError is a failed application build.
type BuildError struct {
	Pkg, Output string
	Err         error
}

func (e *BuildError) Error() string {
	return "building " + e.Pkg + ": " + e.Err.Error() + "\n" + e.Output
}
