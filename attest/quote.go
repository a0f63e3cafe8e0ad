package attest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/fleetbox/fleetbox/attest/measurement"
	"github.com/fleetbox/fleetbox/internal/strictjson"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

// MaxQuoteSize bounds every quote fleetbox decodes. Real quotes are about
// 5 KB (8 KB with padding); the PCK chain dominates.
const MaxQuoteSize = measurement.MaxQuoteSize

// Quote is a decoded TDX quote (real V4/V5, or a mock quote).
type Quote struct {
	// Version is the quote format version: 4 or 5 for real quotes,
	// MockVersion for mock quotes.
	Version int
	// Mock is true for fleetbox mock quotes, which no hardware signed.
	Mock bool

	MRTD         MRTD
	RTMR         [4]RTMR
	ReportData   ReportData
	MRConfigID   MRConfigID
	TDAttributes TDAttributes
	TeeTcbSvn    TeeTcbSvn
	// TeeTcbSvn2 is the TDX 1.5 TD report's TEE_TCB_SVN_2 (V5 quotes with
	// body type 3): the TCB the TD runs on now, after a TD-preserving TDX
	// module update. Nil otherwise.
	TeeTcbSvn2 *TeeTcbSvn
	// Hash is SHA-256 over the signed header and TD report body (for mock
	// quotes: over the whole mock quote). Trailing padding and the signature
	// encoding do not change it, so one quote cannot pose as two.
	Hash QuoteHash

	// raw holds the bytes the quote was parsed from, without trailing padding.
	raw []byte
	// proto is go-tdx-guest's *pb.QuoteV4 or *pb.QuoteV5 (nil for mock).
	proto any
	// signed is header || body, the message the attestation key signs.
	signed []byte
}

// Debug reports whether the TD is a debug TD.
func (q *Quote) Debug() bool { return q.TDAttributes.Debug() }

// Raw returns the quote bytes (a copy).
func (q *Quote) Raw() []byte { return bytes.Clone(q.raw) }

// ParseQuote decodes a raw quote: a fleetbox mock quote, or a V4 or V5 TDX
// quote. It checks structure only; Verifier.Verify checks signatures.
func ParseQuote(raw []byte) (*Quote, error) {
	if len(raw) == 0 {
		return nil, errors.New("parsing quote: empty input")
	}
	if len(raw) > MaxQuoteSize {
		return nil, fmt.Errorf("parsing quote: %d bytes exceeds the %d-byte limit", len(raw), MaxQuoteSize)
	}
	if IsMockQuote(raw) {
		return parseMockQuote(raw)
	}
	layout, err := checkLayout(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing quote: %w", err)
	}
	p, err := quoteToProto(raw[:layout.end])
	if err != nil {
		return nil, fmt.Errorf("parsing quote: %w", err)
	}
	if err := abi.CheckQuote(p); err != nil {
		return nil, fmt.Errorf("parsing quote: %w", err)
	}
	q := &Quote{proto: p}
	var body interface {
		GetMrTd() []byte
		GetRtmrs() [][]byte
		GetReportData() []byte
		GetMrConfigId() []byte
		GetTdAttributes() []byte
		GetTeeTcbSvn() []byte
	}
	switch v := p.(type) {
	case *pb.QuoteV4:
		q.Version = 4
		if v.GetHeader().GetTeeType() != abi.TeeTDX {
			return nil, fmt.Errorf("parsing quote: TEE type %#x is not TDX", v.GetHeader().GetTeeType())
		}
		body = v.GetTdQuoteBody()
	case *pb.QuoteV5:
		q.Version = 5
		if v.GetHeader().GetTeeType() != abi.TeeTDX {
			return nil, fmt.Errorf("parsing quote: TEE type %#x is not TDX", v.GetHeader().GetTeeType())
		}
		d := v.GetTdQuoteBodyDescriptor()
		switch d.GetTdQuoteBodyType() {
		case v5BodyTypeTDX10:
			body = d.GetTdQuoteBodyV5() // TDX 1.0 body carried in a V5 quote
		case v5BodyTypeTDX15:
			body = d.GetTdQuoteBodyV5()
			var svn2 TeeTcbSvn
			if err := copyExact(svn2[:], d.GetTdQuoteBodyV5().GetTeeTcbSvn2(), "TEE_TCB_SVN_2"); err != nil {
				return nil, err
			}
			q.TeeTcbSvn2 = &svn2
		default:
			return nil, fmt.Errorf("parsing quote: V5 body type %d is not a TD report", d.GetTdQuoteBodyType())
		}
	default:
		return nil, fmt.Errorf("parsing quote: unsupported quote type %T", p)
	}
	if body == nil {
		return nil, errors.New("parsing quote: missing TD quote body")
	}
	if err := copyExact(q.MRTD[:], body.GetMrTd(), "MRTD"); err != nil {
		return nil, err
	}
	rtmrs := body.GetRtmrs()
	if len(rtmrs) != 4 {
		return nil, fmt.Errorf("parsing quote: %d RTMRs, want 4", len(rtmrs))
	}
	for i := range rtmrs {
		if err := copyExact(q.RTMR[i][:], rtmrs[i], fmt.Sprintf("RTMR%d", i)); err != nil {
			return nil, err
		}
	}
	if err := copyExact(q.ReportData[:], body.GetReportData(), "REPORTDATA"); err != nil {
		return nil, err
	}
	if err := copyExact(q.MRConfigID[:], body.GetMrConfigId(), "MRCONFIGID"); err != nil {
		return nil, err
	}
	if err := copyExact(q.TDAttributes[:], body.GetTdAttributes(), "TDATTRIBUTES"); err != nil {
		return nil, err
	}
	if err := copyExact(q.TeeTcbSvn[:], body.GetTeeTcbSvn(), "TEE_TCB_SVN"); err != nil {
		return nil, err
	}
	// The signature data ends where its declared length says; anything after
	// is padding that fleetbox ignores.
	q.raw = bytes.Clone(raw[:layout.end])
	q.signed = q.raw[:layout.signedLen]
	q.Hash = sha256.Sum256(q.signed)
	return q, nil
}

// Layout constants (Intel TDX DCAP Quoting Library API, A.3).
const (
	headerSize        = 0x30
	tdQuoteBodySizeV4 = 0x248
)

// quoteToProto runs go-tdx-guest's decoder. checkLayout has bounded every
// length it reads; the recover turns any slicing it still does wrong into a
// refusal instead of a crash of the node or KMS that received the quote.
func quoteToProto(raw []byte) (p any, err error) {
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("malformed quote (decoder fault: %v)", r)
		}
	}()
	return abi.QuoteToProto(raw)
}

func copyExact(dst, src []byte, what string) error {
	if len(src) != len(dst) {
		return fmt.Errorf("parsing quote: %s is %d bytes, want %d", what, len(src), len(dst))
	}
	copy(dst, src)
	return nil
}

// DecodeQuoteFile turns the forms quotes are published in into raw bytes:
// raw binary, hex text, a JSON array of byte values, or a JSON object whose
// "quote" field is hex.
func DecodeQuoteFile(data []byte) ([]byte, error) {
	if len(data) > 4*MaxQuoteSize {
		return nil, fmt.Errorf("quote file is %d bytes, over the %d-byte limit", len(data), 4*MaxQuoteSize)
	}
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) == 0:
		return nil, errors.New("quote file is empty")
	case IsMockQuote(data):
		return data, nil
	case trimmed[0] == '[':
		var vals []int
		if err := strictjson.Unmarshal(trimmed, &vals); err != nil {
			return nil, fmt.Errorf("quote file: JSON byte array: %w", err)
		}
		out := make([]byte, len(vals))
		for i, v := range vals {
			if v < 0 || v > 255 {
				return nil, fmt.Errorf("quote file: JSON byte array: element %d is %d, not a byte", i, v)
			}
			out[i] = byte(v)
		}
		return out, nil
	case trimmed[0] == '{':
		var obj struct {
			Quote *string `json:"quote"`
		}
		if err := strictjson.UnmarshalKnown(trimmed, &obj); err != nil {
			return nil, fmt.Errorf("quote file: JSON object: %w", err)
		}
		if obj.Quote == nil {
			return nil, errors.New(`quote file: JSON object has no "quote" field`)
		}
		out, err := hex.DecodeString(normalizeHex(*obj.Quote))
		if err != nil {
			return nil, fmt.Errorf(`quote file: "quote" field: %w`, err)
		}
		return out, nil
	case isHexText(trimmed):
		out, err := hex.DecodeString(normalizeHex(string(stripSpace(trimmed))))
		if err != nil {
			return nil, fmt.Errorf("quote file: hex text: %w", err)
		}
		return out, nil
	default:
		return data, nil
	}
}

// quoteFormOf says which form DecodeQuoteFile read data as.
func quoteFormOf(data []byte) string {
	t := bytes.TrimSpace(data)
	switch {
	case len(t) == 0:
		return "nothing"
	case IsMockQuote(data):
		return "a mock quote"
	case t[0] == '[':
		return "a JSON byte array"
	case t[0] == '{':
		return "a JSON object"
	case isHexText(t):
		return "hex text"
	}
	return "raw bytes"
}

// QuoteFileForms names the forms DecodeQuoteFile reads, for errors.
const QuoteFileForms = "raw bytes, hex text (whitespace and line breaks allowed, as xxd -p prints), a JSON array of byte values, a JSON object with a hex \"quote\" field"

// stripSpace removes ASCII whitespace: hex that xxd -p or a mail client
// wrapped into lines, or spaced into groups.
func stripSpace(b []byte) []byte {
	return bytes.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			return -1
		}
		return r
	}, b)
}

func isHexText(b []byte) bool {
	b = stripSpace(b)
	b = bytes.TrimPrefix(bytes.TrimPrefix(b, []byte("0x")), []byte("0X"))
	if len(b) < 2*headerSize {
		return false
	}
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// UnverifiedFMSPC reads the FMSPC from the quote's PCK certificate without
// verifying anything, for display (fleetbox quote inspect). Verification
// reads it from the checked chain instead.
func (q *Quote) UnverifiedFMSPC() (FMSPC, error) {
	var f FMSPC
	if q.Mock {
		return f, errors.New("mock quotes have no PCK certificate")
	}
	p, ok := q.proto.(signedDataProvider)
	if !ok {
		return f, errors.New("quote has no signed data")
	}
	chain := p.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain()
	blk, _ := pem.Decode(chain)
	if blk == nil {
		return f, errors.New("quote has no PEM PCK certificate")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return f, fmt.Errorf("PCK certificate: %w", err)
	}
	ext, err := pcs.PckCertificateExtensions(cert)
	if err != nil {
		return f, fmt.Errorf("PCK certificate: %w", err)
	}
	return f, parseHexInto(f[:], ext.FMSPC, "fmspc")
}
