//go:build wasip1

package sdk

import "unsafe"

//go:wasmimport fleetbox input_size
func inputSize() uint32

//go:wasmimport fleetbox input_read
func inputRead(ptr unsafe.Pointer)

//go:wasmimport fleetbox storage_read
func storageRead(kptr unsafe.Pointer, klen uint32, vptr unsafe.Pointer, vcap uint32) int32

//go:wasmimport fleetbox storage_has
func storageHas(kptr unsafe.Pointer, klen uint32) uint32

//go:wasmimport fleetbox storage_write
func storageWrite(kptr unsafe.Pointer, klen uint32, vptr unsafe.Pointer, vlen uint32)

//go:wasmimport fleetbox storage_remove
func storageRemove(kptr unsafe.Pointer, klen uint32) uint32

//go:wasmimport fleetbox value_return
func valueReturn(ptr unsafe.Pointer, n uint32)

//go:wasmimport fleetbox fail
func fail(ptr unsafe.Pointer, n uint32)

//go:wasmimport fleetbox log
func logLine(ptr unsafe.Pointer, n uint32)

//go:wasmimport fleetbox emit
func emit(kptr unsafe.Pointer, klen uint32, dptr unsafe.Pointer, dlen uint32)

//go:wasmimport fleetbox caller
func caller(ptr unsafe.Pointer)

//go:wasmimport fleetbox context_id
func contextID(ptr unsafe.Pointer)

//go:wasmexport fleetbox_abi_v1
func abiV1() {}

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// Input returns the call's input.
func Input() []byte {
	b := make([]byte, inputSize())
	inputRead(ptr(b))
	return b
}

// Return sets the call's return value.
func Return(b []byte) { valueReturn(ptr(b), uint32(len(b))) }

// Fail refuses the call: it ends with the host's ErrRefused and msg, and
// none of its writes apply. The method should return after calling it.
func Fail(msg string) {
	b := []byte(msg)
	fail(ptr(b), uint32(len(b)))
}

// Get reads a key of the context's state.
func Get(key []byte) ([]byte, bool) {
	buf := make([]byte, 256)
	n := storageRead(ptr(key), uint32(len(key)), ptr(buf), uint32(len(buf)))
	if n < 0 {
		return nil, false
	}
	if int(n) > len(buf) {
		buf = make([]byte, n)
		n = storageRead(ptr(key), uint32(len(key)), ptr(buf), uint32(len(buf)))
	}
	return buf[:n], true
}

// Has reports whether key exists.
func Has(key []byte) bool { return storageHas(ptr(key), uint32(len(key))) == 1 }

// Set writes key. In a query it ends the call (queries cannot write).
func Set(key, value []byte) { storageWrite(ptr(key), uint32(len(key)), ptr(value), uint32(len(value))) }

// Remove deletes key and reports whether it existed.
func Remove(key []byte) bool { return storageRemove(ptr(key), uint32(len(key))) == 1 }

// Log records a line returned with the call's result.
func Log(msg string) {
	b := []byte(msg)
	logLine(ptr(b), uint32(len(b)))
}

// Emit records an event returned with the call's result.
func Emit(kind string, data []byte) {
	k := []byte(kind)
	emit(ptr(k), uint32(len(k)), ptr(data), uint32(len(data)))
}

// Caller is the calling member's 32-byte namespace identity key.
func Caller() (id [32]byte) {
	caller(unsafe.Pointer(&id[0]))
	return id
}

// ContextID is the 32-byte id of the context being called.
func ContextID() (id [32]byte) {
	contextID(unsafe.Pointer(&id[0]))
	return id
}

// Handle runs a method body on the call's input: a nil error returns out,
// an error refuses the call with its message.
func Handle(fn func(in []byte) ([]byte, error)) {
	out, err := fn(Input())
	if err != nil {
		Fail(err.Error())
		return
	}
	Return(out)
}
