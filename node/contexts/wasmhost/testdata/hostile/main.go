//go:build wasip1

// Command hostile is a test application: each method misbehaves in one way
// (or shows what must hold between calls).
package main

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"time"

	"github.com/fleetbox/fleetbox/node/contexts/sdk"
)

var counter uint64
var sink [][]byte

//go:wasmexport loop
func loop() {
	for {
		counter++
	}
}

//go:wasmexport bomb
func bomb() {
	for {
		sink = append(sink, make([]byte, 1<<20))
	}
}

//go:wasmexport huge
func huge() { sdk.Return(make([]byte, 1<<20)) }

//go:wasmexport trap
func trap() {
	var m map[string]int
	m["x"]++ // nil map write: a Go panic, so a trap
}

//go:wasmexport counter
func count() {
	counter++
	sdk.Return(binary.BigEndian.AppendUint64(nil, counter))
}

// env returns what a call can observe of time and randomness.
//
//go:wasmexport env
func env() {
	var r [16]byte
	rand.Read(r[:])
	t := time.Now()
	time.Sleep(time.Millisecond)
	sdk.Return([]byte(t.UTC().Format(time.RFC3339Nano) + " " + strings.Repeat("", 0) + string(r[:])))
}

//go:wasmexport write
func write() {
	in := sdk.Input()
	sdk.Set(in, in)
	sdk.Return([]byte("ok"))
}

//go:wasmexport bigwrite
func bigwrite() { sdk.Set([]byte("k"), make([]byte, 1<<20)) }

//go:wasmexport manywrites
func manywrites() {
	for i := 0; ; i++ {
		sdk.Set(binary.BigEndian.AppendUint32(nil, uint32(i)), nil)
	}
}

//go:wasmexport refuse
func refuse() { sdk.Fail("no, thank you") }

func main() {}

//go:wasmimport fleetbox input_read
func rawInputRead(ptr uint32)

//go:wasmimport fleetbox storage_read
func rawStorageRead(kptr, klen, vptr, vcap uint32) int32

//go:wasmimport fleetbox storage_has
func rawStorageHas(kptr, klen uint32) uint32

//go:wasmimport fleetbox storage_write
func rawStorageWrite(kptr, klen, vptr, vlen uint32)

//go:wasmimport fleetbox storage_remove
func rawStorageRemove(kptr, klen uint32) uint32

//go:wasmimport fleetbox value_return
func rawValueReturn(ptr, n uint32)

//go:wasmimport fleetbox fail
func rawFail(ptr, n uint32)

//go:wasmimport fleetbox log
func rawLog(ptr, n uint32)

//go:wasmimport fleetbox emit
func rawEmit(kptr, klen, dptr, dlen uint32)

//go:wasmimport fleetbox caller
func rawCaller(ptr uint32)

//go:wasmimport fleetbox context_id
func rawContextID(ptr uint32)

// abi replays its input as raw host calls with arbitrary pointers and
// lengths: records of one op byte and four big-endian u32 arguments. The
// fuzz target of the host functions drives it.
//
//go:wasmexport abi
func abi() {
	in := sdk.Input()
	for len(in) >= 17 {
		op := in[0]
		a := func(i int) uint32 { return binary.BigEndian.Uint32(in[1+4*i:]) }
		switch op % 11 {
		case 0:
			rawInputRead(a(0))
		case 1:
			rawStorageRead(a(0), a(1), a(2), a(3))
		case 2:
			rawStorageHas(a(0), a(1))
		case 3:
			rawStorageWrite(a(0), a(1), a(2), a(3))
		case 4:
			rawStorageRemove(a(0), a(1))
		case 5:
			rawValueReturn(a(0), a(1))
		case 6:
			rawFail(a(0), a(1))
		case 7:
			rawLog(a(0), a(1))
		case 8:
			rawEmit(a(0), a(1), a(2), a(3))
		case 9:
			rawCaller(a(0))
		case 10:
			rawContextID(a(0))
		}
		in = in[17:]
	}
}
