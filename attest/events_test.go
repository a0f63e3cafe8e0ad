package attest

import (
	"encoding/hex"
	"strings"
	"testing"
)

func runtimeEvents(kv ...string) []Rtmr3Event {
	var evs []Rtmr3Event
	for i := 0; i+1 < len(kv); i += 2 {
		evs = append(evs, Rtmr3Event{Type: RuntimeEventType, Name: kv[i], Payload: []byte(kv[i+1])})
	}
	return evs
}

func TestRtmr3EventsValidate(t *testing.T) {
	for name, c := range map[string]struct {
		events  string
		wantErr string
	}{
		"pinned and present":   {`{"compose-hash":["0xAB01"],"key-provider":["*"]}`, ""},
		"empty map":            {`{}`, "rtmr3Events is empty"},
		"empty list":           {`{"compose-hash":[]}`, "rtmr3Events.compose-hash is empty"},
		"wildcard mixed":       {`{"app-id":["*","ab"]}`, `rtmr3Events.app-id mixes "*"`},
		"not hex":              {`{"app-id":["zz"]}`, "rtmr3Events.app-id[0]"},
		"odd hex":              {`{"app-id":["abc"]}`, "rtmr3Events.app-id[0]"},
		"empty name":           {`{"":["*"]}`, "event name"},
		"duplicate event name": {`{"app-id":["*"],"app-id":["ab"]}`, `duplicate object member name "app-id"`},
		"oversize payload":     {`{"app-id":["` + strings.Repeat("ab", MaxRtmr3EventPayload+1) + `"]}`, "over 4096 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(policyJSON("rtmr3Events=" + c.events)))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("valid policy refused: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("got %v, want an error naming %q", err, c.wantErr)
			}
		})
	}
}

func TestRtmr3EventsEvaluate(t *testing.T) {
	two := runtimeEvents("app-id", "A", "compose-hash", "C1", "instance-id", "I1", "key-provider", "K")
	other := runtimeEvents("app-id", "A", "compose-hash", "C2", "instance-id", "I2", "key-provider", "K")
	twice := runtimeEvents("compose-hash", "C1", "compose-hash", "C1")
	hexOf := func(s string) string { return strings.ToUpper(hex.EncodeToString([]byte(s))) }
	pol := func(ev map[string][]string) *Policy {
		p := DefaultPolicy()
		p.Rtmr3Events = ev
		return p
	}
	pinned := pol(map[string][]string{"compose-hash": {hexOf("C1")}, "key-provider": {"*"}})
	for name, c := range map[string]struct {
		pol     *Policy
		events  []Rtmr3Event
		checked bool
		rtmr3   *RTMR // default: the replay of events
		reasons []string
		msg     string
	}{
		"pinned payload":          {pinned, two, true, nil, nil, ""},
		"another compose hash":    {pinned, other, true, nil, []string{ReasonEventNotAllowed}, "rtmr3 event compose-hash 4332 not in rtmr3Events.compose-hash"},
		"presence only, missing":  {pol(map[string][]string{"fleetbox.profile": {"*"}}), two, true, nil, []string{ReasonEventMissing}, "rtmr3 event fleetbox.profile is not in the event log"},
		"twice":                   {pinned, twice, true, nil, []string{ReasonEventRepeated, ReasonEventMissing}, "occurs 2 times"},
		"no event log":            {pinned, nil, false, nil, []string{ReasonEventLogMissing}, "compose-hash, key-provider"},
		"events not of the quote": {pinned, two, true, &RTMR{1}, []string{ReasonEventLogMismatch}, "the 4 events replay to"},
		"no pins, no log":         {DefaultPolicy(), nil, false, nil, nil, ""},
	} {
		t.Run(name, func(t *testing.T) {
			q := &Quote{}
			q.RTMR[3] = ReplayRtmr3(c.events)
			if c.rtmr3 != nil {
				q.RTMR[3] = *c.rtmr3
			}
			err := c.pol.Evaluate(&Verdict{Quote: q, TcbStatus: TcbUpToDate, EventLogChecked: c.checked, Rtmr3Events: c.events})
			vs := Violations(err)
			var got []string
			for _, v := range vs {
				got = append(got, v.Reason)
			}
			if strings.Join(got, ",") != strings.Join(c.reasons, ",") {
				t.Fatalf("reasons %v, want %v (%v)", got, c.reasons, err)
			}
			if c.msg != "" && !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("%q lacks %q", err, c.msg)
			}
		})
	}
}

// A non-runtime event in RTMR3 replays by its digest and carries no name.
func TestRtmr3NonRuntimeEvent(t *testing.T) {
	evs := []Rtmr3Event{{Type: 0x80000001, Digest: [48]byte{7}}}
	if err := CheckRtmr3Events(evs); err != nil {
		t.Fatal(err)
	}
	if ReplayRtmr3(evs) == (RTMR{}) {
		t.Fatal("digest not replayed")
	}
	if err := CheckRtmr3Events([]Rtmr3Event{{Type: 0x80000001, Name: "x"}}); err == nil {
		t.Fatal("a named non-runtime event was accepted")
	}
}
