package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"time"

	"github.com/fleetbox/fleetbox/internal/boundedio"
	"github.com/fleetbox/fleetbox/internal/strictjson"

	"github.com/google/go-tdx-guest/pcs"
)

// MaxCollateralSize bounds a collateral document. Real ones are about 30 KB;
// PCK CRLs grow with revocations.
const MaxCollateralSize = 4 << 20

// ErrCollateralExpired means a piece of collateral is past its nextUpdate (or
// its signing certificate expired) at the verification time: verification
// fails closed rather than trust stale revocation and TCB data.
var ErrCollateralExpired = errors.New("collateral expired")

// ErrCollateralNotYetValid means a piece of collateral (or its signing
// certificate) is not valid yet at the verification time: a clock behind,
// or collateral from the future.
var ErrCollateralNotYetValid = errors.New("collateral not yet valid")

// ErrCollateralPlatform means the collateral is for another platform: its
// TCB Info's FMSPC or PCE ID is not the PCK certificate's.
var ErrCollateralPlatform = errors.New("collateral is for another platform")

// CollateralReason names a collateral failure with a stable code, or says
// "" when err is not one: the collateral, not the quote, is at fault, and
// the verdict must not read like a forged quote's.
func CollateralReason(err error) string {
	switch {
	case errors.Is(err, ErrCollateralExpired):
		return "collateral_expired"
	case errors.Is(err, ErrCollateralNotYetValid):
		return "collateral_not_yet_valid"
	case errors.Is(err, ErrCollateralPlatform):
		return "collateral_fmspc_mismatch"
	case errors.Is(err, ErrRevocationRequired):
		return "collateral_no_crls"
	case errors.Is(err, ErrCollateralUnavailable):
		return "collateral_unavailable"
	}
	return ""
}

// ErrCollateralUnavailable means no collateral could be had for a platform:
// none cached and none fetched. It is the verifier's problem, not the
// quote's, so a service may answer "try again later".
var ErrCollateralUnavailable = errors.New("collateral unavailable")

// Collateral is the Intel-signed data a quote is judged against: TDX TCB Info,
// the TD quoting enclave's identity, and the PCK and root CRLs. Parsing checks
// structure only; the Verifier checks every signature before use.
type Collateral struct {
	TcbInfo          pcs.TcbInfo
	TcbInfoBody      []byte // the exact signed JSON
	TcbInfoSignature []byte // r || s
	TcbInfoIssuer    []*x509.Certificate

	QeIdentity          pcs.EnclaveIdentity
	QeIdentityBody      []byte
	QeIdentitySignature []byte
	QeIdentityIssuer    []*x509.Certificate

	// PckCrl and RootCaCrl are nil when the collateral carries no CRLs;
	// revocation then cannot be checked and a Verifier that requires it fails.
	PckCrl       *x509.RevocationList
	PckCrlIssuer []*x509.Certificate
	RootCaCrl    *x509.RevocationList

	// id identifies the content, for verification caches.
	id [32]byte
	// revoked serial numbers, for constant-time lookups per quote.
	pckRevoked  map[string]time.Time
	rootRevoked map[string]time.Time
}

// HasCRLs reports whether the collateral can answer revocation questions.
func (c *Collateral) HasCRLs() bool { return c.PckCrl != nil && c.RootCaCrl != nil }

// collateralV3JSON is the dcap-qvl QuoteCollateralV3 JSON form.
type collateralV3JSON struct {
	PckCrlIssuerChain     string `json:"pck_crl_issuer_chain"`
	RootCaCrl             string `json:"root_ca_crl"`
	PckCrl                string `json:"pck_crl"`
	TcbInfoIssuerChain    string `json:"tcb_info_issuer_chain"`
	TcbInfo               string `json:"tcb_info"`
	TcbInfoSignature      string `json:"tcb_info_signature"`
	QeIdentityIssuerChain string `json:"qe_identity_issuer_chain"`
	QeIdentity            string `json:"qe_identity"`
	QeIdentitySignature   string `json:"qe_identity_signature"`
}

// ParseCollateralJSON decodes collateral in the dcap-qvl QuoteCollateralV3
// JSON form (snake_case keys; tcb_info and qe_identity are the exact signed
// JSON strings, signatures and CRLs are hex). Unknown keys are ignored, since
// publishers add their own (pck_certificate_chain, ...); duplicate keys and
// keys not spelled exactly are refused.
func ParseCollateralJSON(data []byte) (*Collateral, error) {
	if len(data) > MaxCollateralSize {
		return nil, fmt.Errorf("collateral: %d bytes exceeds the %d-byte limit", len(data), MaxCollateralSize)
	}
	var j collateralV3JSON
	if err := strictjson.UnmarshalKnown(data, &j); err != nil {
		return nil, fmt.Errorf("collateral: %w", err)
	}
	c := &Collateral{}
	var err error
	if j.TcbInfo == "" {
		return nil, errors.New("collateral: tcb_info is missing")
	}
	if j.QeIdentity == "" {
		return nil, errors.New("collateral: qe_identity is missing")
	}
	c.TcbInfoBody = []byte(j.TcbInfo)
	if err := strictUnmarshal(c.TcbInfoBody, &c.TcbInfo); err != nil {
		return nil, fmt.Errorf("collateral: tcb_info: %w", err)
	}
	if c.TcbInfoSignature, err = hexSig(j.TcbInfoSignature); err != nil {
		return nil, fmt.Errorf("collateral: tcb_info_signature: %w", err)
	}
	if c.TcbInfoIssuer, err = parsePEMChain(j.TcbInfoIssuerChain, 2); err != nil {
		return nil, fmt.Errorf("collateral: tcb_info_issuer_chain: %w", err)
	}
	c.QeIdentityBody = []byte(j.QeIdentity)
	if err := strictUnmarshal(c.QeIdentityBody, &c.QeIdentity); err != nil {
		return nil, fmt.Errorf("collateral: qe_identity: %w", err)
	}
	if c.QeIdentitySignature, err = hexSig(j.QeIdentitySignature); err != nil {
		return nil, fmt.Errorf("collateral: qe_identity_signature: %w", err)
	}
	if c.QeIdentityIssuer, err = parsePEMChain(j.QeIdentityIssuerChain, 2); err != nil {
		return nil, fmt.Errorf("collateral: qe_identity_issuer_chain: %w", err)
	}
	// CRLs come as a set: all three fields, or none.
	switch {
	case j.PckCrl == "" && j.RootCaCrl == "" && j.PckCrlIssuerChain == "":
	case j.PckCrl == "" || j.RootCaCrl == "" || j.PckCrlIssuerChain == "":
		return nil, errors.New("collateral: pck_crl, root_ca_crl and pck_crl_issuer_chain must be given together")
	default:
		if c.PckCrl, err = parseCRLHex(j.PckCrl); err != nil {
			return nil, fmt.Errorf("collateral: pck_crl: %w", err)
		}
		if c.RootCaCrl, err = parseCRLHex(j.RootCaCrl); err != nil {
			return nil, fmt.Errorf("collateral: root_ca_crl: %w", err)
		}
		if c.PckCrlIssuer, err = parsePEMChain(j.PckCrlIssuerChain, 2); err != nil {
			return nil, fmt.Errorf("collateral: pck_crl_issuer_chain: %w", err)
		}
	}
	c.finish(data)
	return c, nil
}

// finish fills the derived fields.
func (c *Collateral) finish(content []byte) {
	c.id = sha256.Sum256(content)
	c.pckRevoked = revokedSet(c.PckCrl)
	c.rootRevoked = revokedSet(c.RootCaCrl)
}

func revokedSet(crl *x509.RevocationList) map[string]time.Time {
	if crl == nil {
		return nil
	}
	m := make(map[string]time.Time, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		m[serialKey(e.SerialNumber)] = e.RevocationTime
	}
	return m
}

func serialKey(n *big.Int) string { return string(n.Bytes()) }

// strictUnmarshal decodes JSON into v; the signed bodies are Intel's, so
// unknown fields are tolerated, but duplicate or miscased keys and trailing
// data are not.
func strictUnmarshal(b []byte, v any) error { return strictjson.UnmarshalKnown(b, v) }

func hexSig(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(b) != 64 {
		return nil, fmt.Errorf("signature is %d bytes, want 64 (r || s)", len(b))
	}
	return b, nil
}

func parseCRLHex(s string) (*x509.RevocationList, error) {
	der, err := hex.DecodeString(s)
	if err != nil {
		return nil, err
	}
	return x509.ParseRevocationList(der)
}

// parsePEMChain parses exactly n PEM certificates (signing cert, then root).
func parsePEMChain(s string, n int) ([]*x509.Certificate, error) {
	rest := []byte(s)
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block of type %q, want CERTIFICATE", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.Trim(rest, "\x00 \r\n\t")) != 0 {
		return nil, errors.New("trailing bytes after the PEM certificates")
	}
	if len(out) != n {
		return nil, fmt.Errorf("%d certificates, want %d", len(out), n)
	}
	return out, nil
}

// CollateralSource provides collateral for a platform.
type CollateralSource interface {
	// Collateral returns collateral for the platform's FMSPC and the PCK CA
	// that issued its certificate ("platform" or "processor").
	Collateral(ctx context.Context, fmspc FMSPC, ca string) (*Collateral, error)
}

// StaticCollateral serves one collateral document for every quote, as a file
// given on the command line does. A quote from another platform then fails
// verification with an FMSPC mismatch that names both.
type StaticCollateral struct{ C *Collateral }

// Collateral implements CollateralSource.
func (s StaticCollateral) Collateral(context.Context, FMSPC, string) (*Collateral, error) {
	return s.C, nil
}

// LoadCollateralFile reads a QuoteCollateralV3 JSON file.
func LoadCollateralFile(path string) (*Collateral, error) {
	data, err := boundedio.ReadFile(path, MaxCollateralSize)
	if err != nil {
		return nil, fmt.Errorf("reading collateral: %w", err)
	}
	c, err := ParseCollateralJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ReadQuoteFile reads a quote file in any published form (see
// DecodeQuoteFile) and parses it; "-" reads standard input.
func ReadQuoteFile(path string) (*Quote, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 4*MaxQuoteSize+1))
		if err == nil && len(data) > 4*MaxQuoteSize {
			err = fmt.Errorf("standard input exceeds the %d-byte limit", 4*MaxQuoteSize)
		}
	} else {
		data, err = boundedio.ReadFile(path, 4*MaxQuoteSize)
	}
	if err != nil {
		return nil, fmt.Errorf("reading quote: %w", err)
	}
	raw, err := DecodeQuoteFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	q, err := ParseQuote(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (read as %s; the forms tried: %s)", path, err, quoteFormOf(data), QuoteFileForms)
	}
	return q, nil
}

// LoadPolicyFile reads and validates a TeeAdmissionPolicy JSON file.
func LoadPolicyFile(path string) (*Policy, error) {
	data, err := boundedio.ReadFile(path, MaxPolicySize)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
