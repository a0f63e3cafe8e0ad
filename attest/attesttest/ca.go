// Package attesttest builds real-format TDX quotes and Intel-format collateral
// under a test root, for tests only.
//
// The chain mirrors Intel's exactly — "Intel SGX Root CA" -> "Intel SGX PCK
// Platform CA" -> "Intel SGX PCK Certificate" with the SGX extension, and
// "Intel SGX TCB Signing" for collateral — but the root is a fresh P-256 key,
// so nothing here verifies under the Intel root that the shipped binary
// pins. A Verifier trusts the test root only through CA.VerifierConfig, whose
// root set type is internal to attest/; the fleetbox binary does not link
// this package (CI checks).
package attesttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/internal/roots"
)

// CA is a test certificate authority shaped like Intel's.
type CA struct {
	Root, PCKCA, TCBSigning          *x509.Certificate
	rootKey, pckCAKey, tcbSigningKey *ecdsa.PrivateKey
	serial                           atomic.Int64
	// NotBefore/NotAfter bound every certificate the CA issues.
	NotBefore, NotAfter time.Time
}

// Epoch is the default "now" of test-CA material: certificates are valid
// from Epoch-1y to Epoch+10y, collateral from Epoch-1h to Epoch+30d.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// SGX extension OIDs (Intel SGX PCK Certificate and CRL Profile, 1.5).
var (
	oidSGX      = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidPPID     = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 1}
	oidTCB      = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2}
	oidPCEID    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 3}
	oidFMSPC    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 4}
	oidSGXType  = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}
	oidPCESVN   = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2, 17}
	oidCPUSVN   = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2, 18}
	intelSubj   = pkix.Name{Organization: []string{"Intel Corporation"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}}
	rootCRLURL  = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
	pckCRLURL   = "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
	defaultFMSP = attest.FMSPC{0x00, 0x80, 0x6f, 0x05, 0x00, 0x00}
)

func name(cn string) pkix.Name {
	n := intelSubj
	n.CommonName = cn
	return n
}

// NewCA makes a root, a PCK platform CA and a TCB signing certificate.
func NewCA(t testing.TB) *CA {
	t.Helper()
	ca := &CA{NotBefore: Epoch.AddDate(-1, 0, 0), NotAfter: Epoch.AddDate(10, 0, 0)}
	var err error
	ca.rootKey = newKey(t)
	ca.Root = ca.issue(t, &x509.Certificate{
		Subject: name("Intel SGX Root CA"), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: ski(&ca.rootKey.PublicKey),
		CRLDistributionPoints: []string{rootCRLURL},
	}, nil, nil, &ca.rootKey.PublicKey)
	ca.pckCAKey = newKey(t)
	ca.PCKCA = ca.issue(t, &x509.Certificate{
		Subject: name("Intel SGX PCK Platform CA"), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: ski(&ca.pckCAKey.PublicKey),
		CRLDistributionPoints: []string{rootCRLURL},
	}, ca.Root, ca.rootKey, &ca.pckCAKey.PublicKey)
	ca.tcbSigningKey = newKey(t)
	ca.TCBSigning = ca.issue(t, &x509.Certificate{
		Subject: name("Intel SGX TCB Signing"), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, SubjectKeyId: ski(&ca.tcbSigningKey.PublicKey),
		CRLDistributionPoints: []string{rootCRLURL},
	}, ca.Root, ca.rootKey, &ca.tcbSigningKey.PublicKey)
	_ = err
	return ca
}

// VerifierConfig returns a verifier configuration that trusts this CA's
// root (and only it), with the given collateral source and time.
func (ca *CA) VerifierConfig(coll attest.CollateralSource, now time.Time) attest.VerifierConfig {
	return attest.VerifierConfig{
		Collateral:   coll,
		Now:          func() time.Time { return now },
		TrustedRoots: roots.New(ca.Root),
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ski(pub *ecdsa.PublicKey) []byte {
	b, _ := pub.Bytes()
	h := sha256.Sum256(b)
	return h[:20]
}

func (ca *CA) issue(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, pub *ecdsa.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(1000 + ca.serial.Add(1))
	tmpl.Issuer = tmpl.Subject
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = ca.NotBefore, ca.NotAfter
	}
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	if parent == nil {
		parent, parentKey = tmpl, nil
	}
	signer := parentKey
	if signer == nil {
		signer = ca.rootKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// PlatformTCB is what a PCK certificate says about its platform.
type PlatformTCB struct {
	FMSPC  attest.FMSPC
	CPUSVN [16]byte
	PCESVN uint16
}

// DefaultPlatform is the platform test quotes come from unless told otherwise.
var DefaultPlatform = PlatformTCB{FMSPC: defaultFMSP, CPUSVN: [16]byte{5, 5, 2, 2, 3, 1, 0, 5}, PCESVN: 13}

// Platform is a machine: a PCK certificate and a quoting enclave's
// attestation key. Quotes from one Platform share its certificate chain.
type Platform struct {
	ca      *CA
	TCB     PlatformTCB
	PCK     *x509.Certificate
	pckKey  *ecdsa.PrivateKey
	attKey  *ecdsa.PrivateKey
	chain   []byte
	qeRep   []byte // signed QE report
	qeSig   []byte
	qeAuth  []byte
	QESVN   uint16
	Revoked bool
}

// NewPlatform issues a PCK certificate for tcb and a fresh attestation key.
func (ca *CA) NewPlatform(t testing.TB, tcb PlatformTCB) *Platform {
	t.Helper()
	p := &Platform{ca: ca, TCB: tcb, pckKey: newKey(t), attKey: newKey(t), QESVN: 8}
	sgx, err := sgxExtension(tcb)
	if err != nil {
		t.Fatal(err)
	}
	p.PCK = ca.issue(t, &x509.Certificate{
		Subject: name("Intel SGX PCK Certificate"), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, SubjectKeyId: ski(&p.pckKey.PublicKey),
		CRLDistributionPoints: []string{pckCRLURL},
		ExtraExtensions:       []pkix.Extension{{Id: oidSGX, Value: sgx}},
	}, ca.PCKCA, ca.pckCAKey, &p.pckKey.PublicKey)
	for _, c := range []*x509.Certificate{p.PCK, ca.PCKCA, ca.Root} {
		p.chain = append(p.chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p.chain = append(p.chain, 0)
	p.signQEReport(t)
	return p
}

type sgxAttr struct {
	Type  asn1.ObjectIdentifier
	Value any
}

type sgxSeq struct {
	Type  asn1.ObjectIdentifier
	Value []sgxAttr
}

// sgxExtension encodes the SGX extension: PPID, TCB (16 component SVNs,
// PCESVN, CPUSVN), PCE-ID, FMSPC and SGX type.
func sgxExtension(tcb PlatformTCB) ([]byte, error) {
	var comps []sgxAttr
	for i := range 16 {
		oid := append(asn1.ObjectIdentifier{}, oidTCB...)
		comps = append(comps, sgxAttr{append(oid, i+1), int(tcb.CPUSVN[i])})
	}
	comps = append(comps, sgxAttr{oidPCESVN, int(tcb.PCESVN)}, sgxAttr{oidCPUSVN, tcb.CPUSVN[:]})
	parts := []any{
		sgxAttr{oidPPID, make([]byte, 16)},
		sgxSeq{oidTCB, comps},
		sgxAttr{oidPCEID, []byte{0, 0}},
		sgxAttr{oidFMSPC, tcb.FMSPC[:]},
		sgxAttr{oidSGXType, asn1.Enumerated(0)},
	}
	var raws []asn1.RawValue
	for _, p := range parts {
		b, err := asn1.Marshal(p)
		if err != nil {
			return nil, err
		}
		raws = append(raws, asn1.RawValue{FullBytes: b})
	}
	return asn1.Marshal(raws)
}
