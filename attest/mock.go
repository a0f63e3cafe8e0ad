package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
)

// Mock quotes stand in for hardware quotes on machines without TDX. Their
// format is fleetbox's own and self-describing: a text magic line, then fixed
// fields. It can never parse as a real quote (real quotes begin with the
// little-endian version 4 or 5), and a verdict on one always says Mock.
//
//	"fleetbox mock tdx quote v1\n"  27 bytes
//	MRTD                             48
//	RTMR0..RTMR3                    192
//	REPORTDATA                       64
//	MRCONFIGID                       48
//	TDATTRIBUTES                      8
//	TEE_TCB_SVN                      16
const mockMagic = "fleetbox mock tdx quote v1\n"

// MockVersion is Quote.Version for mock quotes.
const MockVersion = 0

const mockQuoteSize = len(mockMagic) + 48 + 4*48 + 64 + 48 + 8 + 16

// IsMockQuote reports whether b starts with the mock-quote magic.
func IsMockQuote(b []byte) bool { return bytes.HasPrefix(b, []byte(mockMagic)) }

// MockQuote is what a MockSource puts in a mock quote besides report_data.
type MockQuote struct {
	MRTD         MRTD
	RTMR         [4]RTMR
	MRConfigID   MRConfigID
	TDAttributes TDAttributes
	TeeTcbSvn    TeeTcbSvn
}

// Encode returns the mock quote bytes for rd.
func (m MockQuote) Encode(rd ReportData) []byte {
	out := make([]byte, 0, mockQuoteSize)
	out = append(out, mockMagic...)
	out = append(out, m.MRTD[:]...)
	for i := range m.RTMR {
		out = append(out, m.RTMR[i][:]...)
	}
	out = append(out, rd[:]...)
	out = append(out, m.MRConfigID[:]...)
	out = append(out, m.TDAttributes[:]...)
	out = append(out, m.TeeTcbSvn[:]...)
	return out
}

func parseMockQuote(raw []byte) (*Quote, error) {
	if len(raw) != mockQuoteSize {
		return nil, fmt.Errorf("parsing mock quote: %d bytes, want exactly %d", len(raw), mockQuoteSize)
	}
	q := &Quote{Version: MockVersion, Mock: true}
	b := raw[len(mockMagic):]
	take := func(dst []byte) { n := copy(dst, b); b = b[n:] }
	take(q.MRTD[:])
	for i := range q.RTMR {
		take(q.RTMR[i][:])
	}
	take(q.ReportData[:])
	take(q.MRConfigID[:])
	take(q.TDAttributes[:])
	take(q.TeeTcbSvn[:])
	q.raw = bytes.Clone(raw)
	q.signed = q.raw
	q.Hash = sha256.Sum256(q.raw)
	return q, nil
}

// MockSource produces mock quotes with chosen measurements. Use it only where
// no TDX hardware exists; policies refuse its quotes unless acceptMock is set.
type MockSource struct {
	Quote MockQuote
}

// GetQuote implements Source.
func (s *MockSource) GetQuote(_ context.Context, rd ReportData) ([]byte, error) {
	return s.Quote.Encode(rd), nil
}

// Kind implements Source.
func (s *MockSource) Kind() string { return "mock" }

// MockMeasurement derives a deterministic, recognisable measurement from a
// label, for demos and tests: SHA-384 would do, but a readable prefix makes
// mock values stand out in logs.
func MockMeasurement(label string) [MeasurementSize]byte {
	var m [MeasurementSize]byte
	h := sha256.Sum256([]byte("fleetbox mock measurement: " + label))
	copy(m[:], "MOCK")
	copy(m[4:], h[:])
	copy(m[36:], h[:12])
	return m
}
