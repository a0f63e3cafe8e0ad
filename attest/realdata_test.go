package attest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// sharedTDX is the real TDX test data beside the repository (read in place,
// never copied; see ../shared/testdata/tdx/README.md).
const sharedTDX = "../../shared/testdata/tdx"

func sharedFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sharedTDX, rel))
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("shared test data %s not present (clone the repository beside shared/): %v", rel, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	raw, err := DecodeQuoteFile(b)
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return raw
}

func sharedCollateral(t testing.TB, rel string) *Collateral {
	t.Helper()
	if _, err := os.Stat(filepath.Join(sharedTDX, rel)); errors.Is(err, os.ErrNotExist) {
		t.Skipf("shared test data %s not present", rel)
	}
	c, err := LoadCollateralFile(filepath.Join(sharedTDX, rel))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

// realQuote is one quote of the shared set with the verdicts its README
// documents.
type realQuote struct {
	file      string
	version   int
	debug     bool
	chainAt   string // a time inside the PCK chain's validity
	pckExpiry string // PCK notAfter + 24h
	// Full verification, where collateral exists.
	collateral string
	fullAt     string
	crls       bool
	status     TcbStatus
	// advisories must all be among the verdict's advisory IDs (fleetbox
	// reports the union of the platform level's and the TDX module level's).
	advisories []string
	pastWindow string // just after the collateral's common window
	// moduleStatus, where set, is the TDX module identity level's status,
	// which go-tdx-guest reports as the whole verdict for TDX 1.5 quotes
	// (TEE_TCB_SVN[1] > 0). fleetbox follows Intel's rule instead: the
	// platform level's status (SGX components, PCESVN, TDX components from
	// index 2) converged with the module's. Q10 and Q12 have an UpToDate
	// module on a platform whose SGX TCB is OutOfDate, so the testdata README
	// (go-tdx-guest) says UpToDate where fleetbox says OutOfDate.
	moduleStatus TcbStatus
}

var realQuotes = map[string]realQuote{
	"Q1": {file: "dcap-qvl/tdx_quote", version: 4, chainAt: "2025-02-07T23:25:51Z", pckExpiry: "2032-02-07T23:25:51Z",
		collateral: "dcap-qvl/tdx_quote_collateral.json", fullAt: "2025-06-19T10:33:27Z", crls: true, status: TcbUpToDate, pastWindow: "2025-07-19T11:00:35Z"},
	"Q1-newer-collateral": {file: "dcap-qvl/tdx_quote", version: 4, chainAt: "2025-02-07T23:25:51Z", pckExpiry: "2032-02-07T23:25:51Z",
		collateral: "near-mpc/collateral.json", fullAt: "2026-08-13T10:46:38Z", crls: true, status: TcbOutOfDate,
		advisories: []string{"INTEL-SA-01192", "INTEL-SA-01245", "INTEL-SA-01312"}},
	"Q2": {file: "dcap-qvl/tdx_quote_outdated", version: 5, chainAt: "2026-01-24T18:09:41Z", pckExpiry: "2033-01-24T18:09:41Z",
		collateral: "dcap-qvl/tdx_quote_outdated_collateral.json", fullAt: "2026-02-18T10:59:51Z", crls: true, status: TcbNoMatchingLevel, pastWindow: "2026-03-20T11:41:15Z"},
	"Q3": {file: "derived/dcap-qvl_near-gas-test_quote.bin", version: 4, chainAt: "2025-08-01T07:28:39Z", pckExpiry: "2032-08-01T07:28:39Z",
		collateral: "dcap-qvl/near-gas-test_quote_collateral.json", fullAt: "2025-09-02T07:42:59Z", crls: true, status: TcbUpToDate, pastWindow: "2025-10-02T08:03:51Z"},
	"Q3-hex": {file: "dcap-qvl/near-gas-test_quote_hex.txt", version: 4, chainAt: "2025-08-01T07:28:39Z", pckExpiry: "2032-08-01T07:28:39Z"},
	"Q4":     {file: "dcap-qvl/quote-from-tappd.hex", version: 4, chainAt: "2024-08-03T11:15:37Z", pckExpiry: "2031-08-03T11:15:37Z"},
	"Q5": {file: "dstack/quote-report.json", version: 4, chainAt: "2025-09-17T02:28:15Z", pckExpiry: "2032-09-17T02:28:15Z",
		collateral: "dcap-qvl/tdx_quote_outdated_collateral.json", fullAt: "2026-02-18T10:59:51Z", crls: true, status: TcbUpToDate, pastWindow: "2026-03-20T11:41:15Z"},
	"Q6": {file: "dstack/tdx-lite-getquote.json", version: 4, chainAt: "2026-04-16T00:50:58Z", pckExpiry: "2033-04-16T00:50:58Z"},
	"Q7": {file: "near-mpc/quote.json", version: 4, chainAt: "2025-11-07T07:37:34Z", pckExpiry: "2032-11-07T07:37:34Z",
		collateral: "near-mpc/collateral.json", fullAt: "2026-08-13T10:46:38Z", crls: true, status: TcbUpToDate, pastWindow: "2026-09-12T00:57:11Z"},
	"Q8": {file: "trustee/tdx_quote_4.dat", version: 4, debug: true, chainAt: "2023-02-08T08:02:55Z", pckExpiry: "2030-02-08T08:02:55Z"},
	"Q9": {file: "trustee/tdx_quote_5.dat", version: 5, chainAt: "2024-03-19T08:43:51Z", pckExpiry: "2031-03-19T08:43:51Z",
		collateral: "dcap-qvl/tdx_quote_outdated_collateral.json", fullAt: "2026-02-18T10:59:51Z", crls: true, status: TcbNoMatchingLevel},
	"Q10": {file: "trustee/tdx_quote_6.dat", version: 4, chainAt: "2025-04-09T09:58:52Z", pckExpiry: "2032-04-09T09:58:52Z",
		collateral: "derived/trustee_tdx_quote_6_collateral.json", fullAt: "2025-10-28T06:46:09Z", status: TcbOutOfDate, moduleStatus: TcbUpToDate, pastWindow: "2025-11-26T14:07:17Z"},
	"Q11": {file: "trustee/az-tdx-vtpm_td-quote.bin", version: 4, chainAt: "2023-09-14T21:00:51Z", pckExpiry: "2030-09-14T21:00:51Z",
		collateral: "derived/automata_quote_tdx_collateral.json", fullAt: "2025-07-07T09:21:26Z", status: TcbOutOfDate, pastWindow: "2025-08-06T10:06:43Z"},
	"Q12": {file: "automata/quote_tdx.bin", version: 4, chainAt: "2024-02-15T12:05:18Z", pckExpiry: "2031-02-15T12:05:18Z",
		collateral: "derived/automata_quote_tdx_collateral.json", fullAt: "2025-07-07T09:21:26Z", status: TcbOutOfDate, moduleStatus: TcbUpToDate, pastWindow: "2025-08-06T10:06:43Z"},
	"Q13": {file: "automata/alibaba_quote_5.dat", version: 5, chainAt: "2025-06-15T16:04:26Z", pckExpiry: "2032-06-15T16:04:26Z",
		collateral: "derived/automata_alibaba_quote_5_collateral.json", fullAt: "2025-06-19T10:33:27Z", crls: true, status: TcbUpToDate, pastWindow: "2025-07-05T04:43:45Z"},
	"Q13-outdated-collateral": {file: "automata/alibaba_quote_5.dat", version: 5, chainAt: "2025-06-15T16:04:26Z", pckExpiry: "2032-06-15T16:04:26Z",
		collateral: "dcap-qvl/tdx_quote_outdated_collateral.json", fullAt: "2026-02-18T10:59:51Z", crls: true, status: TcbOutOfDate,
		advisories: []string{"INTEL-SA-01036", "INTEL-SA-01099"}},
}

func TestRealQuotesChainOnly(t *testing.T) {
	for name, tc := range realQuotes {
		t.Run(name, func(t *testing.T) {
			raw := sharedFile(t, tc.file)
			v := NewVerifier(VerifierConfig{})
			ctx := context.Background()
			verdict, err := v.VerifyAt(ctx, raw, mustTime(t, tc.chainAt))
			if err != nil {
				t.Fatalf("chain-only at %s: %v", tc.chainAt, err)
			}
			if verdict.Quote.Version != tc.version || verdict.Quote.Debug() != tc.debug {
				t.Errorf("version %d debug %v, want %d %v", verdict.Quote.Version, verdict.Quote.Debug(), tc.version, tc.debug)
			}
			if verdict.TcbStatus != TcbUnverified || verdict.Mock {
				t.Errorf("status %s mock %v, want Unverified, not mock", verdict.TcbStatus, verdict.Mock)
			}
			// The default policy refuses a chain-only verdict, naming why.
			if err := DefaultPolicy().Evaluate(verdict); !hasReason(err, ReasonTcbNotAllowed) {
				t.Errorf("default policy on an unverified status: %v", err)
			}

			flipped := slices.Clone(raw)
			flipped[reportDataOffset(verdict.Quote)] ^= 1
			if _, err := v.VerifyAt(ctx, flipped, mustTime(t, tc.chainAt)); !errors.Is(err, ErrQuoteSignature) {
				t.Errorf("report_data bit flipped: got %v, want ErrQuoteSignature", err)
			}
			if _, err := v.VerifyAt(ctx, raw, mustTime(t, tc.pckExpiry)); !errors.Is(err, ErrPCKChain) {
				t.Errorf("after PCK notAfter: got %v, want ErrPCKChain", err)
			}
		})
	}
}

func TestRealQuotesWithCollateral(t *testing.T) {
	for name, tc := range realQuotes {
		if tc.collateral == "" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			raw := sharedFile(t, tc.file)
			coll := sharedCollateral(t, tc.collateral)
			v := NewVerifier(VerifierConfig{Collateral: StaticCollateral{coll}, SkipRevocation: !tc.crls})
			ctx := context.Background()
			verdict, err := v.VerifyAt(ctx, raw, mustTime(t, tc.fullAt))
			if err != nil {
				t.Fatalf("full verification at %s: %v", tc.fullAt, err)
			}
			if verdict.TcbStatus != tc.status {
				t.Errorf("tcb status %s (%s), want %s", verdict.TcbStatus, verdict.TcbDetail, tc.status)
			}
			for _, a := range tc.advisories {
				if !slices.Contains(verdict.AdvisoryIDs, a) {
					t.Errorf("advisories %v lack %s", verdict.AdvisoryIDs, a)
				}
			}
			if tc.moduleStatus != "" && verdict.TdxModuleTcbStatus != tc.moduleStatus {
				t.Errorf("TDX module status %s, want %s", verdict.TdxModuleTcbStatus, tc.moduleStatus)
			}
			if !verdict.CollateralChecked || verdict.RevocationChecked != tc.crls {
				t.Errorf("collateral checked %v revocation %v", verdict.CollateralChecked, verdict.RevocationChecked)
			}
			if tc.pastWindow != "" {
				_, err := v.VerifyAt(ctx, raw, mustTime(t, tc.pastWindow))
				if !errors.Is(err, ErrCollateralExpired) {
					t.Errorf("past the collateral window at %s: got %v, want ErrCollateralExpired", tc.pastWindow, err)
				}
			}
			if !tc.crls {
				strict := NewVerifier(VerifierConfig{Collateral: StaticCollateral{coll}})
				if _, err := strict.VerifyAt(ctx, raw, mustTime(t, tc.fullAt)); !errors.Is(err, ErrRevocationRequired) {
					t.Errorf("revocation required without CRLs: got %v", err)
				}
			}
		})
	}
}

func hasReason(err error, reason string) bool {
	for _, v := range Violations(err) {
		if v.Reason == reason {
			return true
		}
	}
	return false
}

// reportDataOffset is where REPORTDATA starts in a raw quote: after the
// 48-byte header (and the 6-byte V5 body descriptor), at body offset 520.
func reportDataOffset(q *Quote) int {
	if q.Version == 5 {
		return 48 + 6 + 520
	}
	return 48 + 520
}

// TestRealQuoteEverySignedByte flips each byte of the signed header and TD
// report body of real quotes (V4 and V5) that pass full verification: every
// flip must turn acceptance into refusal.
func TestRealQuoteEverySignedByte(t *testing.T) {
	for _, name := range []string{"Q1", "Q13"} {
		tc := realQuotes[name]
		t.Run(name, func(t *testing.T) {
			raw := sharedFile(t, tc.file)
			v := NewVerifier(VerifierConfig{Collateral: StaticCollateral{sharedCollateral(t, tc.collateral)}})
			at := mustTime(t, tc.fullAt)
			ctx := context.Background()
			verdict, err := v.VerifyAt(ctx, raw, at)
			if err != nil || DefaultPolicy().Evaluate(verdict) != nil {
				t.Fatalf("unmodified quote not accepted: %v", err)
			}
			for i := range len(verdict.Quote.signed) {
				b := slices.Clone(raw)
				b[i] ^= 0x80
				vd, err := v.VerifyAt(ctx, b, at)
				if err == nil && DefaultPolicy().Evaluate(vd) == nil {
					t.Fatalf("byte %d flipped: still accepted", i)
				}
			}
		})
	}
}
