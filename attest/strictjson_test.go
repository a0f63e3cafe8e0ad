package attest_test

import (
	"bytes"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
)

// Every JSON decoder in attest refuses a key given twice or spelled in
// another case: encoding/json took the last one, or the miscased one.
func TestJSONDecodersRefuseAmbiguousKeys(t *testing.T) {
	ca := attesttest.NewCA(t)
	coll := ca.CollateralJSON(t, attesttest.CollateralOptions{})
	if _, err := attest.ParseCollateralJSON(coll); err != nil {
		t.Fatalf("valid collateral: %v", err)
	}
	// A second tcb_info (the first stays: same bytes, only the key doubles).
	i := bytes.Index(coll, []byte(`"tcb_info":`))
	j := bytes.Index(coll[i+1:], []byte(`,"`)) + i + 1
	dupTcb := append(append(append([]byte{}, coll[:j]...), ","+string(coll[i:j])...), coll[j:]...)
	cases := map[string]struct {
		parse func([]byte) error
		in    []byte
	}{
		"collateral: tcb_info twice": {func(b []byte) error { _, err := attest.ParseCollateralJSON(b); return err }, dupTcb},
		"collateral: TCB_INFO": {func(b []byte) error { _, err := attest.ParseCollateralJSON(b); return err },
			bytes.Replace(coll, []byte(`"qe_identity":`), []byte(`"QE_IDENTITY":`), 1)},
		"quote file: quote twice": {func(b []byte) error { _, err := attest.DecodeQuoteFile(b); return err },
			[]byte(`{"quote":"0400","quote":"0500"}`)},
		"quote file: Quote": {func(b []byte) error { _, err := attest.DecodeQuoteFile(b); return err },
			[]byte(`{"Quote":"0400"}`)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := tc.parse(tc.in); err == nil {
				t.Fatalf("accepted %.80q", tc.in)
			}
		})
	}
}
