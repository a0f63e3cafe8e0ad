package attest

import (
	"encoding/binary"
	"fmt"
)

// Quote layout, from the Intel TDX DCAP Quoting Library API (appendix A.3,
// "Version 4 Quote Format", and A.4 for version 5):
//
//	V4: header(48) | TD quote body(584) | sigLen u32 | signature data(sigLen) | padding
//	V5: header(48) | bodyType u16 | bodySize u32 | body(bodySize) | sigLen u32 | signature data | padding
//
//	signature data:  ECDSA signature(64) | attestation key(64) |
//	                 certType u16 (6) | certSize u32 | QE report certification data(certSize)
//	QE report certification data:
//	                 QE report(384) | QE report signature(64) | authSize u16 | auth data(authSize) |
//	                 certType u16 (5) | certSize u32 | PCK chain PEM(certSize)
const (
	v5BodyTypeTDX10        = 2
	v5BodyTypeTDX15        = 3
	tdQuoteBodySizeV5TDX15 = 0x288

	sigDataFixedSize = 64 + 64 // ECDSA signature, attestation key
	certHeaderSize   = 2 + 4   // certification data type, size
	qeReportSize     = 384
	qeReportSigSize  = 64
	certTypeQEReport = 6 // certification data: QE report certification data
	certTypePCKChain = 5 // certification data: PCK certificate chain (PEM)
)

// quoteLayout is where the parts of a real quote sit in its bytes.
type quoteLayout struct {
	version   int
	signedLen int // header || body: what the attestation key signs
	end       int // end of the signature data; bytes after it are padding
}

// checkLayout walks every length field of a real (non-mock) quote and
// checks that each part lies inside the input and that nested lengths agree,
// before any decoder slices the bytes. go-tdx-guest's abi trusts some of
// these fields, so a forged length must be refused here, by name.
func checkLayout(raw []byte) (quoteLayout, error) {
	var l quoteLayout
	r := layoutReader{b: raw}
	if len(raw) < headerSize {
		return l, fmt.Errorf("quote is %d bytes, shorter than its %d-byte header", len(raw), headerSize)
	}
	l.version = int(binary.LittleEndian.Uint16(raw))
	r.off = headerSize
	switch l.version {
	case 4:
		if err := r.skip(tdQuoteBodySizeV4, "TD quote body"); err != nil {
			return l, err
		}
	case 5:
		typ, err := r.u16("V5 body type")
		if err != nil {
			return l, err
		}
		size, err := r.u32("V5 body size")
		if err != nil {
			return l, err
		}
		want := map[uint16]uint32{v5BodyTypeTDX10: tdQuoteBodySizeV4, v5BodyTypeTDX15: tdQuoteBodySizeV5TDX15}[typ]
		if want == 0 {
			return l, fmt.Errorf("V5 body type %d is not a TD report (want %d or %d)", typ, v5BodyTypeTDX10, v5BodyTypeTDX15)
		}
		if size != want {
			return l, fmt.Errorf("V5 body size %d does not match body type %d (want %d)", size, typ, want)
		}
		if err := r.skip(int(size), "TD quote body"); err != nil {
			return l, err
		}
	default:
		return l, fmt.Errorf("quote version %d is not supported (want 4 or 5)", l.version)
	}
	l.signedLen = r.off

	sigLen, err := r.u32("signature data length")
	if err != nil {
		return l, err
	}
	sig, err := r.sub(int64(sigLen), "signature data")
	if err != nil {
		return l, err
	}
	l.end = r.off
	if err := checkSignatureData(sig); err != nil {
		return l, err
	}
	return l, nil
}

// checkSignatureData checks the nested certification data: it must fill the
// signature data exactly, as the QE report certification data must fill it.
func checkSignatureData(sig layoutReader) error {
	if err := sig.skip(sigDataFixedSize, "signature and attestation key"); err != nil {
		return err
	}
	cert, err := sig.certData(certTypeQEReport, "QE report certification data")
	if err != nil {
		return err
	}
	if sig.rest() != 0 {
		return fmt.Errorf("signature data has %d bytes after its certification data", sig.rest())
	}
	if err := cert.skip(qeReportSize+qeReportSigSize, "QE report and its signature"); err != nil {
		return err
	}
	authSize, err := cert.u16("QE authentication data size")
	if err != nil {
		return err
	}
	if err := cert.skip(int(authSize), "QE authentication data"); err != nil {
		return err
	}
	if _, err := cert.certData(certTypePCKChain, "PCK certificate chain"); err != nil {
		return err
	}
	if cert.rest() != 0 {
		return fmt.Errorf("QE report certification data has %d bytes after the PCK certificate chain", cert.rest())
	}
	return nil
}

// layoutReader reads little-endian fields with bounds checks; every error
// names the field that did not fit.
type layoutReader struct {
	b    []byte
	off  int
	base int // offset of b in the whole quote, so errors give quote offsets
}

func (r *layoutReader) rest() int { return len(r.b) - r.off }

func (r *layoutReader) skip(n int, what string) error {
	if n < 0 || n > r.rest() {
		return fmt.Errorf("%s needs %d bytes at offset %d, only %d remain", what, n, r.base+r.off, r.rest())
	}
	r.off += n
	return nil
}

func (r *layoutReader) u16(what string) (uint16, error) {
	at := r.off
	if err := r.skip(2, what); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(r.b[at:]), nil
}

func (r *layoutReader) u32(what string) (uint32, error) {
	at := r.off
	if err := r.skip(4, what); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(r.b[at:]), nil
}

// sub returns a reader over the next n bytes and moves past them.
func (r *layoutReader) sub(n int64, what string) (layoutReader, error) {
	if n < 0 || n > int64(r.rest()) {
		return layoutReader{}, fmt.Errorf("%s declares %d bytes at offset %d, only %d remain", what, n, r.base+r.off, r.rest())
	}
	s := layoutReader{b: r.b[r.off : r.off+int(n)], base: r.base + r.off}
	r.off += int(n)
	return s, nil
}

// certData reads a certification data header of the wanted type and returns
// a reader over its data, which must run to the end of r.
func (r *layoutReader) certData(wantType uint16, what string) (layoutReader, error) {
	typ, err := r.u16(what + " type")
	if err != nil {
		return layoutReader{}, err
	}
	if typ != wantType {
		return layoutReader{}, fmt.Errorf("%s has certification data type %d, want %d", what, typ, wantType)
	}
	size, err := r.u32(what + " size")
	if err != nil {
		return layoutReader{}, err
	}
	return r.sub(int64(size), what)
}
