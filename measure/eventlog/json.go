package eventlog

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// jsonEvent is one event in dstack's JSON event log.
type jsonEvent struct {
	IMR          *int    `json:"imr"`
	EventType    *uint32 `json:"event_type"`
	Digest       string  `json:"digest"`
	Event        string  `json:"event"`
	EventPayload string  `json:"event_payload"`
}

// ParseJSON parses dstack's JSON event log: an array of events, or an object
// whose "event_log" field holds that array (or a string of it), as in
// dstack's quote reports and tcb_info documents.
//
// A runtime event (type 0x08000001) with an empty digest gets the digest
// recomputed from its name and payload; a non-empty one is kept as logged and
// checked by Check.
func ParseJSON(b []byte) (*Log, error) {
	if len(b) > MaxLogSize {
		return nil, &FormatError{-1, fmt.Sprintf("log of %d bytes exceeds the %d-byte limit", len(b), MaxLogSize)}
	}
	raw := bytes.TrimSpace(b)
	if len(raw) > 0 && raw[0] == '{' {
		var wrap struct {
			EventLog json.RawMessage `json:"event_log"`
		}
		if err := strictjson.UnmarshalKnown(raw, &wrap); err != nil {
			return nil, &FormatError{-1, fmt.Sprintf("JSON object: %v", err)}
		}
		if wrap.EventLog == nil {
			return nil, &FormatError{-1, `JSON object has no "event_log" field`}
		}
		raw = wrap.EventLog
		if len(raw) > 0 && raw[0] == '"' {
			var s string
			if err := strictjson.Unmarshal(raw, &s); err != nil {
				return nil, &FormatError{-1, fmt.Sprintf(`"event_log" string: %v`, err)}
			}
			raw = []byte(s)
		}
	}
	var evs []jsonEvent
	if err := strictjson.UnmarshalKnown(raw, &evs); err != nil {
		return nil, &FormatError{-1, fmt.Sprintf("JSON event array: %v", err)}
	}
	if len(evs) > maxEvents {
		return nil, &FormatError{-1, fmt.Sprintf("%d events, over the limit of %d", len(evs), maxEvents)}
	}
	log := &Log{Format: "dstack-json"}
	for i, je := range evs {
		if je.IMR == nil || je.EventType == nil {
			return nil, &FormatError{i, "event lacks imr or event_type"}
		}
		if *je.IMR < 0 || *je.IMR >= Registers {
			return nil, &FormatError{i, fmt.Sprintf("imr %d is not an RTMR index (0..3)", *je.IMR)}
		}
		payload, err := hex.DecodeString(strings.TrimPrefix(je.EventPayload, "0x"))
		if err != nil {
			return nil, &FormatError{i, fmt.Sprintf("event_payload: %v", err)}
		}
		if len(payload) > maxEventData {
			return nil, &FormatError{i, "event_payload too large"}
		}
		if *je.EventType == EvNoAction {
			continue // informational, never extended
		}
		e := Event{Seq: i, RTMR: *je.IMR, PCR: -1, Type: *je.EventType, Data: payload}
		if e.Type == EvRuntime {
			e.Name = je.Event
			e.Payload = payload
		}
		var logged Digest
		if je.Digest != "" {
			d, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(je.Digest), "0x"))
			if err != nil || len(d) != len(logged) {
				return nil, &FormatError{i, fmt.Sprintf("digest %q is not %d bytes of hex", short(je.Digest, 20), len(logged))}
			}
			copy(logged[:], d)
		}
		switch {
		case e.Type == EvRuntime:
			// The name and payload are what a reader of the log relies on,
			// so they, not the stated digest, are replayed; Check reports a
			// stated digest that disagrees.
			e.Digest = RuntimeDigest(e.Type, e.Name, e.Payload)
			e.Logged, e.LoggedSet = logged, je.Digest != ""
		case je.Digest == "":
			return nil, &FormatError{i, fmt.Sprintf("%s event has no digest", TypeName(e.Type))}
		default:
			e.Digest = logged
		}
		log.Events = append(log.Events, e)
	}
	return log, nil
}

// MarshalJSON writes events in dstack's JSON event-log form. Runtime events
// get their name as "event" and their payload as "event_payload"; other
// events get their data as "event_payload".
func MarshalJSON(events []Event) ([]byte, error) {
	type out struct {
		IMR          int    `json:"imr"`
		EventType    uint32 `json:"event_type"`
		Digest       string `json:"digest"`
		Event        string `json:"event"`
		EventPayload string `json:"event_payload"`
	}
	evs := make([]out, len(events))
	for i, e := range events {
		o := out{IMR: e.RTMR, EventType: e.Type, Digest: e.Digest.String(), EventPayload: hex.EncodeToString(e.Data)}
		if e.Type == EvRuntime {
			o.Event = e.Name
			o.EventPayload = hex.EncodeToString(e.Payload)
		}
		evs[i] = o
	}
	return json.MarshalIndent(evs, "", " ")
}
