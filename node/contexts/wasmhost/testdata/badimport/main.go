//go:build wasip1

// Command badimport imports a host function that does not exist.
package main

import _ "github.com/fleetbox/fleetbox/node/contexts/sdk"

//go:wasmimport fleetbox open_socket
func openSocket() uint32

//go:wasmexport dial
func dial() { openSocket() }

func main() {}
