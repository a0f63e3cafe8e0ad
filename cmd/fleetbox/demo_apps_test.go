package main

import (
	"bytes"
	"testing"

	"github.com/fleetbox/fleetbox/node/contexts/apptest"
)

// TestDemoAppsReproducible: the embedded kv.wasm is exactly what the
// sources build to (demoapps/README.md).
func TestDemoAppsReproducible(t *testing.T) {
	if got := apptest.Build(t, apptest.KV); !bytes.Equal(got, demoKV) {
		t.Fatalf("cmd/fleetbox/demoapps/kv.wasm (%d bytes) is not what node/contexts/examples/kv builds to (%d bytes): run go generate ./cmd/fleetbox", len(demoKV), len(got))
	}
}
