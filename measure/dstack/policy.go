package dstack

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// Names of dstack's RTMR3 runtime events that identify an app (dstack-util
// measure_app_info and verify_app, Dstack-TEE/dstack
// dstack-util/src/system_setup.rs).
const (
	// EventComposeHash: payload the 32-byte compose hash.
	EventComposeHash = "compose-hash"
	// EventAppID: payload the 20-byte app-id (AppIDWithoutKMS without the KMS).
	EventAppID = "app-id"
	// EventInstanceID: payload 20 bytes that differ per instance, or empty
	// with no_instance_id.
	EventInstanceID = "instance-id"
	// EventKeyProvider: payload the JSON {"name":..., "id":...} of the key
	// provider the CVM got its keys from (the KMS's public key, or the
	// local-sgx provider's MRENCLAVE), as bytes.
	EventKeyProvider = "key-provider"
)

// OSMeasurements are the registers a dstack OS image fixes: the firmware
// (MRTD) and the boot chain (RTMR0-2). RTMR3 holds the app's events.
type OSMeasurements struct {
	MRTD  attest.MRTD
	RTMR0 attest.RTMR
	RTMR1 attest.RTMR
	RTMR2 attest.RTMR
	// Source says which form they were read from.
	Source string
}

// osJSON is the member naming shared by dstack's tcb_info (the guest
// agent's Info, near-mpc's tcb_info.json) and the JSON output of dstack-mr
// (`dstack-mr measure --json`: its TdxMeasurements, hex via
// serde_human_bytes; Dstack-TEE/dstack dstack-mr/src/lib.rs).
type osJSON struct {
	MRTD    *string `json:"mrtd"`
	RTMR0   *string `json:"rtmr0"`
	RTMR1   *string `json:"rtmr1"`
	RTMR2   *string `json:"rtmr2"`
	TcbInfo any     `json:"tcb_info"`
}

// ParseOSMeasurements reads MRTD and RTMR0-2 from a tcb_info.json (or a
// guest agent Info answer whose "tcb_info" is one, as a string), the JSON
// output of dstack-mr, or a quote file in any form attest.DecodeQuoteFile
// reads. A mock quote is refused: it measures no real image.
func ParseOSMeasurements(b []byte) (*OSMeasurements, error) {
	if len(b) > MaxDocumentSize {
		return nil, fmt.Errorf("%d bytes: %w of %d bytes", len(b), ErrTooLarge, MaxDocumentSize)
	}
	m, jerr := osFromJSON(b, 0)
	if m != nil || (jerr != nil && !errors.Is(jerr, errNoMeasurements)) {
		return m, jerr
	}
	raw, err := attest.DecodeQuoteFile(b)
	if err != nil {
		return nil, fmt.Errorf("neither tcb_info or dstack-mr JSON (%v) nor a quote (%v)", jerr, err)
	}
	q, err := attest.ParseQuote(raw)
	if err != nil {
		return nil, fmt.Errorf("neither tcb_info or dstack-mr JSON (%v) nor a quote (%v)", jerr, err)
	}
	if q.Mock {
		return nil, errors.New("a mock quote: it measures no real image")
	}
	return &OSMeasurements{MRTD: q.MRTD, RTMR0: q.RTMR[0], RTMR1: q.RTMR[1], RTMR2: q.RTMR[2], Source: "quote"}, nil
}

var errNoMeasurements = errors.New(`no "mrtd" member`)

func osFromJSON(b []byte, depth int) (*OSMeasurements, error) {
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' {
		return nil, errNoMeasurements
	}
	var j osJSON
	if err := strictjson.UnmarshalKnown(b, &j); err != nil {
		return nil, fmt.Errorf("JSON object: %w", err)
	}
	if j.MRTD == nil {
		if s, ok := j.TcbInfo.(string); ok && depth == 0 {
			m, err := osFromJSON([]byte(s), depth+1)
			if err != nil {
				return nil, fmt.Errorf("tcb_info: %w", err)
			}
			return m, nil
		}
		return nil, errNoMeasurements
	}
	m := &OSMeasurements{Source: "tcb_info/dstack-mr JSON"}
	var errs []error
	for _, f := range []struct {
		key string
		v   *string
		dst []byte
	}{{"mrtd", j.MRTD, m.MRTD[:]}, {"rtmr0", j.RTMR0, m.RTMR0[:]}, {"rtmr1", j.RTMR1, m.RTMR1[:]}, {"rtmr2", j.RTMR2, m.RTMR2[:]}} {
		if f.v == nil {
			errs = append(errs, fmt.Errorf("no %q member", f.key))
			continue
		}
		if err := parseHex(f.dst, *f.v, f.key); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

func parseHex(dst []byte, s, what string) error {
	h := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x")
	if len(h) != 2*len(dst) {
		return fmt.Errorf("%s: want %d hex digits, have %d", what, 2*len(dst), len(h))
	}
	if _, err := hex.Decode(dst, []byte(h)); err != nil {
		return fmt.Errorf("%s: %v", what, err)
	}
	return nil
}

// PolicyOptions shape the policy written for a dstack app.
type PolicyOptions struct {
	// ComposeHashes to admit: one per app version (required).
	ComposeHashes []ComposeHash
	// AppIDs to pin in the app-id event; nil leaves app-id unpinned.
	AppIDs [][20]byte
	// KeyProviders are key-provider payloads (hex) to pin, or ["*"] to
	// require the event's presence only; nil leaves it unpinned.
	KeyProviders []string
	// Events pins more runtime events: name -> payloads (hex) or ["*"].
	// Values for compose-hash, app-id or key-provider add to those above.
	Events map[string][]string
	// OS lists the OS images to admit; each pins MRTD and RTMR0-2. WaiveOS
	// writes ["*"] for them instead; exactly one of the two must be given.
	OS      []OSMeasurements
	WaiveOS bool
	// TcbStatuses and AllowDebug are copied into the policy.
	TcbStatuses []attest.TcbStatus
	AllowDebug  bool
}

// Errors PolicyFor reports for options that cannot make a policy.
var (
	ErrNoCompose = errors.New("dstack: no compose hash: give the app-compose.json of each app version to admit")
	ErrOSChoice  = errors.New("dstack: give the OS measurements to pin (tcb_info, dstack-mr output or a quote) or waive them explicitly, not neither or both")
)

// PolicyFor writes the TeeAdmissionPolicy that admits a dstack app: its
// compose hashes (and app-id, key provider, other events when given) pinned
// as RTMR3 events, and the OS image pinned by MRTD and RTMR0-2.
//
// allowedRtmr3 is ["*"]: RTMR3 differs per instance (the instance-id event),
// so it cannot be pinned as a value. That waives nothing the events pin:
// Policy.Evaluate replays the event log to the quote's RTMR3 before it
// judges an event, so the events pinned are the ones the quote measured.
// acceptMock is always false.
func PolicyFor(o *PolicyOptions) (*attest.Policy, error) {
	if len(o.ComposeHashes) == 0 {
		return nil, ErrNoCompose
	}
	if (len(o.OS) == 0) == !o.WaiveOS {
		return nil, ErrOSChoice
	}
	events := map[string][]string{}
	var errs []error
	add := func(name string, vals ...string) {
		for _, v := range vals {
			if v != attest.Wildcard {
				v = strings.TrimPrefix(strings.ToLower(v), "0x")
			}
			if !slices.Contains(events[name], v) {
				events[name] = append(events[name], v)
			}
		}
	}
	for _, h := range o.ComposeHashes {
		add(EventComposeHash, h.String())
	}
	for _, id := range o.AppIDs {
		add(EventAppID, hex.EncodeToString(id[:]))
	}
	add(EventKeyProvider, o.KeyProviders...)
	for _, name := range slices.Sorted(maps.Keys(o.Events)) {
		add(name, o.Events[name]...)
	}
	for _, name := range slices.Sorted(maps.Keys(events)) {
		if vals := events[name]; len(vals) > 1 && slices.Contains(vals, attest.Wildcard) {
			errs = append(errs, fmt.Errorf("dstack: event %s: \"*\" (presence only) mixed with payloads %v", name, slices.DeleteFunc(slices.Clone(vals), func(v string) bool { return v == attest.Wildcard })))
		}
	}
	if vals := events[EventComposeHash]; slices.Contains(vals, attest.Wildcard) {
		errs = append(errs, errors.New("dstack: compose-hash cannot be \"*\": it is what identifies the app"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	p := &attest.Policy{
		AllowedRtmr3:       []string{attest.Wildcard},
		AllowedTcbStatuses: o.TcbStatuses,
		AllowDebug:         o.AllowDebug,
		Rtmr3Events:        events,
	}
	if o.WaiveOS {
		w := []string{attest.Wildcard}
		p.AllowedMrtd, p.AllowedRtmr0, p.AllowedRtmr1, p.AllowedRtmr2 = w, slices.Clone(w), slices.Clone(w), slices.Clone(w)
	}
	addU := func(l *[]string, s string) {
		if !slices.Contains(*l, s) {
			*l = append(*l, s)
		}
	}
	for _, m := range o.OS {
		addU(&p.AllowedMrtd, m.MRTD.String())
		addU(&p.AllowedRtmr0, m.RTMR0.String())
		addU(&p.AllowedRtmr1, m.RTMR1.String())
		addU(&p.AllowedRtmr2, m.RTMR2.String())
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}
