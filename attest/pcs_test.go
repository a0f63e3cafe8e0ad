package attest_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	tdxtesting "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"
	"github.com/google/go-tdx-guest/verify"

	"github.com/fleetbox/fleetbox/attest"
)

// fakePCS serves go-tdx-guest's recorded Intel PCS responses (real,
// Intel-signed collateral for its sample quotes) at PCS v4 paths; the root
// CRL is served at the PCCS path.
func fakePCS(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		u := attest.IntelPCS + r.URL.RequestURI()
		if r.URL.Path == "/sgx/certification/v4/rootcacrl" {
			u = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
		}
		resp, ok := tdxtesting.TestGetter.Responses[u]
		if !ok {
			http.NotFound(w, r)
			return
		}
		for k, vs := range resp.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.Write(resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// goTdxGuestSampleTime is inside the validity of go-tdx-guest's sample
// collateral (its own tests use the same instant).
var goTdxGuestSampleTime = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)

func TestGoTdxGuestSamples(t *testing.T) {
	ctx := context.Background()
	t.Run("V4 chain only", func(t *testing.T) {
		v := attest.NewVerifier(attest.VerifierConfig{})
		verdict, err := v.VerifyAt(ctx, testdata.RawQuote, time.Date(2022, 9, 21, 13, 20, 31, 0, time.UTC))
		if err != nil || verdict.TcbStatus != attest.TcbUnverified || verdict.Quote.Version != 4 {
			t.Fatalf("verdict %+v, err %v", verdict, err)
		}
	})
	t.Run("V5 chain only", func(t *testing.T) {
		v := attest.NewVerifier(attest.VerifierConfig{})
		verdict, err := v.VerifyAt(ctx, testdata.RawQuoteV5, time.Date(2026, 1, 28, 14, 36, 27, 0, time.UTC))
		if err != nil || verdict.Quote.Version != 5 {
			t.Fatalf("verdict %+v, err %v", verdict, err)
		}
	})
	t.Run("V4 full through the PCS cache", func(t *testing.T) {
		srv, hits := fakePCS(t)
		dir := t.TempDir()
		at := goTdxGuestSampleTime
		cache := attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: dir, URL: srv.URL, Now: func() time.Time { return at }})
		v := attest.NewVerifier(attest.VerifierConfig{Collateral: cache})
		verdict, err := v.VerifyAt(ctx, testdata.RawQuote, at)
		if err != nil {
			t.Fatal(err)
		}
		// The sample platform (cpusvn 03 03 02 02 02 01 00 02, TEE_TCB_SVN
		// 03 00 04) is below both levels of its TCB Info (5 5 2 2 3 1 0 3;
		// TDX 3 0 5): genuine chain, CRLs clean, no matching level.
		if verdict.TcbStatus != attest.TcbNoMatchingLevel || !verdict.RevocationChecked || verdict.QeTcbStatus != attest.TcbUpToDate {
			t.Fatalf("status %s (%s) qe %s revocation %v", verdict.TcbStatus, verdict.TcbDetail, verdict.QeTcbStatus, verdict.RevocationChecked)
		}
		// go-tdx-guest agrees on the same quote and collateral: it refuses it
		// (it reports no status, only "no matching TCB level found"), while
		// its chain-only check passes.
		ts := &verify.TimeSet{PckCertChain: at, TcbInfo: at, QeIdentity: at, PckCrl: at, RootCaCrl: at}
		if err := verify.RawTdxQuote(testdata.RawQuote, &verify.Options{GetCollateral: true, CheckRevocations: true, Getter: tdxtesting.TestGetter, Now: ts}); err == nil {
			t.Fatal("go-tdx-guest accepted a platform below every TCB level")
		}
		if err := verify.RawTdxQuote(testdata.RawQuote, &verify.Options{Now: ts}); err != nil {
			t.Fatalf("go-tdx-guest chain-only: %v", err)
		}

		// Warm: no more fetches. Cold, with the PCS gone: served from disk.
		n := hits.Load()
		if _, err := v.VerifyAt(ctx, testdata.RawQuote, at); err != nil || hits.Load() != n {
			t.Fatalf("warm verification fetched again (%d -> %d) or failed: %v", n, hits.Load(), err)
		}
		srv.Close()
		cold := attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: dir, URL: srv.URL, Now: func() time.Time { return at }})
		if _, err := attest.NewVerifier(attest.VerifierConfig{Collateral: cold}).VerifyAt(ctx, testdata.RawQuote, at); err != nil {
			t.Fatalf("from disk: %v", err)
		}
		// Past its validity, with no way to refresh: fail closed.
		late := at.AddDate(0, 2, 0)
		stale := attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: dir, URL: srv.URL, Now: func() time.Time { return late }})
		_, err = attest.NewVerifier(attest.VerifierConfig{Collateral: stale}).VerifyAt(ctx, testdata.RawQuote, late)
		if !errors.Is(err, attest.ErrCollateralExpired) {
			t.Fatalf("stale cache: got %v, want ErrCollateralExpired", err)
		}
		files, _ := filepath.Glob(filepath.Join(dir, "collateral-*.json"))
		if len(files) != 1 {
			t.Fatalf("cache files %v", files)
		}
	})
	t.Run("offline cache without files", func(t *testing.T) {
		cache := attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: t.TempDir()})
		_, err := attest.NewVerifier(attest.VerifierConfig{Collateral: cache}).VerifyAt(ctx, testdata.RawQuote, goTdxGuestSampleTime)
		if !errors.Is(err, attest.ErrCollateralUnavailable) {
			t.Fatalf("no collateral: got %v, want ErrCollateralUnavailable", err)
		}
	})
	t.Run("corrupt cache file is ignored and refetched", func(t *testing.T) {
		srv, _ := fakePCS(t)
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "collateral-50806f000000-platform.json"), []byte("{garbage"), 0o644)
		cache := attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: dir, URL: srv.URL, Now: func() time.Time { return goTdxGuestSampleTime }})
		if _, err := attest.NewVerifier(attest.VerifierConfig{Collateral: cache}).VerifyAt(ctx, testdata.RawQuote, goTdxGuestSampleTime); err != nil {
			t.Fatal(err)
		}
	})
}
