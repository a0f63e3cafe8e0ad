package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/fleetbox/fleetbox/attest/internal/roots"
)

// The Intel SGX Root CA, pinned: every quote and every piece of collateral
// must chain to it. SHA-256 fingerprint of the DER:
// 44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3, valid to
// 2049-12-31 (Intel SGX PCK Certificate and CRL Profile; the certificate is
// published at certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.pem).
//
//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

var intelRoots = sync.OnceValue(func() *roots.Set {
	blk, _ := pem.Decode(intelRootPEM)
	if blk == nil {
		panic("attest: embedded Intel SGX Root CA is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		panic("attest: embedded Intel SGX Root CA: " + err.Error())
	}
	return roots.New(c)
})

// IntelRootCA returns the pinned Intel SGX Root CA certificate.
func IntelRootCA() *x509.Certificate {
	blk, _ := pem.Decode(intelRootPEM)
	c, _ := x509.ParseCertificate(blk.Bytes)
	return c
}

// Errors a caller may branch on. Every verification error wraps one of them
// (errors.Is) and says in its text what exactly failed.
var (
	ErrQuoteSignature     = errors.New("quote signature does not verify with the attestation key")
	ErrQEReportSignature  = errors.New("QE report signature does not verify with the PCK certificate")
	ErrQEReportData       = errors.New("QE report data does not commit to the attestation key")
	ErrPCKChain           = errors.New("PCK certificate chain is not valid")
	ErrRevoked            = errors.New("certificate revoked")
	ErrCollateralInvalid  = errors.New("collateral is not valid")
	ErrPlatformMismatch   = errors.New("quote does not match its collateral")
	ErrRevocationRequired = errors.New("revocation check required but the collateral has no CRLs")
)

// Certificate subject common names Intel uses (Intel SGX PCK Certificate and
// CRL Profile, sections 1.3-1.4; TCB signing: PCS API "TCB Info").
const (
	cnRoot         = "Intel SGX Root CA"
	cnPCKPlatform  = "Intel SGX PCK Platform CA"
	cnPCKProcessor = "Intel SGX PCK Processor CA"
	cnPCKLeaf      = "Intel SGX PCK Certificate"
	cnTCBSigning   = "Intel SGX TCB Signing"
)

// VerifierConfig configures a Verifier. The zero value verifies signature
// chains against the Intel SGX Root CA, with no collateral (status
// Unverified), at the current time.
type VerifierConfig struct {
	// Collateral supplies TCB Info, QE Identity and CRLs. Nil: chain-only
	// verification; verdicts carry TcbStatus Unverified.
	Collateral CollateralSource
	// SkipRevocation skips the CRL checks. By default they run, and
	// collateral without CRLs fails verification.
	SkipRevocation bool
	// Now gives the verification time. Nil: time.Now.
	Now func() time.Time
	// TrustedRoots replaces the Intel SGX Root CA. Only attest/attesttest
	// can build a value for it; the shipped binary leaves it nil.
	TrustedRoots *roots.Set
	// Logger receives debug logs. Nil: discard.
	Logger *slog.Logger
}

// Verifier checks TDX quotes. It is safe for concurrent use. It caches what
// does not depend on the quote itself — parsed and verified PCK chains and
// collateral signatures — and checks every quote's own signatures each time.
type Verifier struct {
	cfg   VerifierConfig
	roots *roots.Set
	log   *slog.Logger

	mu     sync.Mutex // guards chains and colls
	chains map[[32]byte]*pckChain
	colls  map[[32]byte]*checkedCollateral
}

const (
	maxCachedChains      = 4096
	maxCachedCollaterals = 256
)

// NewVerifier returns a Verifier. It starts nothing.
func NewVerifier(cfg VerifierConfig) *Verifier {
	r := cfg.TrustedRoots
	if r == nil {
		r = intelRoots()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Verifier{
		cfg:    cfg,
		roots:  r,
		log:    log,
		chains: make(map[[32]byte]*pckChain),
		colls:  make(map[[32]byte]*checkedCollateral),
	}
}

// Verify checks a raw quote at the configured time.
func (v *Verifier) Verify(ctx context.Context, raw []byte) (*Verdict, error) {
	now := time.Now()
	if v.cfg.Now != nil {
		now = v.cfg.Now()
	}
	return v.VerifyAt(ctx, raw, now)
}

// VerifyAt checks a raw quote at time at: structure, PCK chain to the trusted
// root, QE report signature and data, the quote signature, and, with
// collateral, the collateral's signatures and validity, revocation, the
// platform's match with the TCB Info and QE Identity, and the TCB status.
//
// A returned error means the quote is not genuine or not checkable; a TCB
// status short of UpToDate is not an error but part of the Verdict, for the
// Policy to judge. Mock quotes parse and yield a Verdict with Mock set.
func (v *Verifier) VerifyAt(ctx context.Context, raw []byte, at time.Time) (*Verdict, error) {
	q, err := ParseQuote(raw)
	if err != nil {
		return nil, err
	}
	return v.VerifyQuoteAt(ctx, q, at)
}

// VerifyQuoteAt is VerifyAt for a parsed quote.
func (v *Verifier) VerifyQuoteAt(ctx context.Context, q *Quote, at time.Time) (*Verdict, error) {
	at = at.UTC()
	if q.Mock {
		return &Verdict{Quote: q, Mock: true, TcbStatus: TcbMock, QeTcbStatus: TcbMock, VerifiedAt: at}, nil
	}
	sd, err := signedData(q)
	if err != nil {
		return nil, err
	}
	qecd := sd.GetCertificationData().GetQeReportCertificationData()
	chain, err := v.chain(qecd.GetPckCertificateChainData().GetPckCertChain())
	if err != nil {
		return nil, err
	}
	if err := chain.validAt(at); err != nil {
		return nil, err
	}

	// The quote's own signatures: never cached.
	if err := verifyQuoteSignature(q, sd); err != nil {
		return nil, err
	}
	if err := verifyQEReport(qecd, sd.GetEcdsaAttestationKey(), chain.leafKey); err != nil {
		return nil, err
	}

	verdict := &Verdict{Quote: q, TcbStatus: TcbUnverified, QeTcbStatus: TcbUnverified, VerifiedAt: at}
	if v.cfg.Collateral == nil {
		return verdict, nil
	}
	coll, err := v.cfg.Collateral.Collateral(ctx, chain.fmspc, chain.ca)
	if err != nil {
		return nil, fmt.Errorf("getting collateral for fmspc %s: %w", chain.fmspc, err)
	}
	cc, err := v.checkCollateral(coll)
	if err != nil {
		return nil, err
	}
	if err := cc.validAt(at, !v.cfg.SkipRevocation); err != nil {
		return nil, err
	}
	if !v.cfg.SkipRevocation {
		if err := cc.checkRevocation(chain); err != nil {
			return nil, err
		}
		verdict.RevocationChecked = true
	}
	if err := judgeTcb(verdict, q, chain, coll, qecd.GetQeReport()); err != nil {
		return nil, err
	}
	verdict.CollateralChecked = true
	return verdict, nil
}

type signedDataProvider interface {
	GetSignedData() *pb.Ecdsa256BitQuoteV4AuthData
}

func signedData(q *Quote) (*pb.Ecdsa256BitQuoteV4AuthData, error) {
	p, ok := q.proto.(signedDataProvider)
	if !ok || p.GetSignedData() == nil {
		return nil, errors.New("verifying quote: no signed data")
	}
	return p.GetSignedData(), nil
}

// verifyQuoteSignature checks the attestation key's ECDSA-P256-SHA256
// signature over header || TD report body (Intel TDX DCAP Quoting Library
// API, A.3.8 "Quote Signature Data").
func verifyQuoteSignature(q *Quote, sd *pb.Ecdsa256BitQuoteV4AuthData) error {
	key, err := p256Key(sd.GetEcdsaAttestationKey())
	if err != nil {
		return fmt.Errorf("%w: attestation key: %v", ErrQuoteSignature, err)
	}
	h := sha256.Sum256(q.signed)
	if !verifyRS(key, h[:], sd.GetSignature()) {
		return ErrQuoteSignature
	}
	return nil
}

// verifyQEReport checks that the PCK key signed the QE report and that the
// QE report data is SHA-256(attestation key || QE auth data) || 32 zero bytes
// (A.3.11 "QE Report Certification Data").
func verifyQEReport(qecd *pb.QEReportCertificationData, attestKey []byte, pck *ecdsa.PublicKey) error {
	rep, err := abi.EnclaveReportToAbiBytes(qecd.GetQeReport())
	if err != nil {
		return fmt.Errorf("%w: encoding QE report: %v", ErrQEReportSignature, err)
	}
	h := sha256.Sum256(rep)
	if !verifyRS(pck, h[:], qecd.GetQeReportSignature()) {
		return ErrQEReportSignature
	}
	hd := sha256.New()
	hd.Write(attestKey)
	hd.Write(qecd.GetQeAuthData().GetData())
	var want [64]byte
	copy(want[:], hd.Sum(nil))
	if !bytes.Equal(want[:], qecd.GetQeReport().GetReportData()) {
		return ErrQEReportData
	}
	return nil
}

func p256Key(raw []byte) (*ecdsa.PublicKey, error) {
	if len(raw) != 64 {
		return nil, fmt.Errorf("%d bytes, want 64", len(raw))
	}
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, raw...))
}

// verifyRS verifies a raw r || s P-256 signature over a digest.
func verifyRS(key *ecdsa.PublicKey, digest, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(key, digest, r, s)
}

// pckChain is a parsed PCK certificate chain whose signatures, names and
// root were checked. Only validity times remain to check per verification.
type pckChain struct {
	leaf, inter, root *x509.Certificate
	leafKey           *ecdsa.PublicKey
	ext               *pcs.PckExtensions
	fmspc             FMSPC
	ca                string // "platform" or "processor"
	err               error
}

func (c *pckChain) validAt(at time.Time) error {
	for _, x := range []*x509.Certificate{c.leaf, c.inter, c.root} {
		if at.Before(x.NotBefore) || at.After(x.NotAfter) {
			return fmt.Errorf("%w: %q is valid %s .. %s, not at %s", ErrPCKChain, x.Subject.CommonName,
				x.NotBefore.UTC().Format(time.RFC3339), x.NotAfter.UTC().Format(time.RFC3339), at.Format(time.RFC3339))
		}
	}
	return nil
}

// chain returns the checked chain for the PEM bytes, from cache when seen.
func (v *Verifier) chain(pemChain []byte) (*pckChain, error) {
	key := sha256.Sum256(pemChain)
	v.mu.Lock()
	c, ok := v.chains[key]
	v.mu.Unlock()
	if !ok {
		c = v.checkChain(pemChain)
		v.mu.Lock()
		if len(v.chains) >= maxCachedChains {
			clear(v.chains)
		}
		v.chains[key] = c
		v.mu.Unlock()
	}
	if c.err != nil {
		return nil, c.err
	}
	return c, nil
}

func (v *Verifier) checkChain(pemChain []byte) *pckChain {
	c := &pckChain{}
	fail := func(format string, a ...any) *pckChain {
		c.err = fmt.Errorf("%w: "+format, append([]any{ErrPCKChain}, a...)...)
		return c
	}
	var certs []*x509.Certificate
	rest := pemChain
	for len(certs) < 4 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fail("PEM block %q is not a certificate", blk.Type)
		}
		x, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fail("certificate %d: %v", len(certs), err)
		}
		certs = append(certs, x)
	}
	if len(certs) != 3 {
		return fail("%d certificates, want 3 (PCK, intermediate CA, root CA)", len(certs))
	}
	if len(bytes.Trim(rest, "\x00\r\n\t ")) != 0 {
		return fail("unexpected bytes after the certificates")
	}
	c.leaf, c.inter, c.root = certs[0], certs[1], certs[2]
	if !v.roots.Contains(c.root) {
		return fail("root certificate %q (serial %x) is not the pinned root", c.root.Subject.CommonName, c.root.SerialNumber)
	}
	switch c.inter.Subject.CommonName {
	case cnPCKPlatform:
		c.ca = "platform"
	case cnPCKProcessor:
		c.ca = "processor"
	default:
		return fail("intermediate CA %q is not an Intel PCK CA", c.inter.Subject.CommonName)
	}
	for _, s := range []struct {
		cert, parent *x509.Certificate
		cn           string
	}{{c.root, c.root, cnRoot}, {c.inter, c.root, c.inter.Subject.CommonName}, {c.leaf, c.inter, cnPCKLeaf}} {
		if err := checkIntelCert(s.cert, s.parent, s.cn); err != nil {
			return fail("%v", err)
		}
	}
	// A full x509 path check (constraints, key usage) at a time inside every
	// window; validity at the verification time is checked per quote.
	t := latest(c.leaf.NotBefore, c.inter.NotBefore, c.root.NotBefore)
	inter := x509.NewCertPool()
	inter.AddCert(c.inter)
	if _, err := c.leaf.Verify(x509.VerifyOptions{Roots: v.roots.Pool(), Intermediates: inter, CurrentTime: t, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fail("%v", err)
	}
	key, ok := c.leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fail("PCK key is not ECDSA")
	}
	c.leafKey = key
	ext, err := pcs.PckCertificateExtensions(c.leaf)
	if err != nil {
		return fail("PCK SGX extensions: %v", err)
	}
	c.ext = ext
	if err := parseHexInto(c.fmspc[:], ext.FMSPC, "fmspc"); err != nil {
		return fail("PCK SGX extensions: %v", err)
	}
	return c
}

// checkIntelCert checks the shape Intel's certificates have (X.509 v3,
// ECDSA-SHA256 over P-256), the subject name, the issuer name and the
// signature by parent.
func checkIntelCert(cert, parent *x509.Certificate, cn string) error {
	if cert.Version != 3 || cert.SignatureAlgorithm != x509.ECDSAWithSHA256 || cert.PublicKeyAlgorithm != x509.ECDSA {
		return fmt.Errorf("%q: not an X.509 v3 ECDSA-SHA256 certificate", cert.Subject.CommonName)
	}
	if k, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("%q: key is not on P-256", cert.Subject.CommonName)
	}
	if cert.Subject.CommonName != cn {
		return fmt.Errorf("subject %q, want %q", cert.Subject.CommonName, cn)
	}
	if !bytes.Equal(cert.RawIssuer, parent.RawSubject) {
		return fmt.Errorf("%q: issuer %q is not %q", cn, cert.Issuer.CommonName, parent.Subject.CommonName)
	}
	if err := cert.CheckSignatureFrom(parent); err != nil {
		return fmt.Errorf("%q: signature by %q: %v", cn, parent.Subject.CommonName, err)
	}
	return nil
}

func latest(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

// checkedCollateral is collateral whose signatures were verified.
type checkedCollateral struct {
	c   *Collateral
	err error

	mu       sync.Mutex // guards pckCRLBy
	pckCRLBy map[[32]byte]error
}

func (v *Verifier) checkCollateral(c *Collateral) (*checkedCollateral, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: none given", ErrCollateralInvalid)
	}
	v.mu.Lock()
	cc, ok := v.colls[c.id]
	v.mu.Unlock()
	if !ok {
		cc = &checkedCollateral{c: c, pckCRLBy: make(map[[32]byte]error)}
		cc.err = v.verifyCollateralSignatures(c)
		v.mu.Lock()
		if len(v.colls) >= maxCachedCollaterals {
			clear(v.colls)
		}
		v.colls[c.id] = cc
		v.mu.Unlock()
	}
	if cc.err != nil {
		return nil, cc.err
	}
	return cc, nil
}

func (v *Verifier) verifyCollateralSignatures(c *Collateral) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrCollateralInvalid}, a...)...)
	}
	if c.TcbInfo.ID != "TDX" || c.TcbInfo.Version != 3 {
		return bad("tcbInfo id %q version %d, want TDX version 3", c.TcbInfo.ID, c.TcbInfo.Version)
	}
	if len(c.TcbInfo.TcbLevels) == 0 {
		return bad("tcbInfo has no TCB levels")
	}
	if c.QeIdentity.ID != "TD_QE" || c.QeIdentity.Version != 2 {
		return bad("qeIdentity id %q version %d, want TD_QE version 2", c.QeIdentity.ID, c.QeIdentity.Version)
	}
	if len(c.QeIdentity.TcbLevels) == 0 {
		return bad("qeIdentity has no TCB levels")
	}
	for _, s := range []struct {
		what   string
		issuer []*x509.Certificate
		body   []byte
		sig    []byte
	}{
		{"tcbInfo", c.TcbInfoIssuer, c.TcbInfoBody, c.TcbInfoSignature},
		{"qeIdentity", c.QeIdentityIssuer, c.QeIdentityBody, c.QeIdentitySignature},
	} {
		if err := v.checkSigningChain(s.issuer, cnTCBSigning); err != nil {
			return bad("%s issuer chain: %v", s.what, err)
		}
		h := sha256.Sum256(s.body)
		if !verifyRS(s.issuer[0].PublicKey.(*ecdsa.PublicKey), h[:], s.sig) {
			return bad("%s signature does not verify with %q", s.what, cnTCBSigning)
		}
	}
	if c.HasCRLs() {
		root := c.PckCrlIssuer[1]
		if !v.roots.Contains(root) {
			return bad("PCK CRL issuer chain does not end at the pinned root")
		}
		if err := c.RootCaCrl.CheckSignatureFrom(root); err != nil {
			return bad("root CA CRL signature: %v", err)
		}
		if !bytes.Equal(c.RootCaCrl.RawIssuer, root.RawSubject) {
			return bad("root CA CRL issuer %q is not the root", c.RootCaCrl.Issuer.CommonName)
		}
		cn := c.PckCrlIssuer[0].Subject.CommonName
		if cn != cnPCKPlatform && cn != cnPCKProcessor {
			return bad("PCK CRL issuer %q is not an Intel PCK CA", cn)
		}
		if err := v.checkSigningChain(c.PckCrlIssuer, cn); err != nil {
			return bad("PCK CRL issuer chain: %v", err)
		}
		if err := c.PckCrl.CheckSignatureFrom(c.PckCrlIssuer[0]); err != nil {
			return bad("PCK CRL signature: %v", err)
		}
		for _, s := range []*x509.Certificate{c.TcbInfoIssuer[0], c.QeIdentityIssuer[0], c.PckCrlIssuer[0]} {
			if t, ok := c.rootRevoked[serialKey(s.SerialNumber)]; ok {
				return fmt.Errorf("%w: %q (serial %x) revoked by the root CA CRL at %s", ErrRevoked, s.Subject.CommonName, s.SerialNumber, t.UTC().Format(time.RFC3339))
			}
		}
	}
	return nil
}

// checkSigningChain checks [signing cert, root]: the root is the pinned one
// and signed the signing cert, whose subject is cn.
func (v *Verifier) checkSigningChain(chain []*x509.Certificate, cn string) error {
	if len(chain) != 2 {
		return fmt.Errorf("%d certificates, want 2", len(chain))
	}
	if !v.roots.Contains(chain[1]) {
		return fmt.Errorf("root %q is not the pinned root", chain[1].Subject.CommonName)
	}
	return checkIntelCert(chain[0], chain[1], cn)
}

// validAt checks the collateral's time windows (Intel PCS API: issueDate and
// nextUpdate of TCB Info and QE Identity; CRL thisUpdate and nextUpdate) and
// its signing certificates' validity.
func (cc *checkedCollateral) validAt(at time.Time, crls bool) error {
	c := cc.c
	window := func(what string, from, to time.Time) error {
		if at.Before(from) {
			return fmt.Errorf("%w: %w: %s is not valid before %s (verification time %s)", ErrCollateralInvalid, ErrCollateralNotYetValid, what, from.UTC().Format(time.RFC3339), at.Format(time.RFC3339))
		}
		if at.After(to) {
			return fmt.Errorf("%w: %s nextUpdate %s is before the verification time %s", ErrCollateralExpired, what, to.UTC().Format(time.RFC3339), at.Format(time.RFC3339))
		}
		return nil
	}
	checks := []error{
		window("tcbInfo", c.TcbInfo.IssueDate, c.TcbInfo.NextUpdate),
		window("qeIdentity", c.QeIdentity.IssueDate, c.QeIdentity.NextUpdate),
		window("tcbInfo signing certificate", c.TcbInfoIssuer[0].NotBefore, c.TcbInfoIssuer[0].NotAfter),
		window("qeIdentity signing certificate", c.QeIdentityIssuer[0].NotBefore, c.QeIdentityIssuer[0].NotAfter),
	}
	if crls {
		if !c.HasCRLs() {
			return ErrRevocationRequired
		}
		checks = append(checks,
			window("PCK CRL", c.PckCrl.ThisUpdate, c.PckCrl.NextUpdate),
			window("root CA CRL", c.RootCaCrl.ThisUpdate, c.RootCaCrl.NextUpdate),
			window("PCK CRL issuer certificate", c.PckCrlIssuer[0].NotBefore, c.PckCrlIssuer[0].NotAfter))
	}
	for _, err := range checks {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkRevocation checks the quote's PCK chain against the CRLs.
func (cc *checkedCollateral) checkRevocation(ch *pckChain) error {
	c := cc.c
	if !bytes.Equal(c.PckCrl.RawIssuer, ch.inter.RawSubject) {
		return fmt.Errorf("%w: PCK CRL is issued by %q, the PCK certificate by %q", ErrPlatformMismatch, c.PckCrl.Issuer.CommonName, ch.inter.Subject.CommonName)
	}
	// The CRL must be signed by this chain's intermediate too (normally the
	// same certificate as the CRL issuer chain's); cached per intermediate.
	ik := sha256.Sum256(ch.inter.Raw)
	cc.mu.Lock()
	err, ok := cc.pckCRLBy[ik]
	cc.mu.Unlock()
	if !ok {
		err = c.PckCrl.CheckSignatureFrom(ch.inter)
		cc.mu.Lock()
		cc.pckCRLBy[ik] = err
		cc.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("%w: PCK CRL signature by the quote's PCK CA: %v", ErrCollateralInvalid, err)
	}
	if t, ok := c.rootRevoked[serialKey(ch.inter.SerialNumber)]; ok {
		return fmt.Errorf("%w: PCK CA %q (serial %x) revoked at %s", ErrRevoked, ch.inter.Subject.CommonName, ch.inter.SerialNumber, t.UTC().Format(time.RFC3339))
	}
	if t, ok := c.pckRevoked[serialKey(ch.leaf.SerialNumber)]; ok {
		return fmt.Errorf("%w: PCK certificate (serial %x) revoked at %s", ErrRevoked, ch.leaf.SerialNumber, t.UTC().Format(time.RFC3339))
	}
	return nil
}

type seamProvider interface {
	GetMrSignerSeam() []byte
	GetSeamAttributes() []byte
}

// judgeTcb matches the platform against the TCB Info and QE Identity and
// fills the verdict's statuses (Intel TDX DCAP Quote Verification, "TCB
// level matching" and "TDX module identity"; the convergence of TDX module
// and QE status follows Intel's reference QVL).
func judgeTcb(verdict *Verdict, q *Quote, ch *pckChain, c *Collateral, qe *pb.EnclaveReport) error {
	ti := &c.TcbInfo
	if !strings.EqualFold(ti.Fmspc, ch.ext.FMSPC) {
		return fmt.Errorf("%w: %w: quote's FMSPC %s, tcbInfo's %s", ErrPlatformMismatch, ErrCollateralPlatform, strings.ToLower(ch.ext.FMSPC), strings.ToLower(ti.Fmspc))
	}
	if !strings.EqualFold(ti.PceID, ch.ext.PCEID) {
		return fmt.Errorf("%w: %w: quote's PCEID %s, tcbInfo's %s", ErrPlatformMismatch, ErrCollateralPlatform, ch.ext.PCEID, ti.PceID)
	}
	var body seamProvider
	switch p := q.proto.(type) {
	case *pb.QuoteV4:
		body = p.GetTdQuoteBody()
	case *pb.QuoteV5:
		body = p.GetTdQuoteBodyDescriptor().GetTdQuoteBodyV5()
	}
	if err := checkSeam(ti, q.TeeTcbSvn, body); err != nil {
		return err
	}
	if err := checkQEIdentity(qe, &c.QeIdentity); err != nil {
		return err
	}

	verdict.QeTcbStatus = TcbNoMatchingLevel
	for _, l := range c.QeIdentity.TcbLevels {
		if l.Tcb.Isvsvn <= qe.GetIsvSvn() {
			verdict.QeTcbStatus = TcbStatus(l.TcbStatus)
			break
		}
	}

	level, detail := matchTcbLevel(ti.TcbLevels, ch.ext, q.TeeTcbSvn)
	if level == nil {
		verdict.TcbStatus = TcbNoMatchingLevel
		verdict.TcbDetail = detail
		return nil
	}
	status := TcbStatus(level.TcbStatus)
	verdict.TcbDate = level.TcbDate
	verdict.AdvisoryIDs = append(verdict.AdvisoryIDs, level.AdvisoryIDs...)
	if q.TeeTcbSvn[1] > 0 {
		mod, detail := matchModuleLevel(ti.TdxModuleIdentities, q.TeeTcbSvn)
		if mod == nil {
			verdict.TcbStatus = TcbNoMatchingLevel
			verdict.TcbDetail = detail
			return nil
		}
		verdict.TdxModuleTcbStatus = TcbStatus(mod.TcbStatus)
		status = convergeStatus(status, verdict.TdxModuleTcbStatus)
		verdict.AdvisoryIDs = appendNew(verdict.AdvisoryIDs, mod.AdvisoryIDs...)
	}
	if q.TeeTcbSvn2 != nil {
		status = relaunchStatus(ti, ch.ext, *q.TeeTcbSvn2, status, verdict.TdxModuleTcbStatus, verdict.QeTcbStatus)
	}
	switch verdict.QeTcbStatus {
	case TcbNoMatchingLevel:
		verdict.TcbStatus = TcbNoMatchingLevel
		verdict.TcbDetail = fmt.Sprintf("no QE identity TCB level for QE ISVSVN %d", qe.GetIsvSvn())
		return nil
	default:
		status = convergeStatus(status, verdict.QeTcbStatus)
	}
	verdict.TcbStatus = status
	return nil
}

// checkSeam checks the TDX module that made the quote against the TCB Info:
// for a TDX 1.5 module (TEE_TCB_SVN[1] > 0) against the matching
// tdxModuleIdentities entry, TDX_<major>, otherwise against the top-level
// tdxModule; MRSIGNERSEAM must equal its mrsigner and the masked
// SEAMATTRIBUTES its attributes. SEAMATTRIBUTES must be zero in any case,
// as in Intel's reference QVL (no production TDX module sets any).
func checkSeam(ti *pcs.TcbInfo, svn TeeTcbSvn, body seamProvider) error {
	signer, attrs, attrMask := ti.TdxModule.Mrsigner.Bytes, ti.TdxModule.Attributes.Bytes, ti.TdxModule.AttributesMask.Bytes
	what := "tcbInfo's tdxModule"
	if svn[1] > 0 {
		id := fmt.Sprintf("TDX_%02X", svn[1])
		found := false
		for _, m := range ti.TdxModuleIdentities {
			if strings.EqualFold(m.ID, id) {
				signer, attrs, attrMask, found = m.Mrsigner.Bytes, m.Attributes.Bytes, m.AttributesMask.Bytes, true
				break
			}
		}
		if !found {
			return fmt.Errorf("%w: tcbInfo has no TDX module identity %s for TEE_TCB_SVN[1] = %d", ErrPlatformMismatch, id, svn[1])
		}
		what = "tcbInfo's TDX module identity " + id
	}
	if !bytes.Equal(signer, body.GetMrSignerSeam()) {
		return fmt.Errorf("%w: MRSIGNERSEAM %x is not the signer %x of %s", ErrPlatformMismatch, body.GetMrSignerSeam(), signer, what)
	}
	sa := body.GetSeamAttributes()
	if len(attrMask) != len(sa) || !bytes.Equal(mask(sa, attrMask), attrs) {
		return fmt.Errorf("%w: SEAMATTRIBUTES %x do not match the attributes of %s", ErrPlatformMismatch, sa, what)
	}
	if !bytes.Equal(sa, make([]byte, len(sa))) {
		return fmt.Errorf("%w: SEAMATTRIBUTES %x are not zero", ErrPlatformMismatch, sa)
	}
	return nil
}

// relaunchStatus implements Intel's TD relaunch check (QVL TDRelaunchCheck,
// after the TDX module convergence and before the QE's): a TD that runs on an
// OutOfDate TDX module, on a platform whose SGX TCB is current and whose
// TEE_TCB_SVN_2 (the TCB after a TD-preserving module update) meets the
// newest TCB level (and, for TDX 1.5, the newest level of its module
// identity), is told to relaunch rather than that it is out of date.
func relaunchStatus(ti *pcs.TcbInfo, ext *pcs.PckExtensions, svn2 TeeTcbSvn, status, module, qe TcbStatus) TcbStatus {
	switch qe {
	case TcbOutOfDate, TcbOutOfDateConfigurationNeeded, TcbRevoked, TcbNoMatchingLevel:
		return status
	}
	if module != TcbOutOfDate || (status != TcbOutOfDate && status != TcbOutOfDateConfigurationNeeded) || len(ti.TcbLevels) == 0 {
		return status
	}
	sgx := matchSGXLevel(ti.TcbLevels, ext)
	if sgx == nil {
		return status
	}
	sgxStatus := TcbStatus(sgx.TcbStatus)
	switch sgxStatus {
	case TcbUpToDate, TcbSWHardeningNeeded, TcbConfigurationNeeded, TcbConfigurationAndSWHardeningNeeded:
	default:
		return status
	}
	latest := &ti.TcbLevels[0]
	if len(latest.Tcb.TdxTcbcomponents) < 3 || svn2[2] < latest.Tcb.TdxTcbcomponents[2].Svn {
		return status
	}
	if svn2[1] == 0 {
		if svn2[0] < latest.Tcb.TdxTcbcomponents[0].Svn {
			return status
		}
	} else {
		id := fmt.Sprintf("TDX_%02X", svn2[1])
		var levels []pcs.TcbLevel
		for _, m := range ti.TdxModuleIdentities {
			if strings.EqualFold(m.ID, id) {
				levels = m.TcbLevels
			}
		}
		if len(levels) == 0 || uint32(svn2[0]) < levels[0].Tcb.Isvsvn {
			return status
		}
	}
	if configNeeded(sgxStatus) || configNeeded(status) {
		return TcbTDRelaunchAdvisedConfigurationNeeded
	}
	return TcbTDRelaunchAdvised
}

func configNeeded(s TcbStatus) bool {
	switch s {
	case TcbConfigurationNeeded, TcbOutOfDateConfigurationNeeded, TcbConfigurationAndSWHardeningNeeded, TcbTDRelaunchAdvisedConfigurationNeeded:
		return true
	}
	return false
}

// meetsSGX reports whether the PCK certificate's SGX TCB components and
// PCESVN are each at least the level's.
func meetsSGX(l *pcs.TcbLevel, ext *pcs.PckExtensions) bool {
	cpu := ext.TCB.CPUSvnComponents
	if len(l.Tcb.SgxTcbcomponents) != len(cpu) {
		return false
	}
	for j := range cpu {
		if cpu[j] < l.Tcb.SgxTcbcomponents[j].Svn {
			return false
		}
	}
	return ext.TCB.PCESvn >= l.Tcb.Pcesvn
}

// matchSGXLevel returns the first TCB level the PCK certificate's SGX
// components and PCESVN meet, TDX components aside (QVL's SGX TCB level).
func matchSGXLevel(levels []pcs.TcbLevel, ext *pcs.PckExtensions) *pcs.TcbLevel {
	for i := range levels {
		if meetsSGX(&levels[i], ext) {
			return &levels[i]
		}
	}
	return nil
}

// convergeStatus folds a component's status (TDX module or QE) into the
// platform's: a component OutOfDate makes the platform OutOfDate (keeping
// "ConfigurationNeeded"), a revoked component revokes it.
func convergeStatus(platform, component TcbStatus) TcbStatus {
	switch component {
	case TcbRevoked:
		return TcbRevoked
	case TcbOutOfDate, TcbOutOfDateConfigurationNeeded:
		switch platform {
		case TcbUpToDate, TcbSWHardeningNeeded:
			return TcbOutOfDate
		case TcbConfigurationNeeded, TcbConfigurationAndSWHardeningNeeded:
			return TcbOutOfDateConfigurationNeeded
		}
	}
	return platform
}

// matchTcbLevel returns the first (newest) TCB level the platform meets: every
// SGX TCB component of the PCK certificate, its PCESVN, and every TDX TCB
// component of TEE_TCB_SVN at least the level's. For TDX 1.5
// (TEE_TCB_SVN[1] > 0) components 0 and 1 are judged by the TDX module
// identity instead.
func matchTcbLevel(levels []pcs.TcbLevel, ext *pcs.PckExtensions, svn TeeTcbSvn) (*pcs.TcbLevel, string) {
	cpu := ext.TCB.CPUSvnComponents
	start := 0
	if svn[1] > 0 {
		start = 2
	}
next:
	for i := range levels {
		l := &levels[i]
		if len(l.Tcb.TdxTcbcomponents) != len(svn) || !meetsSGX(l, ext) {
			continue
		}
		for j := start; j < len(svn); j++ {
			if svn[j] < l.Tcb.TdxTcbcomponents[j].Svn {
				continue next
			}
		}
		return l, ""
	}
	return nil, fmt.Sprintf("no TCB level for cpusvn %x, pcesvn %d, tee_tcb_svn %x among %d levels", cpu, ext.TCB.PCESvn, svn[:], len(levels))
}

func matchModuleLevel(ids []pcs.TdxModuleIdentity, svn TeeTcbSvn) (*pcs.TcbLevel, string) {
	id := fmt.Sprintf("TDX_%02X", svn[1])
	for _, m := range ids {
		if !strings.EqualFold(m.ID, id) {
			continue
		}
		for i := range m.TcbLevels {
			if uint32(svn[0]) >= m.TcbLevels[i].Tcb.Isvsvn {
				return &m.TcbLevels[i], ""
			}
		}
		return nil, fmt.Sprintf("no %s TCB level for TDX module ISVSVN %d", id, svn[0])
	}
	return nil, fmt.Sprintf("tcbInfo has no TDX module identity %s", id)
}

// checkQEIdentity checks the QE report against the TD_QE identity: masked
// MISCSELECT and ATTRIBUTES, MRSIGNER and ISVPRODID.
func checkQEIdentity(qe *pb.EnclaveReport, id *pcs.EnclaveIdentity) error {
	if len(id.MiscselectMask.Bytes) != 4 || len(id.Miscselect.Bytes) != 4 {
		return fmt.Errorf("%w: qeIdentity miscselect fields are not 4 bytes", ErrCollateralInvalid)
	}
	m := binary.LittleEndian.Uint32(id.MiscselectMask.Bytes)
	if qe.GetMiscSelect()&m != binary.LittleEndian.Uint32(id.Miscselect.Bytes) {
		return fmt.Errorf("%w: QE MISCSELECT %#x does not match qeIdentity", ErrPlatformMismatch, qe.GetMiscSelect())
	}
	if len(id.AttributesMask.Bytes) != len(qe.GetAttributes()) || !bytes.Equal(mask(qe.GetAttributes(), id.AttributesMask.Bytes), id.Attributes.Bytes) {
		return fmt.Errorf("%w: QE ATTRIBUTES %x do not match qeIdentity", ErrPlatformMismatch, qe.GetAttributes())
	}
	if !bytes.Equal(qe.GetMrSigner(), id.Mrsigner.Bytes) {
		return fmt.Errorf("%w: QE MRSIGNER %x is not qeIdentity's %x", ErrPlatformMismatch, qe.GetMrSigner(), id.Mrsigner.Bytes)
	}
	if qe.GetIsvProdId() != uint32(id.IsvProdID) {
		return fmt.Errorf("%w: QE ISVPRODID %d is not qeIdentity's %d", ErrPlatformMismatch, qe.GetIsvProdId(), id.IsvProdID)
	}
	return nil
}

func mask(b, m []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		if i < len(m) {
			out[i] = b[i] & m[i]
		}
	}
	return out
}

func appendNew(dst []string, src ...string) []string {
	for _, s := range src {
		found := false
		for _, d := range dst {
			if d == s {
				found = true
				break
			}
		}
		if !found {
			dst = append(dst, s)
		}
	}
	return dst
}
