package attest

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/google/go-tdx-guest/testing/testdata"
)

// Offsets in a V4 quote, by the DCAP Quoting Library API's arithmetic:
// header 48 + body 584 = 632 (signature data length), then signature and
// attestation key (128), then the certification data header.
const (
	offSigLen    = 632
	offCertType  = 632 + 4 + 128
	offCertSize  = offCertType + 2
	offAuthSize  = offCertSize + 4 + 384 + 64
	offAuthData  = offAuthSize + 2
	offV5BodyTyp = 48
	offV5BodySz  = 50
)

func put16(b []byte, off int, v uint16) { binary.LittleEndian.PutUint16(b[off:], v) }
func put32(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
func get16(b []byte, off int) int       { return int(binary.LittleEndian.Uint16(b[off:])) }
func get32(b []byte, off int) int       { return int(binary.LittleEndian.Uint32(b[off:])) }

// TestParseQuoteForgedLengths changes one length or type field of a real
// quote at a time: each must be refused with an error naming the field,
// never a panic (go-tdx-guest's decoder slices some of these unchecked).
func TestParseQuoteForgedLengths(t *testing.T) {
	raw := testdata.RawQuote
	authSize := get16(raw, offAuthSize)
	offPCKType := offAuthData + authSize
	offPCKSize := offPCKType + 2
	sigLen := get32(raw, offSigLen)
	certSize := get32(raw, offCertSize)
	pckSize := get32(raw, offPCKSize)

	tests := []struct {
		name   string
		mutate func(b []byte) []byte
		want   string
	}{
		{"version 3", func(b []byte) []byte { put16(b, 0, 3); return b }, "quote version 3 is not supported"},
		{"signature length past the end", func(b []byte) []byte { put32(b, offSigLen, uint32(len(b)-offSigLen-4+1)); return b }, "signature data declares"},
		{"signature length +1", func(b []byte) []byte { put32(b, offSigLen, uint32(sigLen+1)); return b }, "1 bytes after its certification data"},
		{"signature length huge", func(b []byte) []byte { put32(b, offSigLen, 0xffffffff); return b }, "signature data declares"},
		{"signature length short", func(b []byte) []byte { put32(b, offSigLen, uint32(sigLen-1)); return b }, "QE report certification data declares"},
		{"certification data type", func(b []byte) []byte { put16(b, offCertType, 7); return b }, "type 7, want 6"},
		{"certification data size +1", func(b []byte) []byte { put32(b, offCertSize, uint32(certSize+1)); return b }, "QE report certification data declares"},
		{"certification data size -1", func(b []byte) []byte { put32(b, offCertSize, uint32(certSize-1)); return b }, "bytes after its certification data"},
		{"auth data size huge", func(b []byte) []byte { put16(b, offAuthSize, 0xffff); return b }, "QE authentication data needs 65535 bytes at offset 1220,"},
		{"auth data size +1", func(b []byte) []byte { put16(b, offAuthSize, uint16(authSize+1)); return b }, "PCK certificate chain"},
		{"PCK chain type", func(b []byte) []byte { put16(b, offPCKType, 1); return b }, "type 1, want 5"},
		{"PCK chain size huge", func(b []byte) []byte { put32(b, offPCKSize, 0x7fffffff); return b }, "PCK certificate chain declares"},
		{"PCK chain size -1", func(b []byte) []byte { put32(b, offPCKSize, uint32(pckSize-1)); return b }, "after the PCK certificate chain"},
		{"header only", func(b []byte) []byte { return b[:48] }, "TD quote body needs"},
		{"cut in the signature length", func(b []byte) []byte { return b[:offSigLen+2] }, "signature data length needs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.mutate(bytes.Clone(raw))
			_, err := ParseQuote(b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseQuote error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseQuoteV5ForgedBody(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(b []byte)
		want   string
	}{
		{"body type 4", func(b []byte) { put16(b, offV5BodyTyp, 4) }, "V5 body type 4 is not a TD report"},
		{"body size disagrees with type", func(b []byte) { put32(b, offV5BodySz, 0x248) }, "V5 body size 584 does not match body type 3"},
		{"body size huge", func(b []byte) { put32(b, offV5BodySz, 0xffffffff) }, "does not match body type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Clone(testdata.RawQuoteV5)
			tt.mutate(b)
			_, err := ParseQuote(b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseQuote error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// Every proper prefix of a real quote is refused; none panics.
func TestParseQuoteEveryTruncation(t *testing.T) {
	for _, raw := range [][]byte{testdata.RawQuote, testdata.RawQuoteV5} {
		full, err := ParseQuote(raw)
		if err != nil {
			t.Fatalf("full quote: %v", err)
		}
		end := len(full.Raw())
		for n := 1; n < end; n++ {
			if _, err := ParseQuote(raw[:n]); err == nil {
				t.Fatalf("a %d-byte prefix of a %d-byte V%d quote parsed", n, end, full.Version)
			}
		}
	}
}

// Padding after the signature data is ignored: same quote, same hash.
func TestParseQuotePaddingKeepsHash(t *testing.T) {
	q, err := ParseQuote(testdata.RawQuote)
	if err != nil {
		t.Fatal(err)
	}
	padded := append(q.Raw(), make([]byte, 3000)...)
	p, err := ParseQuote(padded)
	if err != nil {
		t.Fatalf("padded quote: %v", err)
	}
	if p.Hash != q.Hash || !bytes.Equal(p.Raw(), q.Raw()) {
		t.Fatal("padding changed the quote's hash or bytes")
	}
}
