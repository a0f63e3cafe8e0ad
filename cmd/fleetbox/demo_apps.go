package main

import _ "embed"

// demoKV is the key-value example application (demoapps/README.md).
//
//go:generate sh -c "cd ../.. && GOOS=wasip1 GOARCH=wasm go build -trimpath -buildvcs=false -ldflags=-buildid= -buildmode=c-shared -o cmd/fleetbox/demoapps/kv.wasm ./node/contexts/examples/kv"
//go:embed demoapps/kv.wasm
var demoKV []byte
