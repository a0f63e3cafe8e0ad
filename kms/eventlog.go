package kms

import (
	"fmt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// maxEventDiffLines bounds what a refusal records of the event diff.
const maxEventDiffLines = 6

// checkEventLog parses the event log a node sent with its quote and
// requires it to replay to the quote's value in every register it extends;
// a log that does not is refused as eventlog_mismatch, naming the
// registers. Registers the log has no event for are not judged by it.
func checkEventLog(raw []byte, q *attest.Quote) (*eventlog.Log, *apiError) {
	l, err := eventlog.Parse(raw)
	if err != nil {
		return nil, refuse(api.CodeInvalidRequest, "eventLogB64: "+err.Error())
	}
	rep := eventlog.Compare(l, q.RTMR)
	var details []string
	for _, g := range rep.Registers {
		if len(g.Events) > 0 && !g.Match() {
			details = append(details, fmt.Sprintf("rtmr%d: the event log's %d events replay to %s…, the quote shows %s…",
				g.RTMR, len(g.Events), g.Replayed.String()[:16], g.Quoted.String()[:16]))
		}
	}
	for _, is := range rep.Issues {
		details = append(details, is.String())
	}
	if len(details) > 0 {
		return nil, refuse(api.CodeEventLogMismatch, details...)
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
	refused := map[int]bool{}
	for _, v := range vs {
		var r int
		if _, err := fmt.Sscanf(v.Reason, "rtmr%d_not_allowed", &r); err == nil {
			refused[r] = true
		}
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
