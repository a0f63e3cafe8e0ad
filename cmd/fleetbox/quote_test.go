package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/fleetbox/fleetbox/attest"
)

const shared = "../../../shared/testdata/tdx/"

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func needShared(t *testing.T) {
	if _, err := os.Stat(shared); err != nil {
		t.Skipf("shared test data not present beside the repository: %v", err)
	}
}

func writeTemp(t *testing.T, name string, b []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestQuoteVerifyCLI(t *testing.T) {
	needShared(t)
	q1, coll := shared+"dcap-qvl/tdx_quote", shared+"dcap-qvl/tdx_quote_collateral.json"
	raw, _ := os.ReadFile(q1)
	flipped := slices.Clone(raw)
	flipped[48+520] ^= 1
	mock := attest.MockQuote{MRTD: attest.MockMeasurement("demo")}.Encode(attest.ReportData{})
	mockPolicy := `{"allowedMrtd":["` + attest.MRTD(attest.MockMeasurement("demo")).String() + `"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`

	cases := map[string]struct {
		args    []string
		code    int
		reason  string // a reason code the verdict must carry
		stderrs string
	}{
		"accepted with collateral": {args: []string{q1, "--collateral", coll, "--at", "2025-06-19T10:33:27Z"}, code: exitOK},
		// Collateral failures say so, not attestation_invalid as a forged quote.
		"after nextUpdate":          {args: []string{q1, "--collateral", coll, "--at", "2025-07-19T11:00:35Z"}, code: exitNo, reason: "collateral_expired"},
		"before issueDate":          {args: []string{q1, "--collateral", coll, "--at", "2025-06-19T10:00:00Z"}, code: exitNo, reason: "collateral_not_yet_valid"},
		"no collateral":             {args: []string{q1, "--at", "2025-06-19T10:33:27Z"}, code: exitNo, reason: "tcb_status_not_allowed"},
		"report_data flipped":       {args: []string{writeTemp(t, "q", flipped), "--collateral", coll, "--at", "2025-06-19T10:33:27Z"}, code: exitNo, reason: "attestation_invalid"},
		"debug td":                  {args: []string{shared + "trustee/tdx_quote_4.dat", "--at", "2023-02-08T08:02:55Z"}, code: exitNo, reason: "debug_not_allowed"},
		"outdated platform":         {args: []string{shared + "trustee/az-tdx-vtpm_td-quote.bin", "--collateral", shared + "derived/automata_quote_tdx_collateral.json", "--no-revocation", "--at", "2025-07-07T09:21:26Z"}, code: exitNo, reason: "tcb_status_not_allowed"},
		"crls required":             {args: []string{shared + "automata/quote_tdx.bin", "--collateral", shared + "derived/automata_quote_tdx_collateral.json", "--at", "2025-07-07T09:21:26Z"}, code: exitNo, reason: "collateral_no_crls"},
		"mock refused by default":   {args: []string{writeTemp(t, "m", mock)}, code: exitNo, reason: "mock_not_accepted", stderrs: "MOCK"},
		"mock accepted by policy":   {args: []string{writeTemp(t, "m", mock), "--policy", writeTemp(t, "p.json", []byte(mockPolicy))}, code: exitOK, stderrs: "MOCK"},
		"json array form":           {args: []string{shared + "near-mpc/quote.json", "--collateral", shared + "near-mpc/collateral.json", "--at", "2026-08-13T10:46:38Z"}, code: exitOK},
		"hex text form":             {args: []string{shared + "dcap-qvl/near-gas-test_quote_hex.txt", "--collateral", shared + "dcap-qvl/near-gas-test_quote_collateral.json", "--at", "2025-09-02T07:42:59Z"}, code: exitOK},
		"missing file":              {args: []string{"/nonexistent"}, code: exitUsage},
		"not a quote":               {args: []string{writeTemp(t, "x", []byte("hello"))}, code: exitUsage},
		"bad time":                  {args: []string{q1, "--at", "yesterday"}, code: exitUsage},
		"invalid policy":            {args: []string{q1, "--policy", writeTemp(t, "p.json", []byte(`{"allowedMrtd":[]}`))}, code: exitUsage},
		"exclusive collateral args": {args: []string{q1, "--collateral", coll, "--collateral-cache", t.TempDir()}, code: exitUsage},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, out, stderr := runCLI(t, append([]string{"quote", "verify"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", code, tc.code, out, stderr)
			}
			if !strings.Contains(stderr, tc.stderrs) {
				t.Errorf("stderr %q lacks %q", stderr, tc.stderrs)
			}
			if code == exitUsage {
				return
			}
			var v verdictJSON
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("output is not a verdict: %v\n%s", err, out)
			}
			if v.Accepted != (code == exitOK) {
				t.Errorf("accepted %v with exit %d", v.Accepted, code)
			}
			if tc.reason != "" && !slices.Contains(v.ReasonCodes, tc.reason) {
				t.Errorf("reasons %v lack %s", v.Reasons, tc.reason)
			}
		})
	}
}

// TestQuoteInspectFreshClone uses go-tdx-guest's sample, which every
// machine that builds fleetbox has.
func TestQuoteInspectFreshClone(t *testing.T) {
	code, out, stderr := runCLI(t, "quote", "inspect", writeTemp(t, "q", testdata.RawQuote))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "mrtd", "rtmr", "reportData", "mrConfigId", "tdAttributes", "debug", "fmspc", "teeTcbSvn", "quoteHash"} {
		if _, ok := m[k]; !ok {
			t.Errorf("inspect output lacks %q", k)
		}
	}
	if m["fmspc"] != "50806f000000" || m["version"] != float64(4) {
		t.Errorf("fmspc %v version %v", m["fmspc"], m["version"])
	}
	if code, _, _ := runCLI(t, "quote", "inspect"); code != exitUsage {
		t.Errorf("no file: exit %d", code)
	}
}
