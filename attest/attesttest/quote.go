package attesttest

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
)

// Values of the test quoting enclave, matched by the QE identity this CA
// signs (Intel's TD_QE has ISVPRODID 2).
var (
	QEMrSigner   = [32]byte{0xdc, 0x9e, 0x2a, 0x7c, 0x6f, 0x94, 0x8f, 0x17, 0x47, 0x4e, 0x34, 0xa7, 0xfc, 0x43, 0xed, 0x03}
	QEAttributes = [16]byte{0x11}
	// MRSignerSeam is the test TDX module's signer (Intel's is all zeros).
	MRSignerSeam [48]byte
)

const qeISVProdID = 2

// Layout sizes (Intel TDX DCAP Quoting Library API, A.3).
const (
	headerSize      = 48
	bodySize        = 584
	qeReportSize    = 384
	certTypeQE      = 6 // QE report certification data
	certTypePCK     = 5 // concatenated PCK cert chain, PEM
	attKeyTypeP256  = 2
	teeTypeTDX      = 0x81
	reportDataOff   = 520
	qeReportDataOff = 320
)

// intelQEVendorID is Intel's QE vendor ID (A.3.1).
var intelQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// signQEReport makes the QE report that certifies the attestation key:
// REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zero bytes,
// signed by the PCK key.
func (p *Platform) signQEReport(t testing.TB) {
	t.Helper()
	rep := make([]byte, qeReportSize)
	copy(rep[0:16], p.TCB.CPUSVN[:])
	// MISCSELECT at 16 (0), ATTRIBUTES at 48, MRENCLAVE at 64, MRSIGNER at 128.
	copy(rep[48:64], QEAttributes[:])
	copy(rep[128:160], QEMrSigner[:])
	binary.LittleEndian.PutUint16(rep[256:258], qeISVProdID)
	binary.LittleEndian.PutUint16(rep[258:260], p.QESVN)
	p.qeAuth = make([]byte, 32)
	for i := range p.qeAuth {
		p.qeAuth[i] = byte(i)
	}
	ak := attKeyBytes(&p.attKey.PublicKey)
	h := sha256.Sum256(append(ak, p.qeAuth...))
	copy(rep[qeReportDataOff:], h[:])
	p.qeRep = rep
	d := sha256.Sum256(rep)
	p.qeSig = signRS(t, p.pckKey, d[:])
}

func attKeyBytes(pub *ecdsa.PublicKey) []byte {
	b, _ := pub.Bytes() // 0x04 || X || Y
	return b[1:]
}

func signRS(t testing.TB, k *ecdsa.PrivateKey, digest []byte) []byte {
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// QuoteOptions are the TD's values in a test quote.
type QuoteOptions struct {
	MRTD         attest.MRTD
	RTMR         [4]attest.RTMR
	ReportData   attest.ReportData
	MRConfigID   attest.MRConfigID
	TDAttributes attest.TDAttributes
	// TeeTcbSvn defaults to {3} (TDX 1.0 module, TEE_TCB_SVN[1] == 0).
	TeeTcbSvn *attest.TeeTcbSvn
	// SeamAttributes are the TDX module's attributes (zero on Intel's).
	SeamAttributes [8]byte
	// TeeTcbSvn2, if set, makes a V5 quote with a TDX 1.5 TD report (body
	// type 3) whose TEE_TCB_SVN_2 it is; nil makes a V4 quote.
	TeeTcbSvn2 *attest.TeeTcbSvn
}

// Quote returns a V4 quote from this platform, signed by its attestation key.
func (p *Platform) Quote(t testing.TB, o QuoteOptions) []byte {
	t.Helper()
	q, err := p.quote(o)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (p *Platform) quote(o QuoteOptions) ([]byte, error) {
	svn := attest.TeeTcbSvn{3}
	if o.TeeTcbSvn != nil {
		svn = *o.TeeTcbSvn
	}
	hdr := make([]byte, headerSize)
	version := uint16(4)
	if o.TeeTcbSvn2 != nil {
		version = 5
	}
	binary.LittleEndian.PutUint16(hdr[0:], version)
	binary.LittleEndian.PutUint16(hdr[2:], attKeyTypeP256)
	binary.LittleEndian.PutUint32(hdr[4:], teeTypeTDX)
	copy(hdr[12:28], intelQEVendorID[:])

	body := make([]byte, 0, bodySize)
	body = append(body, svn[:]...)
	body = append(body, make([]byte, 48)...)          // MRSEAM
	body = append(body, MRSignerSeam[:]...)           // MRSIGNERSEAM
	body = append(body, o.SeamAttributes[:]...)       // SEAMATTRIBUTES
	body = append(body, o.TDAttributes[:]...)         // TDATTRIBUTES
	body = append(body, 0xe7, 0x18, 6, 0, 0, 0, 0, 0) // XFAM
	body = append(body, o.MRTD[:]...)
	body = append(body, o.MRConfigID[:]...)
	body = append(body, make([]byte, 96)...) // MROWNER, MROWNERCONFIG
	for i := range o.RTMR {
		body = append(body, o.RTMR[i][:]...)
	}
	body = append(body, o.ReportData[:]...)
	if o.TeeTcbSvn2 != nil {
		// TDX 1.5 TD report (Intel TDX DCAP Quoting Library API, A.4):
		// TEE_TCB_SVN_2 and MRSERVICETD follow the 1.0 fields, and the
		// body comes with its type (3) and size.
		body = append(body, o.TeeTcbSvn2[:]...)
		body = append(body, make([]byte, 48)...) // MRSERVICETD
		desc := binary.LittleEndian.AppendUint16(nil, 3)
		desc = binary.LittleEndian.AppendUint32(desc, uint32(len(body)))
		body = append(desc, body...)
	}

	signed := append(hdr, body...)
	d := sha256.Sum256(signed)
	r, s, err := ecdsa.Sign(rand.Reader, p.attKey, d[:])
	if err != nil {
		return nil, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])

	// QE report certification data: report, signature, auth data, and the
	// nested PCK chain certification data.
	var qecd []byte
	qecd = append(qecd, p.qeRep...)
	qecd = append(qecd, p.qeSig...)
	qecd = binary.LittleEndian.AppendUint16(qecd, uint16(len(p.qeAuth)))
	qecd = append(qecd, p.qeAuth...)
	qecd = binary.LittleEndian.AppendUint16(qecd, certTypePCK)
	qecd = binary.LittleEndian.AppendUint32(qecd, uint32(len(p.chain)))
	qecd = append(qecd, p.chain...)

	var sd []byte
	sd = append(sd, sig...)
	sd = append(sd, attKeyBytes(&p.attKey.PublicKey)...)
	sd = binary.LittleEndian.AppendUint16(sd, certTypeQE)
	sd = binary.LittleEndian.AppendUint32(sd, uint32(len(qecd)))
	sd = append(sd, qecd...)

	out := append(signed, binary.LittleEndian.AppendUint32(nil, uint32(len(sd)))...)
	return append(out, sd...), nil
}

// Source is an attest.Source whose quotes come from a test platform with
// fixed measurements; report_data is the caller's.
type Source struct {
	Platform *Platform
	Options  QuoteOptions
}

// GetQuote implements attest.Source.
func (s *Source) GetQuote(_ context.Context, rd attest.ReportData) ([]byte, error) {
	o := s.Options
	o.ReportData = rd
	return s.Platform.quote(o)
}

// Kind implements attest.Source. Test-CA quotes are real-format quotes.
func (s *Source) Kind() string { return "tdx-test-ca" }

// serialOf returns a platform's PCK serial, for CRLs.
func (p *Platform) serialOf() *big.Int { return p.PCK.SerialNumber }

// Resign re-signs the QE report after QESVN (or TCB) changed.
func (p *Platform) Resign(t testing.TB) { p.signQEReport(t) }
