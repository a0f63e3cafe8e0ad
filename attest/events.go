package attest

import (
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// RuntimeEventType is the event type of RTMR3 runtime events: dstack's
// 0x08000001 (app-id, compose-hash, instance-id, key-provider, ...), which
// fleetbox's own RTMR3 events (fleetbox.profile, fleetbox.config, ...) use too.
const RuntimeEventType = 0x08000001

// MaxEventLog bounds an event log that travels with a quote (in a
// TeeAttestationAnnounce, a KMS request or answer); a dstack log is about
// 20 KB, a CCEL area 64 KiB at most. kms/api.MaxEventLog is the same.
const MaxEventLog = 64 << 10

// Limits on the RTMR3 events a verdict or an admission carries.
const (
	MaxRtmr3Events       = 256
	MaxRtmr3EventName    = 128
	MaxRtmr3EventPayload = 4096
)

// Rtmr3Event is one event of the log that extended RTMR3. A runtime event
// is recorded by name and payload and its digest recomputed; any other
// event by its logged digest alone.
type Rtmr3Event struct {
	Type    uint32   `cbor:"1,keyasint" json:"type"`
	Name    string   `cbor:"2,keyasint,omitempty" json:"name,omitempty"`
	Payload []byte   `cbor:"3,keyasint,omitempty" json:"payload,omitempty"`
	Digest  [48]byte `cbor:"4,keyasint,omitzero" json:"-"`
}

// Extended returns the digest the event extends into RTMR3.
func (e Rtmr3Event) Extended() [48]byte {
	if e.Type == RuntimeEventType {
		return RuntimeEventDigest(e.Type, e.Name, e.Payload)
	}
	return e.Digest
}

// RuntimeEventDigest is the digest of a runtime event as dstack defines it
// (Dstack-TEE/dstack, cc-eventlog): SHA-384(le32(type) || ":" || name || ":"
// || payload).
func RuntimeEventDigest(typ uint32, name string, payload []byte) [48]byte {
	h := sha512.New384()
	var t [4]byte
	binary.LittleEndian.PutUint32(t[:], typ)
	h.Write(t[:])
	h.Write([]byte(":"))
	h.Write([]byte(name))
	h.Write([]byte(":"))
	h.Write(payload)
	var d [48]byte
	h.Sum(d[:0])
	return d
}

// ReplayRtmr3 extends a zero register with each event in order:
// RTMR = SHA-384(RTMR || digest).
func ReplayRtmr3(events []Rtmr3Event) RTMR {
	var r RTMR
	for _, e := range events {
		d := e.Extended()
		h := sha512.New384()
		h.Write(r[:])
		h.Write(d[:])
		h.Sum(r[:0])
	}
	return r
}

// CheckRtmr3Events validates recorded events against the limits.
func CheckRtmr3Events(events []Rtmr3Event) error {
	if len(events) > MaxRtmr3Events {
		return fmt.Errorf("%d rtmr3 events, over the limit of %d", len(events), MaxRtmr3Events)
	}
	for i, e := range events {
		if len(e.Name) > MaxRtmr3EventName || len(e.Payload) > MaxRtmr3EventPayload {
			return fmt.Errorf("rtmr3 event %d: name or payload over the limit (%d, %d bytes)", i, MaxRtmr3EventName, MaxRtmr3EventPayload)
		}
		if e.Type != RuntimeEventType && (e.Name != "" || len(e.Payload) > 0) {
			return fmt.Errorf("rtmr3 event %d: type %#x is not a runtime event but has a name or payload", i, e.Type)
		}
	}
	return nil
}

// Rtmr3EventMap lists the runtime events by name, payloads as hex in log
// order: what verdicts and audit records show of the events checked.
func Rtmr3EventMap(events []Rtmr3Event) map[string][]string {
	out := map[string][]string{}
	for _, e := range events {
		if e.Type == RuntimeEventType {
			out[e.Name] = append(out[e.Name], hex.EncodeToString(e.Payload))
		}
	}
	return out
}

// Reason codes for the rtmr3Events rules.
const (
	ReasonEventLogMissing   = "eventlog_missing"
	ReasonEventLogMismatch  = "eventlog_mismatch"
	ReasonEventMissing      = "rtmr3_event_missing"
	ReasonEventRepeated     = "rtmr3_event_repeated"
	ReasonEventNotAllowed   = "rtmr3_event_not_allowed"
	maxPolicyEventNames     = 256
	maxPolicyEventValueSize = 2 * MaxRtmr3EventPayload
)

// validateEvents checks the rtmr3Events rules: the same shape as the
// register lists (non-empty, "*" alone), names and hex payloads bounded.
func (p *Policy) validateEvents() []error {
	var errs []error
	if p.Rtmr3Events == nil {
		return nil
	}
	if len(p.Rtmr3Events) == 0 {
		return []error{fmt.Errorf("policy: rtmr3Events is empty; name the events to pin or leave it out")}
	}
	if len(p.Rtmr3Events) > maxPolicyEventNames {
		return []error{fmt.Errorf("policy: rtmr3Events names %d events, over the limit of %d", len(p.Rtmr3Events), maxPolicyEventNames)}
	}
	for _, name := range slices.Sorted(maps.Keys(p.Rtmr3Events)) {
		vals := p.Rtmr3Events[name]
		key := "rtmr3Events." + name
		switch {
		case name == "" || len(name) > MaxRtmr3EventName:
			errs = append(errs, fmt.Errorf("policy: rtmr3Events: event name %q is empty or over %d bytes", short(name), MaxRtmr3EventName))
			continue
		case len(vals) == 0:
			errs = append(errs, fmt.Errorf("policy: %s is empty; list allowed payloads or [\"*\"] to require the event's presence only", key))
			continue
		case len(vals) > maxPolicyEntries:
			errs = append(errs, fmt.Errorf("policy: %s has %d entries, over the limit of %d", key, len(vals), maxPolicyEntries))
			continue
		case slices.Contains(vals, Wildcard):
			if len(vals) != 1 {
				errs = append(errs, fmt.Errorf("policy: %s mixes \"*\" with values; \"*\" must stand alone", key))
			}
			continue
		}
		for i, v := range vals {
			h := strings.TrimPrefix(strings.ToLower(v), "0x")
			if len(h) > maxPolicyEventValueSize {
				errs = append(errs, fmt.Errorf("policy: %s[%d] is over %d bytes", key, i, MaxRtmr3EventPayload))
			} else if _, err := hex.DecodeString(h); err != nil {
				errs = append(errs, fmt.Errorf("policy: %s[%d] %q is not hex (payloads are pinned as hex)", key, i, short(v)))
			}
		}
	}
	return errs
}

// evaluateEvents judges the pinned events: the verdict must carry the RTMR3
// events of an event log, they must replay to the quote's RTMR3 (checked
// here again, so that a recorded admission rechecks without trusting who
// recorded it), and each pinned event must occur once with an allowed
// payload.
func (p *Policy) evaluateEvents(v *Verdict) []error {
	if len(p.Rtmr3Events) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(p.Rtmr3Events))
	if !v.EventLogChecked {
		return []error{&Violation{ReasonEventLogMissing, fmt.Sprintf("policy pins rtmr3Events (%s) but the quote came without an event log", strings.Join(names, ", "))}}
	}
	if err := CheckRtmr3Events(v.Rtmr3Events); err != nil {
		return []error{&Violation{ReasonEventLogMismatch, err.Error()}}
	}
	if got := ReplayRtmr3(v.Rtmr3Events); got != v.Quote.RTMR[3] {
		return []error{&Violation{ReasonEventLogMismatch, fmt.Sprintf("rtmr3: the %d events replay to %s, the quote shows %s",
			len(v.Rtmr3Events), short(got.String()), short(v.Quote.RTMR[3].String()))}}
	}
	var errs []error
	for _, name := range names {
		allowed := p.Rtmr3Events[name]
		var payloads [][]byte
		for _, e := range v.Rtmr3Events {
			if e.Type == RuntimeEventType && e.Name == name {
				payloads = append(payloads, e.Payload)
			}
		}
		switch {
		case len(payloads) == 0:
			errs = append(errs, &Violation{ReasonEventMissing, fmt.Sprintf("rtmr3 event %s is not in the event log", name)})
			continue
		case len(payloads) > 1:
			errs = append(errs, &Violation{ReasonEventRepeated, fmt.Sprintf("rtmr3 event %s occurs %d times; rtmr3Events.%s requires exactly one", name, len(payloads), name)})
			continue
		case len(allowed) == 1 && allowed[0] == Wildcard:
			continue
		}
		h := hex.EncodeToString(payloads[0])
		if !slices.ContainsFunc(allowed, func(a string) bool { return strings.TrimPrefix(strings.ToLower(a), "0x") == h }) {
			errs = append(errs, &Violation{ReasonEventNotAllowed, fmt.Sprintf("rtmr3 event %s %s not in rtmr3Events.%s", name, short(h), name)})
		}
	}
	return errs
}

func (p *Policy) normalizeEvents() {
	for _, vals := range p.Rtmr3Events {
		for i, v := range vals {
			if v != Wildcard {
				vals[i] = strings.TrimPrefix(strings.ToLower(v), "0x")
			}
		}
	}
}
