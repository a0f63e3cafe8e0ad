// Package attest gets, verifies and judges Intel TDX quotes.
//
// The package follows the trust steps in one direction: a Source gets quote
// bytes, ParseQuote decodes them into typed values, a Verifier checks the
// signature chain and collateral and reports the TCB status as a Verdict, and
// a Policy (TeeAdmissionPolicy) judges the Verdict.
//
// The typed values themselves live in attest/measurement (standard library
// only); the names below are aliases, so either import works.
package attest

import "github.com/fleetbox/fleetbox/attest/measurement"

// Sizes of the TDX measurement values (Intel TDX DCAP Quoting Library API,
// appendix A.3.2 "TD Quote Body").
const (
	MeasurementSize = measurement.MeasurementSize
	ReportDataSize  = measurement.ReportDataSize
	NonceSize       = measurement.NonceSize
)

// The quote's typed values (see attest/measurement).
type (
	MRTD         = measurement.MRTD
	RTMR         = measurement.RTMR
	MRConfigID   = measurement.MRConfigID
	ReportData   = measurement.ReportData
	QuoteHash    = measurement.QuoteHash
	FMSPC        = measurement.FMSPC
	TeeTcbSvn    = measurement.TeeTcbSvn
	TDAttributes = measurement.TDAttributes
)

// ParseMRTD and ParseRTMR parse hex in any case, with or without 0x.
var (
	ParseMRTD = measurement.ParseMRTD
	ParseRTMR = measurement.ParseRTMR
)

func normalizeHex(s string) string { return measurement.NormalizeHex(s) }

func parseHexInto(dst []byte, s, what string) error { return measurement.ParseHex(dst, s, what) }

func short(s string) string { return measurement.Short(s) }
