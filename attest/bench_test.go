package attest

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"
)

type staticResponse struct {
	header map[string][]string
	body   []byte
}

// urlGetter serves a QuoteCollateralV3 file to go-tdx-guest at the Intel PCS
// URLs it requests (see ../shared/testdata/tdx/README.md).
type urlGetter map[string]staticResponse

var _ trust.HTTPSGetter = urlGetter(nil)

func (g urlGetter) Get(u string) (map[string][]string, []byte, error) {
	r, ok := g[u]
	if !ok {
		return nil, nil, fmt.Errorf("no response for %s", u)
	}
	return r.header, r.body, nil
}

func goTdxGuestGetter(tb testing.TB, collPath, fmspc string) urlGetter {
	b, err := os.ReadFile(collPath)
	if err != nil {
		tb.Skipf("shared test data not present: %v", err)
	}
	var j collateralV3JSON
	if err := json.Unmarshal(b, &j); err != nil {
		tb.Fatal(err)
	}
	pck, _ := hex.DecodeString(j.PckCrl)
	root, _ := hex.DecodeString(j.RootCaCrl)
	return urlGetter{
		IntelPCS + "/tdx/certification/v4/tcb?fmspc=" + fmspc: {
			map[string][]string{"Tcb-Info-Issuer-Chain": {url.QueryEscape(j.TcbInfoIssuerChain)}},
			[]byte(`{"tcbInfo":` + j.TcbInfo + `,"signature":"` + j.TcbInfoSignature + `"}`)},
		IntelPCS + "/tdx/certification/v4/qe/identity": {
			map[string][]string{"Sgx-Enclave-Identity-Issuer-Chain": {url.QueryEscape(j.QeIdentityIssuerChain)}},
			[]byte(`{"enclaveIdentity":` + j.QeIdentity + `,"signature":"` + j.QeIdentitySignature + `"}`)},
		IntelPCS + "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": {
			map[string][]string{"Sgx-Pck-Crl-Issuer-Chain": {url.QueryEscape(j.PckCrlIssuerChain)}}, pck},
		intelRootCRL: {nil, root},
	}
}

// BenchmarkVerify compares fleetbox's verification of a real quote (Q1,
// with its own collateral and CRLs, warm caches) with go-tdx-guest's full
// verification of the same quote and collateral in the same run. Both check
// the PCK chain to the Intel root, the QE report, the quote signature, the
// collateral signatures and validity, revocation and the TCB level.
//
//	go test ./attest -run '^$' -bench Verify -benchtime 2s
func BenchmarkVerify(b *testing.B) {
	raw := sharedFile(b, "dcap-qvl/tdx_quote")
	collPath := filepath.Join(sharedTDX, "dcap-qvl/tdx_quote_collateral.json")
	at := mustTime(b, "2025-06-19T10:33:27Z")
	ctx := context.Background()

	b.Run("fleetbox", func(b *testing.B) {
		coll, err := LoadCollateralFile(collPath)
		if err != nil {
			b.Fatal(err)
		}
		v := NewVerifier(VerifierConfig{Collateral: StaticCollateral{coll}})
		if vd, err := v.VerifyAt(ctx, raw, at); err != nil || vd.TcbStatus != TcbUpToDate || !vd.RevocationChecked {
			b.Fatalf("%v %v", vd, err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := v.VerifyAt(ctx, raw, at); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/quote")
	})
	b.Run("go-tdx-guest", func(b *testing.B) {
		getter := goTdxGuestGetter(b, collPath, "b0c06f000000")
		ts := &verify.TimeSet{PckCertChain: at, TcbInfo: at, QeIdentity: at, PckCrl: at, RootCaCrl: at}
		roots := intelRoots().Pool()
		opts := func() *verify.Options {
			return &verify.Options{GetCollateral: true, CheckRevocations: true, Getter: getter, Now: ts, TrustedRoots: roots}
		}
		if err := verify.RawTdxQuote(raw, opts()); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if err := verify.RawTdxQuote(raw, opts()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/quote")
	})
}
