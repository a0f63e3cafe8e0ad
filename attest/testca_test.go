package attest_test

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/verify"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
)

var now = attesttest.Epoch

func TestTestCAStatuses(t *testing.T) {
	ca := attesttest.NewCA(t)
	p := ca.NewPlatform(t, attesttest.DefaultPlatform)
	raw := p.Quote(t, attesttest.QuoteOptions{MRTD: attest.MRTD{1}})
	cases := map[attest.TcbStatus][]string{
		attest.TcbUpToDate:                          nil,
		attest.TcbSWHardeningNeeded:                 {"INTEL-SA-TEST-0001"},
		attest.TcbConfigurationNeeded:               {"INTEL-SA-TEST-0001"},
		attest.TcbConfigurationAndSWHardeningNeeded: {"INTEL-SA-TEST-0001"},
		attest.TcbOutOfDate:                         {"INTEL-SA-TEST-0001"},
		attest.TcbOutOfDateConfigurationNeeded:      {"INTEL-SA-TEST-0001"},
		attest.TcbRevoked:                           {"INTEL-SA-TEST-0001"},
		attest.TcbNoMatchingLevel:                   nil,
	}
	for status, adv := range cases {
		t.Run(string(status), func(t *testing.T) {
			coll := ca.Collateral(t, attesttest.CollateralOptions{Levels: attesttest.LevelsFor(status)})
			v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, now))
			verdict, err := v.Verify(context.Background(), raw)
			if err != nil {
				t.Fatal(err)
			}
			if verdict.TcbStatus != status || !slices.Equal(verdict.AdvisoryIDs, adv) {
				t.Errorf("status %s %v, want %s %v", verdict.TcbStatus, verdict.AdvisoryIDs, status, adv)
			}
			if !verdict.RevocationChecked || !verdict.CollateralChecked {
				t.Error("collateral or revocation not checked")
			}
			// The default policy accepts UpToDate only; Revoked is refused
			// even by a policy that lists every other status.
			pol := attest.DefaultPolicy()
			err = pol.Evaluate(verdict)
			if (err == nil) != (status == attest.TcbUpToDate) {
				t.Errorf("default policy: %v", err)
			}
			pol.AllowedTcbStatuses = slices.DeleteFunc(slices.Clone(attest.IntelStatuses), func(s attest.TcbStatus) bool { return s == attest.TcbRevoked })
			err = pol.Evaluate(verdict)
			if (err == nil) != (status != attest.TcbRevoked && status != attest.TcbNoMatchingLevel) {
				t.Errorf("permissive policy on %s: %v", status, err)
			}
		})
	}
}

func TestTestCAQEAndModuleStatus(t *testing.T) {
	ca := attesttest.NewCA(t)
	ctx := context.Background()
	cases := map[string]struct {
		qesvn  uint16
		svn    attest.TeeTcbSvn
		status attest.TcbStatus
		module attest.TcbStatus
	}{
		"qe up to date":           {qesvn: 8, svn: attest.TeeTcbSvn{3}, status: attest.TcbUpToDate},
		"qe out of date":          {qesvn: 4, svn: attest.TeeTcbSvn{3}, status: attest.TcbOutOfDate},
		"tdx 1.5 module current":  {qesvn: 8, svn: attest.TeeTcbSvn{2, 1}, status: attest.TcbUpToDate, module: attest.TcbUpToDate},
		"tdx 1.5 module outdated": {qesvn: 8, svn: attest.TeeTcbSvn{1, 1}, status: attest.TcbOutOfDate, module: attest.TcbOutOfDate},
		// As in Intel's QVL (TDX_MODULE_MISMATCH): no identity to check
		// MRSIGNERSEAM against, so the quote does not match its collateral.
		"tdx 1.5 unknown module":  {qesvn: 8, svn: attest.TeeTcbSvn{2, 7}},
		"tdx 1.0 ignores modules": {qesvn: 8, svn: attest.TeeTcbSvn{1, 0}, status: attest.TcbUpToDate},
		"qe at the oldest level":  {qesvn: 0, svn: attest.TeeTcbSvn{3}, status: attest.TcbOutOfDate},
	}
	coll := ca.Collateral(t, attesttest.CollateralOptions{})
	v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, now))
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := ca.NewPlatform(t, attesttest.DefaultPlatform)
			p.QESVN = tc.qesvn
			p.Resign(t)
			svn := tc.svn
			raw := p.Quote(t, attesttest.QuoteOptions{TeeTcbSvn: &svn})
			verdict, err := v.Verify(ctx, raw)
			if tc.status == "" {
				if !errors.Is(err, attest.ErrPlatformMismatch) {
					t.Fatalf("verify: %v, want ErrPlatformMismatch", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if verdict.TcbStatus != tc.status || verdict.TdxModuleTcbStatus != tc.module {
				t.Errorf("status %s module %s (%s), want %s module %s", verdict.TcbStatus, verdict.TdxModuleTcbStatus, verdict.TcbDetail, tc.status, tc.module)
			}
		})
	}
}

func TestTestCARefusals(t *testing.T) {
	ca := attesttest.NewCA(t)
	p := ca.NewPlatform(t, attesttest.DefaultPlatform)
	raw := p.Quote(t, attesttest.QuoteOptions{MRTD: attest.MRTD{1}, ReportData: attest.ReportData{2}})
	coll := ca.Collateral(t, attesttest.CollateralOptions{})
	ctx := context.Background()
	cfg := ca.VerifierConfig(attest.StaticCollateral{C: coll}, now)

	t.Run("intel root refuses the test chain", func(t *testing.T) {
		v := attest.NewVerifier(attest.VerifierConfig{Now: func() time.Time { return now }})
		if _, err := v.Verify(ctx, raw); !errors.Is(err, attest.ErrPCKChain) {
			t.Fatalf("got %v, want ErrPCKChain", err)
		}
	})
	t.Run("revoked PCK", func(t *testing.T) {
		revoked := ca.Collateral(t, attesttest.CollateralOptions{RevokedPlatforms: []*attesttest.Platform{p}})
		v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: revoked}, now))
		if _, err := v.Verify(ctx, raw); !errors.Is(err, attest.ErrRevoked) {
			t.Fatalf("got %v, want ErrRevoked", err)
		}
	})
	t.Run("collateral past nextUpdate", func(t *testing.T) {
		late := cfg
		late.Now = func() time.Time { return now.AddDate(0, 0, 31) }
		if _, err := attest.NewVerifier(late).Verify(ctx, raw); !errors.Is(err, attest.ErrCollateralExpired) {
			t.Fatalf("got %v, want ErrCollateralExpired", err)
		}
	})
	t.Run("collateral not yet issued", func(t *testing.T) {
		early := cfg
		early.Now = func() time.Time { return now.Add(-2 * time.Hour) }
		if _, err := attest.NewVerifier(early).Verify(ctx, raw); !errors.Is(err, attest.ErrCollateralInvalid) {
			t.Fatalf("got %v, want ErrCollateralInvalid", err)
		}
	})
	t.Run("other platform's collateral", func(t *testing.T) {
		other := ca.Collateral(t, attesttest.CollateralOptions{FMSPC: attest.FMSPC{0x90, 0xc0, 0x6f}})
		v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: other}, now))
		if _, err := v.Verify(ctx, raw); !errors.Is(err, attest.ErrPlatformMismatch) {
			t.Fatalf("got %v, want ErrPlatformMismatch", err)
		}
	})
	t.Run("collateral signed by another CA", func(t *testing.T) {
		forged := attesttest.NewCA(t).Collateral(t, attesttest.CollateralOptions{})
		v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: forged}, now))
		if _, err := v.Verify(ctx, raw); !errors.Is(err, attest.ErrCollateralInvalid) {
			t.Fatalf("got %v, want ErrCollateralInvalid", err)
		}
	})
	t.Run("every signed byte flipped", func(t *testing.T) {
		v := attest.NewVerifier(cfg)
		if _, err := v.Verify(ctx, raw); err != nil {
			t.Fatal(err)
		}
		// header (48) + TD report body (584): each single-byte change must
		// make verification fail (or the bytes fail to parse).
		for i := range 48 + 584 {
			b := slices.Clone(raw)
			b[i] ^= 0x01
			if verdict, err := v.Verify(ctx, b); err == nil {
				t.Fatalf("byte %d flipped: accepted with status %s", i, verdict.TcbStatus)
			}
		}
	})
}

// TestGoTdxGuestAcceptsTestCAQuotes cross-checks the test CA's format with an
// independent verifier: go-tdx-guest verifies the same quote and collateral
// once given the test root.
func TestGoTdxGuestAcceptsTestCAQuotes(t *testing.T) {
	ca := attesttest.NewCA(t)
	p := ca.NewPlatform(t, attesttest.DefaultPlatform)
	raw := p.Quote(t, attesttest.QuoteOptions{MRTD: attest.MRTD{7}})
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root)
	ts := &verify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now}
	if err := verify.RawTdxQuote(raw, &verify.Options{TrustedRoots: pool, Now: ts}); err != nil {
		t.Fatalf("go-tdx-guest chain-only: %v", err)
	}
	if err := verify.RawTdxQuote(raw, &verify.Options{Now: ts}); err == nil {
		t.Fatal("go-tdx-guest accepted a test-CA quote under the Intel root")
	}
}

// The TDX module is checked against the identity of its own major version
// (TDX_<major>) and must have zero SEAMATTRIBUTES, as in Intel's QVL; before,
// a TDX 1.5 module was checked against the top-level tdxModule only, and
// SEAMATTRIBUTES were only compared under the collateral's mask.
func TestTDXModuleIdentityChecks(t *testing.T) {
	ca := attesttest.NewCA(t)
	p := ca.NewPlatform(t, attesttest.DefaultPlatform)
	other := [48]byte{0xee}
	tdx15 := attest.TeeTcbSvn{2, 1}
	cases := map[string]struct {
		coll attesttest.CollateralOptions
		q    attesttest.QuoteOptions
		ok   bool
	}{
		"tdx 1.5, module identity's signer":    {q: attesttest.QuoteOptions{TeeTcbSvn: &tdx15}, ok: true},
		"tdx 1.5, another module signer":       {coll: attesttest.CollateralOptions{ModuleSigner: &other}, q: attesttest.QuoteOptions{TeeTcbSvn: &tdx15}},
		"tdx 1.0 ignores module identities":    {coll: attesttest.CollateralOptions{ModuleSigner: &other}, ok: true},
		"seam attributes outside the mask":     {coll: attesttest.CollateralOptions{ModuleAttributesMask: "0000000000000000"}, q: attesttest.QuoteOptions{SeamAttributes: [8]byte{1}}},
		"tdx 1.5 seam attributes outside mask": {coll: attesttest.CollateralOptions{ModuleAttributesMask: "0000000000000000"}, q: attesttest.QuoteOptions{TeeTcbSvn: &tdx15, SeamAttributes: [8]byte{0, 0, 0, 0, 0, 0, 0, 0x80}}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: ca.Collateral(t, tc.coll)}, now))
			_, err := v.Verify(context.Background(), p.Quote(t, tc.q))
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errors.Is(err, attest.ErrPlatformMismatch) {
				t.Fatalf("verify: %v, want ErrPlatformMismatch", err)
			}
		})
	}
}

// A TD on an OutOfDate TDX module whose platform has since been updated
// (TEE_TCB_SVN_2 of a TDX 1.5 TD report meets the newest levels) is told to
// relaunch, as Intel's QVL reports it, instead of OutOfDate; a policy can
// allow the status by name.
func TestTDRelaunchAdvised(t *testing.T) {
	ca := attesttest.NewCA(t)
	p := ca.NewPlatform(t, attesttest.DefaultPlatform)
	outdatedModule := attest.TeeTcbSvn{1, 1} // TDX_01 module ISVSVN 1: OutOfDate
	updated := attest.TeeTcbSvn{2, 1}        // after a TD-preserving update: ISVSVN 2, current
	notUpdated := attest.TeeTcbSvn{1, 1}     // the platform was not updated
	cases := map[string]struct {
		levels []attesttest.Level
		svn2   *attest.TeeTcbSvn
		want   attest.TcbStatus
	}{
		"updated platform":                 {attesttest.LevelsFor(attest.TcbUpToDate), &updated, attest.TcbTDRelaunchAdvised},
		"updated platform, config needed":  {attesttest.LevelsFor(attest.TcbConfigurationNeeded), &updated, attest.TcbTDRelaunchAdvisedConfigurationNeeded},
		"platform not updated":             {attesttest.LevelsFor(attest.TcbUpToDate), &notUpdated, attest.TcbOutOfDate},
		"V4 quote (no TEE_TCB_SVN_2)":      {attesttest.LevelsFor(attest.TcbUpToDate), nil, attest.TcbOutOfDate},
		"SGX TCB out of date: no relaunch": {attesttest.LevelsFor(attest.TcbOutOfDate), &updated, attest.TcbOutOfDate},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: ca.Collateral(t, attesttest.CollateralOptions{Levels: tc.levels})}, now))
			raw := p.Quote(t, attesttest.QuoteOptions{TeeTcbSvn: &outdatedModule, TeeTcbSvn2: tc.svn2})
			verdict, err := v.Verify(context.Background(), raw)
			if err != nil {
				t.Fatal(err)
			}
			if verdict.TcbStatus != tc.want || verdict.TdxModuleTcbStatus != attest.TcbOutOfDate {
				t.Fatalf("status %s (module %s), want %s", verdict.TcbStatus, verdict.TdxModuleTcbStatus, tc.want)
			}
			if tc.svn2 != nil && (verdict.Quote.Version != 5 || *verdict.Quote.TeeTcbSvn2 != *tc.svn2) {
				t.Fatalf("quote version %d, TEE_TCB_SVN_2 %v", verdict.Quote.Version, verdict.Quote.TeeTcbSvn2)
			}
		})
	}
	// The default policy refuses it; one that names it admits it.
	pol, err := attest.ParsePolicy([]byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"allowedTcbStatuses":["UpToDate","TDRelaunchAdvised"]}`))
	if err != nil {
		t.Fatal(err)
	}
	v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: ca.Collateral(t, attesttest.CollateralOptions{})}, now))
	verdict, err := v.Verify(context.Background(), p.Quote(t, attesttest.QuoteOptions{TeeTcbSvn: &outdatedModule, TeeTcbSvn2: &updated}))
	if err != nil {
		t.Fatal(err)
	}
	if err := pol.Evaluate(verdict); err != nil {
		t.Fatalf("a policy allowing TDRelaunchAdvised refused it: %v", err)
	}
	if err := attest.DefaultPolicy().Evaluate(verdict); err == nil {
		t.Fatal("the default policy admitted TDRelaunchAdvised")
	}
}
