// Package strictjson is the one JSON decoder fleetbox uses for untrusted or
// security-relevant input (policies, KMS and admin API bodies, node config,
// collateral, measurements files, audit records).
//
// encoding/json matches member names case-insensitively and lets the last of
// duplicate members win, and its unknown-field check catches neither: a
// policy reading {"acceptMock": false, "acceptmock": true} accepts mock
// quotes there, and whoever reads the stored bytes sees a rule that does not
// apply. This package decodes with github.com/go-json-experiment/json (the
// design that became Go's encoding/json/v2), which by default refuses
// duplicate member names, matches names exactly as the struct tags spell
// them, and refuses invalid UTF-8 and trailing data; Unmarshal additionally
// refuses members the Go type does not name.
package strictjson

import (
	"errors"
	"fmt"
	"io"

	json "github.com/go-json-experiment/json"
)

// ErrTooLarge is wrapped when input exceeds its limit.
var ErrTooLarge = errors.New("JSON input too large")

// Unmarshal decodes exactly one JSON value from data into v. It refuses
// duplicate member names, member names not spelled exactly as v's fields,
// members v does not name, invalid UTF-8 and trailing data. On error v may be
// partly filled: discard it.
func Unmarshal(data []byte, v any) error {
	return json.Unmarshal(data, v, json.RejectUnknownMembers(true))
}

// UnmarshalKnown is Unmarshal for documents whose publishers add members of
// their own (Intel's signed TCB Info, dcap-qvl collateral files, answers of
// a newer server): unknown members are skipped, but duplicate members and
// names not spelled exactly are still refused, so a known field can never be
// given twice or under another spelling.
func UnmarshalKnown(data []byte, v any) error {
	return json.Unmarshal(data, v)
}

// Read reads at most limit bytes from r and decodes them with Unmarshal.
// Input over limit fails with an error wrapping ErrTooLarge (and, for an
// http.MaxBytesReader, the *http.MaxBytesError it returned).
func Read(r io.Reader, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return fmt.Errorf("reading JSON: %w", err)
	}
	if int64(len(data)) > limit {
		return fmt.Errorf("%w: over the %d-byte limit", ErrTooLarge, limit)
	}
	return Unmarshal(data, v)
}
