package measure

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// RuntimeEventType is the event type of fleetbox's RTMR3 runtime events. It
// is dstack's runtime event type (0x08000001), and the digest is computed the
// same way, so dstack-style tooling (and eventlog.ParseJSON) reads and
// replays fleetbox's RTMR3 log unchanged. fleetbox's event names carry the
// "fleetbox." prefix so they never collide with dstack's.
const RuntimeEventType = eventlog.EvRuntime

// Names of fleetbox's runtime events, extended in this order at boot.
const (
	// EventProfile: the image profile the appliance runs ("prod", "dev");
	// payload: the name in UTF-8.
	EventProfile = "fleetbox.profile"
	// EventConfig: the appliance configuration; payload: the 32-byte
	// SHA-256 of the configuration file's bytes (ConfigHash).
	EventConfig = "fleetbox.config-sha256"
	// EventBootDone: the last boot-time event, empty payload. A quote taken
	// after it shows whether anything else was extended afterwards.
	EventBootDone = "fleetbox.boot-done"
)

// RuntimeEvent is one event fleetbox extends into RTMR3.
//
// The appliance (appliance/, at boot, before it asks the KMS for a key)
// extends RTMR3 with BootEvents(profile, ConfigHash(config)) in order, each
// with Digest, and writes the same events with MarshalRuntimeLog so a
// verifier can replay them; `fleetbox measure rtmr3` and `measure image`
// predict the resulting RTMR3 from the same function.
type RuntimeEvent struct {
	Name    string
	Payload []byte
}

// Digest is SHA-384(le32(0x08000001) || ":" || name || ":" || payload), the
// value extended into RTMR3.
func (e RuntimeEvent) Digest() eventlog.Digest {
	return eventlog.RuntimeDigest(RuntimeEventType, e.Name, e.Payload)
}

// ConfigHash is the configuration hash carried by EventConfig: SHA-256 of the
// configuration file exactly as it is stored in the image.
func ConfigHash(config []byte) [32]byte { return sha256.Sum256(config) }

// ErrProfileName is returned for an empty or oversized profile name.
var ErrProfileName = errors.New("measure: profile name must be 1-64 bytes")

// BootEvents is the sequence the appliance extends at boot.
func BootEvents(profile string, configHash [32]byte) ([]RuntimeEvent, error) {
	if len(profile) == 0 || len(profile) > 64 {
		return nil, fmt.Errorf("%w: %q", ErrProfileName, profile)
	}
	return []RuntimeEvent{
		{Name: EventProfile, Payload: []byte(profile)},
		{Name: EventConfig, Payload: configHash[:]},
		{Name: EventBootDone},
	}, nil
}

// ReplayRTMR3 extends RTMR3 from zero with the events in order.
func ReplayRTMR3(events []RuntimeEvent) attest.RTMR {
	var r attest.RTMR
	for _, e := range events {
		r = eventlog.Extend(r, e.Digest())
	}
	return r
}

// RuntimeLogEvents turns runtime events into log events for RTMR3.
func RuntimeLogEvents(events []RuntimeEvent) []eventlog.Event {
	out := make([]eventlog.Event, len(events))
	for i, e := range events {
		out[i] = eventlog.Event{
			Seq: i, RTMR: 3, PCR: -1, Type: RuntimeEventType, Digest: e.Digest(),
			Data: e.Payload, Name: e.Name, Payload: e.Payload,
			Source: "fleetbox appliance runtime event (measure.BootEvents)",
		}
	}
	return out
}

// MarshalRuntimeLog writes the events in the JSON event-log form dstack uses
// (imr 3, event_type, digest, event, event_payload), which
// eventlog.ParseJSON and `fleetbox measure eventlog` read back.
func MarshalRuntimeLog(events []RuntimeEvent) ([]byte, error) {
	return eventlog.MarshalJSON(RuntimeLogEvents(events))
}
