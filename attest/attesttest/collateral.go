package attesttest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
)

// Level is one TCB level of a test TCB Info.
type Level struct {
	Status     attest.TcbStatus
	SGX        [16]byte // minimum SGX TCB component SVNs
	PCESVN     uint16
	TDX        [16]byte // minimum TDX TCB component SVNs
	Date       string
	Advisories []string
}

// QELevel is one TCB level of a test QE identity.
type QELevel struct {
	ISVSVN uint16
	Status attest.TcbStatus
}

// CollateralOptions shape test collateral. Zero values give collateral valid
// from Epoch-1h to Epoch+30d with one UpToDate level that DefaultPlatform meets.
type CollateralOptions struct {
	FMSPC            attest.FMSPC
	Issue, Next      time.Time
	Levels           []Level
	QELevels         []QELevel
	RevokedPlatforms []*Platform
	NoCRLs           bool
	// ModuleSigner, if set, replaces the TDX_01 module identity's mrsigner
	// (the top-level tdxModule keeps MRSignerSeam). ModuleAttributesMask,
	// if set, replaces the attributes masks of both.
	ModuleSigner         *[48]byte
	ModuleAttributesMask string
}

// LevelsFor returns TCB levels under which DefaultPlatform gets status:
// an UpToDate level it does not meet, then one it meets with status. For
// NoMatchingTcbLevel, only levels it does not meet.
func LevelsFor(status attest.TcbStatus) []Level {
	high := Level{Status: attest.TcbUpToDate, SGX: [16]byte{9, 9, 9, 9}, PCESVN: 16, TDX: [16]byte{9}, Date: "2026-01-01T00:00:00Z"}
	if status == attest.TcbNoMatchingLevel {
		return []Level{high}
	}
	met := Level{Status: status, SGX: [16]byte{1, 1, 1, 1}, PCESVN: 10, TDX: [16]byte{1}, Date: "2025-01-01T00:00:00Z"}
	if status != attest.TcbUpToDate {
		met.Advisories = []string{"INTEL-SA-TEST-0001"}
	}
	return []Level{high, met}
}

type tcbComponentJSON struct {
	Svn int `json:"svn"`
}

type tcbLevelJSON struct {
	Tcb struct {
		SGX    []tcbComponentJSON `json:"sgxtcbcomponents"`
		PCESVN uint16             `json:"pcesvn"`
		TDX    []tcbComponentJSON `json:"tdxtcbcomponents"`
	} `json:"tcb"`
	TcbDate     string   `json:"tcbDate"`
	TcbStatus   string   `json:"tcbStatus"`
	AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
}

func comps(b [16]byte) []tcbComponentJSON {
	out := make([]tcbComponentJSON, 16)
	for i := range b {
		out[i].Svn = int(b[i])
	}
	return out
}

// Collateral returns signed collateral, parsed as a verifier would get it.
func (ca *CA) Collateral(t testing.TB, o CollateralOptions) *attest.Collateral {
	t.Helper()
	c, err := attest.ParseCollateralJSON(ca.CollateralJSON(t, o))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// CollateralJSON returns signed collateral in the dcap-qvl QuoteCollateralV3
// JSON form.
func (ca *CA) CollateralJSON(t testing.TB, o CollateralOptions) []byte {
	t.Helper()
	if o.Issue.IsZero() {
		o.Issue = Epoch.Add(-time.Hour)
	}
	if o.Next.IsZero() {
		o.Next = Epoch.AddDate(0, 0, 30)
	}
	if o.FMSPC == (attest.FMSPC{}) {
		o.FMSPC = DefaultPlatform.FMSPC
	}
	if o.Levels == nil {
		o.Levels = LevelsFor(attest.TcbUpToDate)
	}
	if o.QELevels == nil {
		o.QELevels = []QELevel{{ISVSVN: 8, Status: attest.TcbUpToDate}, {ISVSVN: 0, Status: attest.TcbOutOfDate}}
	}
	var levels []tcbLevelJSON
	for _, l := range o.Levels {
		var j tcbLevelJSON
		j.Tcb.SGX, j.Tcb.PCESVN, j.Tcb.TDX = comps(l.SGX), l.PCESVN, comps(l.TDX)
		j.TcbDate, j.TcbStatus, j.AdvisoryIDs = l.Date, string(l.Status), l.Advisories
		levels = append(levels, j)
	}
	tcbInfo := map[string]any{
		"id": "TDX", "version": 3,
		"issueDate": o.Issue.UTC().Format(time.RFC3339), "nextUpdate": o.Next.UTC().Format(time.RFC3339),
		"fmspc": strings.ToUpper(hex.EncodeToString(o.FMSPC[:])), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17,
		"tdxModule": map[string]string{
			"mrsigner":       hex.EncodeToString(MRSignerSeam[:]),
			"attributes":     "0000000000000000",
			"attributesMask": "FFFFFFFFFFFFFFFF",
		},
		"tdxModuleIdentities": []map[string]any{{
			"id": "TDX_01", "mrsigner": hex.EncodeToString(MRSignerSeam[:]),
			"attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF",
			"tcbLevels": []map[string]any{
				{"tcb": map[string]int{"isvsvn": 2}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
				{"tcb": map[string]int{"isvsvn": 0}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate", "advisoryIDs": []string{"INTEL-SA-TEST-MODULE"}},
			},
		}},
		"tcbLevels": levels,
	}
	if o.ModuleSigner != nil {
		tcbInfo["tdxModuleIdentities"].([]map[string]any)[0]["mrsigner"] = hex.EncodeToString(o.ModuleSigner[:])
	}
	if o.ModuleAttributesMask != "" {
		tcbInfo["tdxModule"].(map[string]string)["attributesMask"] = o.ModuleAttributesMask
		tcbInfo["tdxModuleIdentities"].([]map[string]any)[0]["attributesMask"] = o.ModuleAttributesMask
	}
	var qeLevels []map[string]any
	for _, l := range o.QELevels {
		qeLevels = append(qeLevels, map[string]any{"tcb": map[string]uint16{"isvsvn": l.ISVSVN}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": string(l.Status)})
	}
	qeID := map[string]any{
		"id": "TD_QE", "version": 2,
		"issueDate": o.Issue.UTC().Format(time.RFC3339), "nextUpdate": o.Next.UTC().Format(time.RFC3339),
		"tcbEvaluationDataNumber": 17,
		"miscselect":              "00000000", "miscselectMask": "FFFFFFFF",
		"attributes":     strings.ToUpper(hex.EncodeToString(QEAttributes[:])),
		"attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner":       strings.ToUpper(hex.EncodeToString(QEMrSigner[:])),
		"isvprodid":      qeISVProdID,
		"tcbLevels":      qeLevels,
	}
	tcbBody := mustJSON(t, tcbInfo)
	qeBody := mustJSON(t, qeID)
	signingChain := pemOf(ca.TCBSigning, ca.Root)
	doc := map[string]string{
		"tcb_info_issuer_chain":    signingChain,
		"tcb_info":                 string(tcbBody),
		"tcb_info_signature":       hex.EncodeToString(ca.signBody(t, tcbBody)),
		"qe_identity_issuer_chain": signingChain,
		"qe_identity":              string(qeBody),
		"qe_identity_signature":    hex.EncodeToString(ca.signBody(t, qeBody)),
		"pck_crl_issuer_chain":     "", "root_ca_crl": "", "pck_crl": "",
	}
	if !o.NoCRLs {
		var revoked []x509.RevocationListEntry
		for _, p := range o.RevokedPlatforms {
			revoked = append(revoked, x509.RevocationListEntry{SerialNumber: p.serialOf(), RevocationTime: o.Issue})
		}
		doc["pck_crl_issuer_chain"] = pemOf(ca.PCKCA, ca.Root)
		doc["pck_crl"] = hex.EncodeToString(ca.crl(t, ca.PCKCA, revoked, o.Issue, o.Next))
		doc["root_ca_crl"] = hex.EncodeToString(ca.crl(t, ca.Root, nil, o.Issue, o.Next.AddDate(1, 0, 0)))
	}
	return mustJSON(t, doc)
}

func (ca *CA) signBody(t testing.TB, body []byte) []byte {
	d := sha256.Sum256(body)
	return signRS(t, ca.tcbSigningKey, d[:])
}

func (ca *CA) crl(t testing.TB, issuer *x509.Certificate, revoked []x509.RevocationListEntry, this, next time.Time) []byte {
	t.Helper()
	key := ca.rootKey
	if issuer == ca.PCKCA {
		key = ca.pckCAKey
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: this, NextUpdate: next,
		RevokedCertificateEntries: revoked, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, issuer, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemOf(certs ...*x509.Certificate) string {
	var b strings.Builder
	for _, c := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.String()
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(fmt.Errorf("encoding test collateral: %w", err))
	}
	return b
}
