package eventlog

import (
	"fmt"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
)

// MismatchError is an event log that does not replay to the quote it came
// with, or holds an event whose digest contradicts its own data. Details
// say which register and which event, one line each.
type MismatchError struct {
	Details []string
	// Registers are the RTMRs whose replay differs from the quote.
	Registers []int
	// Log is the parsed log, for a caller that explains the difference
	// against the events it expected.
	Log *Log
}

func (e *MismatchError) Error() string {
	return "event log does not match the quote: " + strings.Join(e.Details, "; ")
}

// maxDetails bounds the lines a MismatchError carries.
const maxDetails = 8

// Bind parses the event log that came with a verified quote, requires it to
// replay to the quote in every register it has events for, and records its
// RTMR3 events in the verdict (EventLogChecked, Rtmr3Events) for a policy's
// rtmr3Events. A log without RTMR3 events (a firmware CCEL) binds too; a
// policy that pins events then refuses it, since nothing replays to RTMR3
// (attest.Policy.Evaluate replays the recorded events again). A log that cannot be parsed
// returns a *FormatError, one that does not replay a *MismatchError; the
// verdict is then left unchanged.
func Bind(raw []byte, v *attest.Verdict) (*Log, error) {
	l, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	rep := Compare(l, v.Quote.RTMR)
	var details []string
	add := func(s string) {
		if len(details) < maxDetails {
			details = append(details, s)
		} else if len(details) == maxDetails {
			details = append(details, "further differences left out")
		}
	}
	for _, is := range rep.Issues {
		add(is.String())
	}
	var regs []int
	for _, g := range rep.Registers {
		if len(g.Events) > 0 && !g.Match() {
			regs = append(regs, g.RTMR)
			add(fmt.Sprintf("rtmr%d: the log's %d events replay to %s…, the quote shows %s…",
				g.RTMR, len(g.Events), g.Replayed.String()[:16], g.Quoted.String()[:16]))
		}
	}
	if len(details) > 0 {
		return nil, &MismatchError{Details: details, Registers: regs, Log: l}
	}
	evs := make([]attest.Rtmr3Event, 0, len(rep.Registers[3].Events))
	for _, e := range rep.Registers[3].Events {
		if e.Type == EvRuntime {
			evs = append(evs, attest.Rtmr3Event{Type: e.Type, Name: e.Name, Payload: e.Payload})
		} else {
			evs = append(evs, attest.Rtmr3Event{Type: e.Type, Digest: e.Digest})
		}
	}
	if err := attest.CheckRtmr3Events(evs); err != nil {
		return nil, &FormatError{-1, err.Error()}
	}
	v.EventLogChecked, v.Rtmr3Events = true, evs
	return l, nil
}
