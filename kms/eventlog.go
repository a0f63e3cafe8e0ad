package kms

import (
	"errors"
	"fmt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// maxEventDiffLines bounds what a refusal records of the event diff.
const maxEventDiffLines = 6

// checkEventLog binds the event log a node sent with its quote to the
// verdict (eventlog.Bind): it must replay to the quote's RTMR3 and to every
// other register it extends, or it is refused as eventlog_mismatch, naming
// the registers and the events that contradict their data. Its RTMR3 events
// then go to the policy's rtmr3Events and to the audit record.
func (s *Server) checkEventLog(raw []byte, v *attest.Verdict) (*eventlog.Log, *apiError) {
	l, err := eventlog.Bind(raw, v)
	var me *eventlog.MismatchError
	switch {
	case errors.As(err, &me):
		// With the image's expected events (--expected-events), say which
		// events of the registers that do not replay differ from them.
		return nil, refuse(api.CodeEventLogMismatch, append(me.Details, s.registerDiff(me.Log, me.Registers)...)...)
	case err != nil:
		return nil, refuse(api.CodeInvalidRequest, "eventLogB64: "+err.Error())
	}
	return l, nil
}

// eventDiff explains a policy refusal event by event: for each register the
// policy refused, the differences between the events the KMS expects
// (Config.ExpectedEvents, from measurements.json) and the node's log.
func (s *Server) eventDiff(l *eventlog.Log, vs []*attest.Violation) []string {
	if l == nil || len(s.cfg.ExpectedEvents) == 0 {
		return nil
	}
	var regs []int
	for _, v := range vs {
		var r int
		if _, err := fmt.Sscanf(v.Reason, "rtmr%d_not_allowed", &r); err == nil {
			regs = append(regs, r)
		}
	}
	return s.registerDiff(l, regs)
}

// registerDiff lists the differences between the expected events and the
// log's in the given registers, at most maxEventDiffLines of them.
func (s *Server) registerDiff(l *eventlog.Log, regs []int) []string {
	if l == nil || len(s.cfg.ExpectedEvents) == 0 || len(regs) == 0 {
		return nil
	}
	refused := map[int]bool{}
	for _, r := range regs {
		refused[r] = true
	}
	changes, err := eventlog.Diff(s.cfg.ExpectedEvents, l.Events)
	if err != nil {
		return []string{"event diff: " + err.Error()}
	}
	var out []string
	for _, c := range changes {
		if !refused[c.RTMR] {
			continue
		}
		if len(out) == maxEventDiffLines {
			out = append(out, "event diff: further differences left out")
			break
		}
		out = append(out, "event diff: "+c.String())
	}
	return out
}
