// Package sdk is the Go binding of the fleetbox host ABI (module
// "fleetbox", version 1; node/contexts/wasmhost documents it) for
// applications built with the standard Go toolchain:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o app.wasm .
//
// An application is a main package (with an empty main) whose methods are
// exported functions of no arguments:
//
//	//go:wasmexport set
//	func set() { sdk.Handle(func(in []byte) ([]byte, error) { ...; return out, nil }) }
//
// Importing the package exports "fleetbox_abi_v1", which declares the ABI
// version. Every call starts from the module's state just after
// initialisation: package variables never carry over from one call to the
// next. Keep state with Set and Get.
//
// The functions are only defined for GOOS=wasip1.
package sdk
