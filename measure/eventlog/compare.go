package eventlog

import (
	"crypto/sha512"
	"fmt"
	"io"

	"github.com/fleetbox/fleetbox/attest"
)

// Issue is an event whose logged digest does not match its own data, for the
// event types whose digest is defined as a hash of the logged data:
// EV_SEPARATOR, EV_ACTION, EV_EFI_ACTION, EV_EFI_GPT_EVENT,
// EV_EFI_VARIABLE_DRIVER_CONFIG and EV_EFI_VARIABLE_AUTHORITY (SHA-384 of
// the event data, TCG PC Client PFP spec 1.05 section 10.4; all confirmed on
// the real GCE CCEL in go-tdx-guest's test data) and runtime events
// (RuntimeDigest).
// Such an event lies about what was measured.
type Issue struct {
	Event      Event
	Logged     Digest
	Recomputed Digest
}

func (i Issue) String() string {
	return fmt.Sprintf("event #%d (rtmr%d %s): logged digest %s does not match its data (recomputed %s)",
		i.Event.Seq, i.Event.RTMR, i.Event.Description(), shortHex(i.Logged[:]), shortHex(i.Recomputed[:]))
}

// Check recomputes every digest that the event data determines and reports
// those that differ from the logged digest. Events logged without their data
// (dstack's "lite" logs) cannot be checked and are skipped.
func Check(events []Event) []Issue {
	var out []Issue
	for _, e := range events {
		switch e.Type {
		case EvSeparator, EvAction, EvEFIAction, EvEFIGPTEvent, EvEFIVariableDriverConfig, EvEFIVariableAuthority:
			if len(e.Data) == 0 {
				continue
			}
			if want := Digest(sha512.Sum384(e.Data)); want != e.Digest {
				out = append(out, Issue{Event: e, Logged: e.Digest, Recomputed: want})
			}
		case EvRuntime:
			want := RuntimeDigest(e.Type, e.Name, e.Payload)
			switch {
			case e.LoggedSet && e.Logged != want:
				out = append(out, Issue{Event: e, Logged: e.Logged, Recomputed: want})
			case !e.LoggedSet && e.Digest != want:
				out = append(out, Issue{Event: e, Logged: e.Digest, Recomputed: want})
			}
		}
	}
	return out
}

// RegisterResult is the replay of one RTMR against the value a quote shows.
type RegisterResult struct {
	RTMR     int
	Replayed attest.RTMR
	Quoted   attest.RTMR
	// Events are the events that extend this register, in order.
	Events []Event
}

// Match reports whether the replay equals the quote.
func (r RegisterResult) Match() bool { return r.Replayed == r.Quoted }

// Report compares a log's replay with a quote's RTMRs.
type Report struct {
	Registers [Registers]RegisterResult
	// Issues are events whose digest contradicts their own data.
	Issues []Issue
}

// OK reports whether every register matches and no event contradicts its data.
func (r *Report) OK() bool {
	for _, g := range r.Registers {
		if !g.Match() {
			return false
		}
	}
	return len(r.Issues) == 0
}

// Compare replays the log and compares each register with the quote.
func Compare(l *Log, quoted [Registers]attest.RTMR) *Report {
	rep := &Report{Issues: Check(l.Events)}
	replayed := l.Replay()
	for i := range Registers {
		rep.Registers[i] = RegisterResult{RTMR: i, Replayed: replayed[i], Quoted: quoted[i]}
	}
	for _, e := range l.Events {
		rep.Registers[e.RTMR].Events = append(rep.Registers[e.RTMR].Events, e)
	}
	return rep
}

// WriteText prints the report: one line per register and, for a register
// that differs, every event that extends it, in order, with its description,
// marking the events whose digest contradicts their data.
func (r *Report) WriteText(w io.Writer) {
	bad := map[int]Issue{}
	for _, is := range r.Issues {
		bad[is.Event.Seq] = is
	}
	for _, g := range r.Registers {
		if g.Match() {
			fmt.Fprintf(w, "rtmr%d: match %s (%d events)\n", g.RTMR, g.Replayed, len(g.Events))
			continue
		}
		fmt.Fprintf(w, "rtmr%d: MISMATCH replay %s, quote %s; its %d events in order:\n", g.RTMR, g.Replayed, g.Quoted, len(g.Events))
		for _, e := range g.Events {
			mark := " "
			if _, ok := bad[e.Seq]; ok {
				mark = "!"
			}
			fmt.Fprintf(w, "  %s #%-3d %s %s\n", mark, e.Seq, shortHex(e.Digest[:]), e.Description())
		}
	}
	for _, is := range r.Issues {
		fmt.Fprintf(w, "! %s\n", is)
	}
}

func shortHex(b []byte) string {
	s := fmt.Sprintf("%x", b)
	if len(s) <= 16 {
		return s
	}
	return s[:12] + "…" + s[len(s)-4:]
}

// ChangeKind classifies one difference between an expected and an actual
// event sequence.
type ChangeKind string

const (
	Missing    ChangeKind = "missing"    // expected, not in the actual log
	Unexpected ChangeKind = "unexpected" // in the actual log, not expected
	Changed    ChangeKind = "changed"    // same place and type, other digest
)

// Change is one difference found by Diff.
type Change struct {
	Kind     ChangeKind
	RTMR     int
	Expected *Event // nil for Unexpected
	Actual   *Event // nil for Missing
}

func (c Change) String() string {
	switch c.Kind {
	case Missing:
		return fmt.Sprintf("rtmr%d: missing %s %s", c.RTMR, shortHex(c.Expected.Digest[:]), c.Expected.Description())
	case Unexpected:
		return fmt.Sprintf("rtmr%d: unexpected #%d %s %s", c.RTMR, c.Actual.Seq, shortHex(c.Actual.Digest[:]), c.Actual.Description())
	default:
		return fmt.Sprintf("rtmr%d: changed #%d %s: expected %s, got %s", c.RTMR, c.Actual.Seq, c.Actual.Description(),
			shortHex(c.Expected.Digest[:]), shortHex(c.Actual.Digest[:]))
	}
}

// maxDiffEvents bounds the per-register sequences Diff aligns: the
// alignment table is quadratic (1024² ints = 8 MB). Real registers hold tens
// of events.
const maxDiffEvents = 1024

// Diff aligns, per register, an expected event sequence (a prediction or a
// reference boot) with an actual one and lists the differences in order. An
// expected and an actual event of the same type in the same place with
// different digests are reported as one Changed event.
func Diff(expected, actual []Event) ([]Change, error) {
	var out []Change
	for r := range Registers {
		var a, b []Event
		for _, e := range expected {
			if e.RTMR == r {
				a = append(a, e)
			}
		}
		for _, e := range actual {
			if e.RTMR == r {
				b = append(b, e)
			}
		}
		if len(a) > maxDiffEvents || len(b) > maxDiffEvents {
			return nil, fmt.Errorf("eventlog: rtmr%d has more than %d events to align", r, maxDiffEvents)
		}
		out = append(out, diffSeq(r, a, b)...)
	}
	return out, nil
}

// diffSeq is a longest-common-subsequence alignment on (type, digest).
func diffSeq(r int, a, b []Event) []Change {
	n, m := len(a), len(b)
	eq := func(i, j int) bool { return a[i].Type == b[j].Type && a[i].Digest == b[j].Digest }
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if eq(i, j) {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []Change
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && eq(i, j):
			i++
			j++
		case i < n && j < m && a[i].Type == b[j].Type && lcs[i+1][j+1] == lcs[i][j]:
			out = append(out, Change{Kind: Changed, RTMR: r, Expected: &a[i], Actual: &b[j]})
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			out = append(out, Change{Kind: Unexpected, RTMR: r, Actual: &b[j]})
			j++
		default:
			out = append(out, Change{Kind: Missing, RTMR: r, Expected: &a[i]})
			i++
		}
	}
	return out
}
