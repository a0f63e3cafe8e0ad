package measurement

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
)

// ErrBindingMismatch means a quote's report_data does not commit to the
// expected nonce and public key.
var ErrBindingMismatch = errors.New("report_data does not match nonce || SHA-256(public key)")

// BindPublicKey returns the report_data fleetbox binds into a quote for a key:
// nonce(32) || SHA-256(pubkey). The nonce gives freshness, the hash ties the
// hardware-signed quote to the key.
func BindPublicKey(nonce [NonceSize]byte, pubkey []byte) ReportData {
	var rd ReportData
	copy(rd[:NonceSize], nonce[:])
	h := sha256.Sum256(pubkey)
	copy(rd[NonceSize:], h[:])
	return rd
}

// CheckBinding reports whether rd equals BindPublicKey(nonce, pubkey), in
// constant time.
func CheckBinding(rd ReportData, nonce [NonceSize]byte, pubkey []byte) error {
	want := BindPublicKey(nonce, pubkey)
	if subtle.ConstantTimeCompare(rd[:], want[:]) != 1 {
		return ErrBindingMismatch
	}
	return nil
}
