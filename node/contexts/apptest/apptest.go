// Package apptest builds fleetbox applications from source for tests, once
// per test process: nothing prebuilt is committed.
package apptest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
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

// BuildFlags make an application build reproducible: the same sources and
// toolchain give the same bytes (cmd/fleetbox embeds the demo's kv.wasm
// built with them, and a test rebuilds it to compare).
var BuildFlags = []string{"-trimpath", "-buildvcs=false", "-ldflags=-buildid=", "-buildmode=c-shared"}

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
		// One directory per user, shared by test processes (fuzz workers
		// start many): a build is named by the hash of its sources.
		d := filepath.Join(os.TempDir(), fmt.Sprintf("fleetbox-apps-%d", os.Getuid()))
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		dir = d
	}
	sum, err := sourceHash(pkg)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, filepath.Base(pkg)+"-"+sum+".wasm")
	if b, err := os.ReadFile(out); err == nil {
		built[pkg] = b
		return b, nil
	}
	tmp := out + fmt.Sprintf(".%d.tmp", os.Getpid())
	cmd := exec.Command("go", append([]string{"build"}, append(BuildFlags, "-o", tmp, "./"+pkg)...)...)
	cmd.Dir = Root()
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, &BuildError{Pkg: pkg, Output: string(msg), Err: err}
	}
	if err := os.Rename(tmp, out); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	built[pkg] = b
	return b, nil
}

// CacheDir is a wazero compilation cache directory shared by the test
// processes of this user (entries are named by the module's hash).
func CacheDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("fleetbox-wazero-cache-%d", os.Getuid()))
}

// sourceHash hashes the Go toolchain version, the package's files and the
// SDK's, which is all an application build depends on here.
func sourceHash(pkg string) (string, error) {
	h := sha256.New()
	h.Write([]byte(runtime.Version() + strings.Join(BuildFlags, " ")))
	for _, d := range []string{pkg, "node/contexts/sdk"} {
		files, err := filepath.Glob(filepath.Join(Root(), d, "*.go"))
		if err != nil {
			return "", err
		}
		sort.Strings(files)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12]), nil
}

// BuildError is a failed application build.
type BuildError struct {
	Pkg, Output string
	Err         error
}

func (e *BuildError) Error() string {
	return "building " + e.Pkg + ": " + e.Err.Error() + "\n" + e.Output
}
