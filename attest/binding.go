package attest

import "github.com/fleetbox/fleetbox/attest/measurement"

// ErrBindingMismatch means a quote's report_data does not commit to the
// expected nonce and public key.
var ErrBindingMismatch = measurement.ErrBindingMismatch

// BindPublicKey returns nonce(32) || SHA-256(pubkey), the report_data
// fleetbox binds into a quote for a key; CheckBinding compares in constant
// time (see attest/measurement).
var (
	BindPublicKey = measurement.BindPublicKey
	CheckBinding  = measurement.CheckBinding
)
