// Package measurement holds the TDX quote's typed values (MRTD, RTMR,
// report_data, ...) and the report_data binding, with the standard library
// only: code that names measurements (measure/tdvf, kms/api) links this and
// not the verifier. Package attest re-exports every name as an alias.
package measurement

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// Sizes of the TDX measurement values (Intel TDX DCAP Quoting Library API,
// appendix A.3.2 "TD Quote Body").
const (
	MeasurementSize = 48
	ReportDataSize  = 64
	NonceSize       = 32
)

// MaxQuoteSize bounds a raw quote (a real one is about 5 KB, 8 KB padded).
const MaxQuoteSize = 64 << 10

// MRTD is the build-time measurement of the TD (initial memory and firmware).
type MRTD [MeasurementSize]byte

// RTMR is a run-time measurement register value.
type RTMR [MeasurementSize]byte

// MRConfigID is the TD's software-defined configuration ID.
type MRConfigID [MeasurementSize]byte

// ReportData is the 64 bytes of caller data bound into a quote.
type ReportData [ReportDataSize]byte

// QuoteHash identifies a quote for replay protection: SHA-256 over the signed
// header and TD report body (see Quote.Hash).
type QuoteHash [32]byte

// FMSPC identifies the platform type (family, model, stepping, platform
// configuration) from the PCK certificate's SGX extension.
type FMSPC [6]byte

// TeeTcbSvn is the TDX module's TCB security version array.
type TeeTcbSvn [16]byte

// TDAttributes are the TD's attributes (TDX Module spec, TDINFO_STRUCT).
type TDAttributes [8]byte

// Debug reports whether the TD runs with the DEBUG attribute (bit 0), which
// lets the host read and change its memory.
func (a TDAttributes) Debug() bool { return a[0]&0x01 != 0 }

func (m MRTD) String() string         { return hex.EncodeToString(m[:]) }
func (r RTMR) String() string         { return hex.EncodeToString(r[:]) }
func (m MRConfigID) String() string   { return hex.EncodeToString(m[:]) }
func (r ReportData) String() string   { return hex.EncodeToString(r[:]) }
func (h QuoteHash) String() string    { return hex.EncodeToString(h[:]) }
func (f FMSPC) String() string        { return hex.EncodeToString(f[:]) }
func (s TeeTcbSvn) String() string    { return hex.EncodeToString(s[:]) }
func (a TDAttributes) String() string { return hex.EncodeToString(a[:]) }

func (m MRTD) MarshalText() ([]byte, error)         { return hexText(m[:]), nil }
func (r RTMR) MarshalText() ([]byte, error)         { return hexText(r[:]), nil }
func (m MRConfigID) MarshalText() ([]byte, error)   { return hexText(m[:]), nil }
func (r ReportData) MarshalText() ([]byte, error)   { return hexText(r[:]), nil }
func (h QuoteHash) MarshalText() ([]byte, error)    { return hexText(h[:]), nil }
func (f FMSPC) MarshalText() ([]byte, error)        { return hexText(f[:]), nil }
func (s TeeTcbSvn) MarshalText() ([]byte, error)    { return hexText(s[:]), nil }
func (a TDAttributes) MarshalText() ([]byte, error) { return hexText(a[:]), nil }

func (m *MRTD) UnmarshalText(b []byte) error { return ParseHex(m[:], string(b), "mrtd") }
func (r *RTMR) UnmarshalText(b []byte) error { return ParseHex(r[:], string(b), "rtmr") }
func (m *MRConfigID) UnmarshalText(b []byte) error {
	return ParseHex(m[:], string(b), "mrConfigId")
}
func (r *ReportData) UnmarshalText(b []byte) error {
	return ParseHex(r[:], string(b), "reportData")
}
func (h *QuoteHash) UnmarshalText(b []byte) error { return ParseHex(h[:], string(b), "quoteHash") }
func (f *FMSPC) UnmarshalText(b []byte) error     { return ParseHex(f[:], string(b), "fmspc") }
func (s *TeeTcbSvn) UnmarshalText(b []byte) error { return ParseHex(s[:], string(b), "teeTcbSvn") }
func (a *TDAttributes) UnmarshalText(b []byte) error {
	return ParseHex(a[:], string(b), "tdAttributes")
}

// ParseMRTD parses lowercase or uppercase hex, with or without 0x.
func ParseMRTD(s string) (MRTD, error) {
	var m MRTD
	return m, ParseHex(m[:], s, "mrtd")
}

// ParseRTMR parses lowercase or uppercase hex, with or without 0x.
func ParseRTMR(s string) (RTMR, error) {
	var r RTMR
	return r, ParseHex(r[:], s, "rtmr")
}

func hexText(b []byte) []byte {
	out := make([]byte, hex.EncodedLen(len(b)))
	hex.Encode(out, b)
	return out
}

// NormalizeHex lowercases s and strips an optional 0x prefix, the form policy
// lists are compared in.
func NormalizeHex(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	return strings.TrimPrefix(s, "0x")
}

// ParseHex decodes s (hex, any case, optional 0x) into exactly len(dst)
// bytes; errors name what and an abbreviation of s.
func ParseHex(dst []byte, s, what string) error {
	n := NormalizeHex(s)
	if len(n) != 2*len(dst) {
		return fmt.Errorf("%s %q: want %d hex characters, got %d", what, Short(s), 2*len(dst), len(n))
	}
	if _, err := hex.Decode(dst, []byte(n)); err != nil {
		return fmt.Errorf("%s %q: %w", what, Short(s), err)
	}
	return nil
}

// Short abbreviates long hex in messages: "5e1f…a0b2".
func Short(s string) string {
	if len(s) <= 16 {
		return s
	}
	return s[:8] + "…" + s[len(s)-4:]
}
