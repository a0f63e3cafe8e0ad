package wasmhost_test

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/contexts/apptest"
	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
)

// mapState is a StateReader over a map.
type mapState map[string][]byte

func (m mapState) Get(k string) ([]byte, bool) { v, ok := m[k]; return v, ok }

func load(t testing.TB, h *wasmhost.Host, pkg string) wasmhost.ApplicationID {
	t.Helper()
	info, err := h.Load(context.Background(), apptest.Build(t, pkg))
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

func newHost(t testing.TB, lim wasmhost.Limits) *wasmhost.Host {
	t.Helper()
	h := wasmhost.New(wasmhost.Config{CacheDir: apptest.CacheDir(), Limits: lim})
	t.Cleanup(func() { h.Close(context.Background()) })
	return h
}

func call(h *wasmhost.Host, id wasmhost.ApplicationID, method string, in []byte, st mapState) (*wasmhost.Result, error) {
	return h.Call(context.Background(), id, &wasmhost.Request{Context: [32]byte{1}, Caller: [32]byte{2}, Method: method, Input: in}, st)
}

func TestKVCall(t *testing.T) {
	h := newHost(t, wasmhost.Limits{})
	kv := load(t, h, apptest.KV)
	res, err := call(h, kv, "set", []byte(`{"key":"a","value":"1"}`), mapState{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Writes) != 1 || string(res.Writes[0].Key) != "a" || string(res.Writes[0].Value) != "1" || len(res.Events) != 1 {
		t.Fatalf("writes %+v events %+v", res.Writes, res.Events)
	}
	res, err = h.Call(context.Background(), kv, &wasmhost.Request{Method: "get", Input: []byte(`{"key":"a"}`), ReadOnly: true}, mapState{"a": []byte("xyz")})
	if err != nil || string(res.Output) != `{"value":"xyz","found":true}` {
		t.Fatalf("get: %q, %v", res.Output, err)
	}
	_, err = h.Call(context.Background(), kv, &wasmhost.Request{Method: "set", Input: []byte(`{"key":"a","value":"1"}`), ReadOnly: true}, mapState{})
	if !errors.Is(err, wasmhost.ErrQueryWrite) {
		t.Fatalf("a query that writes: %v", err)
	}
	_, err = call(h, kv, "set", []byte(`not json`), mapState{})
	if !errors.Is(err, wasmhost.ErrRefused) {
		t.Fatalf("bad input: %v", err)
	}
}

// TestHostile: each misbehaviour fails with its own named error, and the
// host keeps serving other applications (and the same one) afterwards.
func TestHostile(t *testing.T) {
	// Only the loop should meet the time limit; a generous one keeps a slow
	// machine (-race) from timing out the memory bomb first.
	h := newHost(t, wasmhost.Limits{CallTimeout: 10 * time.Second, MemoryPages: 256})
	hostile := load(t, h, apptest.Hostile)
	kv := load(t, h, apptest.KV)
	short := newHost(t, wasmhost.Limits{CallTimeout: 300 * time.Millisecond})
	looping := load(t, short, apptest.Hostile)
	for name, tc := range map[string]struct {
		method string
		input  []byte
		want   error
	}{
		"infinite loop":     {"loop", nil, wasmhost.ErrTimeLimit},
		"memory bomb":       {"bomb", nil, wasmhost.ErrMemoryLimit},
		"huge return value": {"huge", nil, wasmhost.ErrOutputTooLarge},
		"trap":              {"trap", nil, wasmhost.ErrTrap},
		"huge value":        {"bigwrite", nil, wasmhost.ErrValueTooLarge},
		"too many writes":   {"manywrites", nil, wasmhost.ErrTooManyWrites},
		"refusal":           {"refuse", nil, wasmhost.ErrRefused},
		"no such method":    {"nope", nil, wasmhost.ErrNoMethod},
		"huge input":        {"counter", make([]byte, 1<<20), wasmhost.ErrInputTooLarge},
		"bad pointer":       {"abi", []byte{5, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0}, wasmhost.ErrBadPointer},
		"empty key":         {"write", nil, wasmhost.ErrKeyTooLarge},
	} {
		t.Run(name, func(t *testing.T) {
			var err error
			if tc.method == "loop" {
				_, err = call(short, looping, tc.method, tc.input, mapState{})
			} else {
				_, err = call(h, hostile, tc.method, tc.input, mapState{})
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if _, err := call(h, kv, "set", []byte(`{"key":"a","value":"1"}`), mapState{}); err != nil {
				t.Fatalf("another application after it: %v", err)
			}
			if res, err := call(h, hostile, "counter", nil, mapState{}); err != nil || binary.BigEndian.Uint64(res.Output) != 1 {
				t.Fatalf("the same application after it: %v", err)
			}
		})
	}
}

func TestInstallChecks(t *testing.T) {
	h := newHost(t, wasmhost.Limits{})
	ctx := context.Background()
	for name, tc := range map[string]struct {
		wasm []byte
		want error
	}{
		"not wasm":            {[]byte("#!/bin/sh\necho hello\n"), wasmhost.ErrNotWasm},
		"empty":               {nil, wasmhost.ErrNotWasm},
		"header only":         {[]byte{0, 'a', 's', 'm', 1, 0, 0, 0}, wasmhost.ErrBadExports},
		"truncated":           {apptest.Build(t, apptest.KV)[:1000], wasmhost.ErrInvalidModule},
		"missing host import": {apptest.Build(t, apptest.BadImport), wasmhost.ErrBadImport},
		"too large":           {make([]byte, wasmhost.MaxAppSize+1), wasmhost.ErrAppTooLarge},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := h.Check(ctx, tc.wasm); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	info, err := h.Check(ctx, apptest.Build(t, apptest.Ledger))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"balance", "init", "transfer"}; !equalStrings(info.Methods, want) {
		t.Fatalf("methods %v, want %v", info.Methods, want)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestNoCarryOver: a call's result depends only on the state, the call and
// the caller — not on earlier calls through the same instance (a global
// counter), nor on time or randomness.
func TestNoCarryOver(t *testing.T) {
	h := newHost(t, wasmhost.Limits{})
	id := load(t, h, apptest.Hostile)
	var envs []string
	for i := range 20 {
		res, err := call(h, id, "counter", nil, mapState{})
		if err != nil {
			t.Fatal(err)
		}
		if n := binary.BigEndian.Uint64(res.Output); n != 1 {
			t.Fatalf("call %d: global counter reads %d, want 1 in every call", i, n)
		}
		res, err = call(h, id, "env", []byte("same input"), mapState{})
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, string(res.Output))
	}
	for _, e := range envs[1:] {
		if e != envs[0] {
			t.Fatalf("time and randomness differ between identical calls: %q vs %q", e, envs[0])
		}
	}
	// Another host (a restarted node, another member) computes the same.
	h2 := wasmhost.New(wasmhost.Config{Interpreter: true})
	defer h2.Close(context.Background())
	id2 := load(t, h2, apptest.Hostile)
	res, err := call(h2, id2, "env", []byte("same input"), mapState{})
	if err != nil || string(res.Output) != envs[0] {
		t.Fatalf("another host (interpreter): %q, %v; want %q", res.Output, err, envs[0])
	}
	res, err = call(h, id, "env", []byte("other input"), mapState{})
	if err != nil || string(res.Output) == envs[0] {
		t.Fatalf("a different call should see a different random stream: %q, %v", res.Output, err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	h := newHost(t, wasmhost.Limits{})
	id := load(t, h, apptest.Hostile)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 8 {
		wg.Go(func() {
			for range 8 {
				res, err := call(h, id, "counter", nil, mapState{})
				if err == nil && binary.BigEndian.Uint64(res.Output) != 1 {
					err = errors.New("counter carried over")
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// FuzzHostABI drives every host function with arbitrary pointers, lengths
// and keys through the hostile application's "abi" method. Any outcome is
// fine except a panic escaping the host or an unnamed error.
func FuzzHostABI(f *testing.F) {
	h := wasmhost.New(wasmhost.Config{CacheDir: apptest.CacheDir(), Limits: wasmhost.Limits{CallTimeout: time.Second}})
	defer h.Close(context.Background())
	info, err := h.Load(context.Background(), apptest.Build(f, apptest.Hostile))
	if err != nil {
		f.Fatal(err)
	}
	rec := func(op byte, a ...uint32) []byte {
		b := []byte{op}
		for i := range 4 {
			v := uint32(0)
			if i < len(a) {
				v = a[i]
			}
			b = binary.BigEndian.AppendUint32(b, v)
		}
		return b
	}
	f.Add(rec(1, 0, 4, 100, 8))
	f.Add(append(rec(3, 16, 4, 32, 8), rec(1, 16, 4, 64, 8)...))
	f.Add(rec(5, 0xfffffff0, 32))
	f.Add(rec(8, 0, 0xffffffff, 0, 0))
	f.Add(rec(4, 1<<20, 300))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, err := h.Call(context.Background(), info.ID, &wasmhost.Request{Method: "abi", Input: in}, mapState{"k": []byte("v")})
		if err != nil && wasmhost.Reason(err) == "other" {
			t.Fatalf("unnamed error: %v", err)
		}
	})
}
