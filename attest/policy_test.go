package attest

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const (
	hexA = "aa5e1f" + "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
	hexB = "bb" + "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)

func policyJSON(fields ...string) string {
	base := map[string]string{
		"allowedMrtd": `["` + hexA + `"]`, "allowedRtmr0": `["*"]`, "allowedRtmr1": `["*"]`,
		"allowedRtmr2": `["*"]`, "allowedRtmr3": `["*"]`,
	}
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		if v == "" {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
	var parts []string
	for k, v := range base {
		parts = append(parts, `"`+k+`":`+v)
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

func TestParsePolicy(t *testing.T) {
	cases := map[string]struct {
		doc     string
		wantErr string // a fragment the error must name; "" means valid
	}{
		"valid":                 {policyJSON(), ""},
		"0x and upper case":     {policyJSON(`allowedMrtd=["0x` + strings.ToUpper(hexA) + `"]`), ""},
		"statuses":              {policyJSON(`allowedTcbStatuses=["UpToDate","SWHardeningNeeded"]`), ""},
		"empty register list":   {policyJSON(`allowedRtmr2=[]`), "allowedRtmr2 is empty"},
		"missing register list": {policyJSON(`allowedRtmr1=`), "allowedRtmr1 is empty"},
		"wildcard mixed":        {policyJSON(`allowedRtmr0=["*","` + hexA + `"]`), "mixes"},
		"short hex":             {policyJSON(`allowedMrtd=["abcd"]`), "allowedMrtd[0]"},
		"not hex":               {policyJSON(`allowedRtmr3=["` + strings.Repeat("zz", 48) + `"]`), "allowedRtmr3[0]"},
		"revoked listed":        {policyJSON(`allowedTcbStatuses=["Revoked"]`), "Revoked"},
		"unknown status":        {policyJSON(`allowedTcbStatuses=["Fine"]`), "unknown status"},
		"unknown field":         {policyJSON(`allowedMrSeam=["*"]`), `unknown object member name "allowedMrSeam"`},
		"trailing data":         {policyJSON() + "{}", "after top-level value"},
		// encoding/json read these as acceptMock: true and allowedMrtd ["*"].
		"key in another case":      {strings.TrimSuffix(policyJSON(`acceptMock=false`), "}") + `,"acceptmock":true}`, `"acceptmock"`},
		"duplicate key":            {strings.TrimSuffix(policyJSON(), "}") + `,"allowedMrtd":["*"]}`, `duplicate object member name "allowedMrtd"`},
		"duplicate key, same case": {strings.TrimSuffix(policyJSON(`acceptMock=false`), "}") + `,"acceptMock":true}`, `duplicate object member name "acceptMock"`},
		"not json":                 {"allowedMrtd: *", "policy"},
		"oversize":                 {`{"allowedMrtd":["` + strings.Repeat("a", MaxPolicySize) + `"]}`, "limit"},
		"all errors at once":       {policyJSON(`allowedRtmr0=[]`, `allowedRtmr1=[]`), "allowedRtmr1"},
		"acceptMock wrong type":    {policyJSON(`acceptMock="yes"`), "acceptMock"},
		"duplicate-free is fine":   {policyJSON(`allowedMrtd=["` + hexA + `","` + hexB + `"]`), ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tc.doc))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if p.AllowedMrtd[0] != hexA {
					t.Fatalf("not normalised: %q", p.AllowedMrtd[0])
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
		})
	}
}

func TestEvaluateReportsEveryRule(t *testing.T) {
	p, err := ParsePolicy([]byte(policyJSON(`allowedRtmr2=["` + hexB + `"]`)))
	if err != nil {
		t.Fatal(err)
	}
	q := &Quote{TDAttributes: TDAttributes{1}}
	q.MRTD[0] = 0x11
	q.RTMR[2][0] = 0x5e
	v := &Verdict{Quote: q, TcbStatus: TcbOutOfDate}
	err = p.Evaluate(v)
	var got []string
	for _, vi := range Violations(err) {
		got = append(got, vi.Reason)
	}
	want := []string{ReasonDebugNotAllowed, ReasonMrtdNotAllowed, "rtmr2_not_allowed", ReasonTcbNotAllowed}
	if !slices.Equal(got, want) {
		t.Fatalf("reasons %v, want %v (%v)", got, want, err)
	}
	if !strings.Contains(err.Error(), "rtmr2 5e000000…0000 not in allowedRtmr2") {
		t.Errorf("message does not name the register and the value: %v", err)
	}
	var vi *Violation
	if !errors.As(err, &vi) {
		t.Fatal("errors.As finds no *Violation")
	}

	// Fixing every rule clears every violation.
	q.TDAttributes, q.MRTD[0] = TDAttributes{}, 0xaa
	q.MRTD[1], q.MRTD[2] = 0x5e, 0x1f
	q.RTMR[2] = RTMR{}
	q.RTMR[2][0] = 0xbb
	v.TcbStatus = TcbUpToDate
	if err := p.Evaluate(v); err != nil {
		t.Fatal(err)
	}
	// Revoked is refused even when someone edits a validated policy.
	p.AllowedTcbStatuses = []TcbStatus{TcbUpToDate}
	v.TcbStatus = TcbRevoked
	if err := p.Evaluate(v); !strings.Contains(err.Error(), "Revoked") {
		t.Fatalf("revoked: %v", err)
	}
	p.AllowedTcbStatuses = []TcbStatus{TcbRevoked}
	if vs := Violations(p.Evaluate(v)); len(vs) != 1 || vs[0].Reason != ReasonPolicyInvalid {
		t.Fatalf("a policy listing Revoked must not evaluate: %v", vs)
	}
}
