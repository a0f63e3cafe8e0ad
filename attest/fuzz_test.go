package attest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/testing/testdata"
)

// seedFiles adds every shared sample matching the globs to f's corpus.
func seedFiles(f *testing.F, globs ...string) {
	for _, g := range globs {
		paths, _ := filepath.Glob(filepath.Join(sharedTDX, g))
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
}

// FuzzParseQuote: no input may panic the parser or the verifier, and
// whatever parses must verify or fail cleanly.
func FuzzParseQuote(f *testing.F) {
	f.Add(testdata.RawQuote)
	f.Add(testdata.RawQuoteV5)
	f.Add(MockQuote{MRTD: MRTD{1}}.Encode(ReportData{2}))
	seedFiles(f, "*/*.dat", "*/*.bin", "dcap-qvl/tdx_quote*")
	v := NewVerifier(VerifierConfig{})
	at := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			return
		}
		if q.Hash == (QuoteHash{}) {
			t.Fatal("parsed quote without a hash")
		}
		_, _ = v.VerifyAt(context.Background(), b, at)
	})
}

// FuzzDecodeQuoteFile covers the file forms quotes are published in.
func FuzzDecodeQuoteFile(f *testing.F) {
	seedFiles(f, "dcap-qvl/*.hex", "dcap-qvl/*.txt", "dstack/*.json", "near-mpc/quote.json")
	f.Add([]byte(`{"quote":"0x0400"}`))
	f.Add([]byte(`[4,0,2,0]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = DecodeQuoteFile(b)
	})
}

// FuzzParseCollateralJSON: parsing and verifying untrusted collateral.
func FuzzParseCollateralJSON(f *testing.F) {
	seedFiles(f, "*/*collateral*.json")
	f.Add([]byte(`{"tcb_info":"{}","qe_identity":"{}"}`))
	v := NewVerifier(VerifierConfig{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCollateralJSON(b)
		if err != nil {
			return
		}
		_, _ = v.checkCollateral(c)
		_ = c.Expiry()
	})
}

// FuzzParsePolicy: a policy that parses must validate and evaluate.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(policyJSON()))
	f.Add([]byte(policyJSON(`allowedTcbStatuses=["UpToDate","OutOfDate"]`, `acceptMock=true`)))
	f.Add([]byte(`{"allowedMrtd":["*"]}`))
	f.Add([]byte(policyJSON(`rtmr3Events={"compose-hash":["2911e1f7"],"key-provider":["*"]}`)))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed policy does not validate: %v", err)
		}
		evs := []Rtmr3Event{{Type: RuntimeEventType, Name: "compose-hash", Payload: []byte{0x29, 0x11, 0xe1, 0xf7}}}
		q := &Quote{}
		q.RTMR[3] = ReplayRtmr3(evs)
		for _, v := range Violations(p.Evaluate(&Verdict{Quote: q, TcbStatus: TcbUpToDate, EventLogChecked: true, Rtmr3Events: evs})) {
			if v.Reason == ReasonPolicyInvalid {
				t.Fatal("parsed policy is invalid at evaluation")
			}
		}
	})
}
