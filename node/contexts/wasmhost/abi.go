// Package wasmhost runs fleetbox applications: WASM modules built for
// wasip1 as reactors (Go: GOOS=wasip1 GOARCH=wasm go build
// -buildmode=c-shared), on wazero (pure Go, no cgo).
//
// # Host ABI, module "fleetbox", version 1
//
// This comment is the one place the ABI is specified; node/contexts/sdk is
// its Go binding. Every pointer and length is a u32 into the application's
// linear memory (WebAssembly core spec, section 2.5.7 "Memories"); a pointer
// range outside the memory ends the call with ErrBadPointer.
//
//	input_size() -> u32                    length of the call's input
//	input_read(ptr)                        copy the input to ptr
//	storage_read(kptr, klen, vptr, vcap) -> i32
//	                                       value length, or -1 if absent; the
//	                                       value is copied only if it fits vcap
//	storage_has(kptr, klen) -> u32         1 if the key exists, else 0
//	storage_write(kptr, klen, vptr, vlen)  set key to value
//	storage_remove(kptr, klen) -> u32      delete key; 1 if it existed
//	value_return(ptr, len)                 the call's return value (last wins)
//	fail(ptr, len)                         the method refuses the call with
//	                                       this message: the call ends with
//	                                       ErrRefused when the method returns,
//	                                       and its writes are dropped
//	log(ptr, len)                          a log line, returned with the result
//	emit(kptr, klen, dptr, dlen)           an event (kind, data), returned with
//	                                       the result
//	caller(ptr)                            the caller's 32-byte namespace
//	                                       identity key
//	context_id(ptr)                        the 32-byte context id
//
// A module declares the ABI version by exporting a function
// "fleetbox_abi_v1" (the SDK does). It must also export "memory" and
// "_initialize" (a reactor, not a command with "_start"). Every other
// exported function of type () -> () is a method; "init" is the method a
// context's creation runs with its init arguments.
//
// Storage is the context's key-value state. In a query (a read-only call)
// storage_write and storage_remove end the call with ErrQueryWrite.
//
// # No clock, no randomness, no I/O
//
// Modules may import wasi_snapshot_preview1 (Go's wasip1 runtime needs it),
// but it has no files, sockets, arguments or environment; stdout and stderr
// go to a small per-call buffer used only to name a failure. Its clocks and
// random source are fixed per call: the wall clock reads a constant, the
// monotonic clock starts at 0 and advances 1 ms per reading (so a sleep
// ends), and random_get returns a ChaCha8 stream keyed by SHA-256 of the
// context id, caller, method and input. A call therefore computes the same
// result on every node and at any time.
//
// # One call, one fresh module state
//
// Instantiating a Go module and running its runtime initialisation costs
// milliseconds, so instances are pooled: after "_initialize" the host copies
// the instance's linear memory, and before every call it writes that copy
// back and zeroes any memory grown since. Go's whole runtime and program
// state (heap, globals, goroutines) lives in linear memory, so every call
// starts from the state just after initialisation: a global counter reads
// the same in every call. An instance whose call failed in any way is
// closed, never reused (its WebAssembly globals, such as the stack pointer,
// may be mid-call); one whose memory grew past MaxRetainedGrowth is closed
// too.
//
// # Limits
//
// Limits bounds memory pages (wazero WithMemoryLimitPages), the time of a
// call (a context deadline with wazero's WithCloseOnContextDone: there is
// no instruction metering in wazero), and the sizes of input, output, keys,
// values, the writes of one call, logs and events. Exceeding one ends the
// call with its named error and no state change.
package wasmhost

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// ABIModule is the import module of the host ABI; ABIVersionExport is the
// export that declares version 1.
const (
	ABIModule        = "fleetbox"
	ABIVersion       = 1
	ABIVersionExport = "fleetbox_abi_v1"
	// InitMethod is run with the init arguments when a context is created.
	InitMethod = "init"
	wasiModule = "wasi_snapshot_preview1"
)

// ApplicationID is the SHA-256 of an application's WASM bytes.
type ApplicationID [32]byte

func (a ApplicationID) String() string { return hex.EncodeToString(a[:]) }

// Named errors. A failed call wraps exactly one of them.
var (
	ErrNotWasm        = errors.New("wasmhost: not a WebAssembly module")
	ErrInvalidModule  = errors.New("wasmhost: module does not compile")
	ErrBadImport      = errors.New("wasmhost: module imports a function the host does not offer")
	ErrBadExports     = errors.New("wasmhost: module lacks a required export")
	ErrAppTooLarge    = errors.New("wasmhost: module exceeds the size limit")
	ErrNoMethod       = errors.New("wasmhost: no such method")
	ErrTimeLimit      = errors.New("wasmhost: call exceeded its time limit")
	ErrMemoryLimit    = errors.New("wasmhost: call exceeded the memory limit")
	ErrTrap           = errors.New("wasmhost: call trapped")
	ErrRefused        = errors.New("wasmhost: method refused the call")
	ErrInputTooLarge  = errors.New("wasmhost: input exceeds the size limit")
	ErrOutputTooLarge = errors.New("wasmhost: return value exceeds the size limit")
	ErrKeyTooLarge    = errors.New("wasmhost: storage key empty or over the size limit")
	ErrValueTooLarge  = errors.New("wasmhost: storage value exceeds the size limit")
	ErrTooManyWrites  = errors.New("wasmhost: call writes more than the limit")
	ErrLogTooLarge    = errors.New("wasmhost: logs or events exceed the limit")
	ErrQueryWrite     = errors.New("wasmhost: a query cannot change state")
	ErrBadPointer     = errors.New("wasmhost: pointer outside the module's memory")
	ErrClosed         = errors.New("wasmhost: host closed")
)

// Reason is the metrics label of a failure.
func Reason(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{ErrNotWasm, "not_wasm"}, {ErrInvalidModule, "invalid_module"}, {ErrBadImport, "bad_import"},
		{ErrBadExports, "bad_exports"}, {ErrAppTooLarge, "app_too_large"}, {ErrNoMethod, "no_method"},
		{ErrTimeLimit, "time_limit"}, {ErrMemoryLimit, "memory_limit"}, {ErrTrap, "trap"},
		{ErrRefused, "refused"}, {ErrInputTooLarge, "input_too_large"}, {ErrOutputTooLarge, "output_too_large"},
		{ErrKeyTooLarge, "key_too_large"}, {ErrValueTooLarge, "value_too_large"}, {ErrTooManyWrites, "too_many_writes"},
		{ErrLogTooLarge, "log_too_large"}, {ErrQueryWrite, "query_write"}, {ErrBadPointer, "bad_pointer"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// limitError ends a call from inside a host function: wazero recovers the
// panic and returns it from Call.
type limitError struct{ err error }

func (e *limitError) Error() string { return e.err.Error() }
func (e *limitError) Unwrap() error { return e.err }

func abort(err error, format string, a ...any) {
	panic(&limitError{err: fmt.Errorf("%w: "+format, append([]any{err}, a...)...)})
}
