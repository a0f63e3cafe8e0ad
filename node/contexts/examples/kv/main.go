//go:build wasip1

// Command kv is the key-value example application: a context of it is a
// replicated map of strings.
//
//	init   {"entries": {"k": "v", ...}}   optional initial entries
//	set    {"key": "k", "value": "v"}     -> {}
//	remove {"key": "k"}                   -> {"removed": true|false}
//	get    {"key": "k"}                   -> {"value": "v", "found": true|false} (a query)
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o kv.wasm .
package main

import (
	"encoding/json"
	"errors"

	"github.com/fleetbox/fleetbox/node/contexts/sdk"
)

type keyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func decode(in []byte, v any) error {
	if err := json.Unmarshal(in, v); err != nil {
		return errors.New("input is not the expected JSON: " + err.Error())
	}
	return nil
}

//go:wasmexport init
func initialize() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		if len(in) == 0 {
			return []byte("{}"), nil
		}
		var args struct {
			Entries map[string]string `json:"entries"`
		}
		if err := decode(in, &args); err != nil {
			return nil, err
		}
		for k, v := range args.Entries {
			sdk.Set([]byte(k), []byte(v))
		}
		return []byte("{}"), nil
	})
}

//go:wasmexport set
func set() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		var kv keyValue
		if err := decode(in, &kv); err != nil {
			return nil, err
		}
		if kv.Key == "" {
			return nil, errors.New("key is empty")
		}
		sdk.Set([]byte(kv.Key), []byte(kv.Value))
		sdk.Emit("set", []byte(kv.Key))
		return []byte("{}"), nil
	})
}

//go:wasmexport remove
func remove() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		var kv keyValue
		if err := decode(in, &kv); err != nil {
			return nil, err
		}
		return json.Marshal(map[string]bool{"removed": sdk.Remove([]byte(kv.Key))})
	})
}

//go:wasmexport get
func get() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		var kv keyValue
		if err := decode(in, &kv); err != nil {
			return nil, err
		}
		v, ok := sdk.Get([]byte(kv.Key))
		return json.Marshal(struct {
			Value string `json:"value"`
			Found bool   `json:"found"`
		}{string(v), ok})
	})
}

func main() {}
