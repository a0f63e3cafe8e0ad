package eventlog_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

const sharedTDX = "../../../shared/testdata/tdx"

func shared(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sharedTDX, rel))
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("shared test data %s not present: %v", rel, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dstackCase is a real dstack quote with the event log that came with it
// and the collateral and time at which the testdata README says it
// verifies UpToDate.
type dstackCase struct {
	quote, log, collateral, at string
	// composeHash, where the fixture states it (tcb_info.json), must equal
	// the compose-hash event's payload.
	composeHashFrom string
	// mrConfigID: the quote's MRCONFIGID is 0x01 || compose hash (newer
	// dstack; Q5's older CVM leaves it zero).
	mrConfigID bool
}

var dstackCases = map[string]dstackCase{
	"Q5 dstack verifier fixture": {quote: "dstack/quote-report.json", log: "dstack/quote-report.json",
		collateral: "dcap-qvl/tdx_quote_outdated_collateral.json", at: "2026-02-18T10:59:51Z"},
	"Q7 near-mpc node": {quote: "near-mpc/quote.json", log: "near-mpc/tcb_info.json",
		collateral: "near-mpc/collateral.json", at: "2026-08-13T10:46:38Z", composeHashFrom: "near-mpc/tcb_info.json", mrConfigID: true},
}

// verified verifies a real quote with its collateral at the documented time.
func (c dstackCase) verified(t *testing.T) *attest.Verdict {
	t.Helper()
	raw, err := attest.DecodeQuoteFile(shared(t, c.quote))
	if err != nil {
		t.Fatal(err)
	}
	shared(t, c.collateral)
	coll, err := attest.LoadCollateralFile(filepath.Join(sharedTDX, c.collateral))
	if err != nil {
		t.Fatal(err)
	}
	at, _ := time.Parse(time.RFC3339, c.at)
	v, err := attest.NewVerifier(attest.VerifierConfig{Collateral: attest.StaticCollateral{C: coll}}).VerifyAt(context.Background(), raw, at)
	if err != nil {
		t.Fatalf("verifying at %s: %v", c.at, err)
	}
	if v.TcbStatus != attest.TcbUpToDate {
		t.Fatalf("tcb %s", v.TcbStatus)
	}
	return v
}

func payloadOf(t *testing.T, v *attest.Verdict, name string) string {
	t.Helper()
	m := attest.Rtmr3EventMap(v.Rtmr3Events)
	if len(m[name]) != 1 {
		t.Fatalf("event %s: %d occurrences in %v", name, len(m[name]), m)
	}
	return m[name][0]
}

// dstackPolicy pins the quote's MRTD and the given events; RTMR3 itself is
// waived, since its instance-id differs per CVM.
func dstackPolicy(mrtd attest.MRTD, events map[string][]string) *attest.Policy {
	return &attest.Policy{
		AllowedMrtd: []string{mrtd.String()}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, Rtmr3Events: events,
	}
}

func TestRealDstackQuotesPinnedByEvents(t *testing.T) {
	for name, c := range dstackCases {
		t.Run(name, func(t *testing.T) {
			logRaw := shared(t, c.log)
			v := c.verified(t)
			if _, err := eventlog.Bind(logRaw, v); err != nil {
				t.Fatalf("binding the real log: %v", err)
			}
			if !v.EventLogChecked {
				t.Fatal("EventLogChecked not set")
			}
			compose, appID := payloadOf(t, v, "compose-hash"), payloadOf(t, v, "app-id")
			if c.composeHashFrom != "" {
				var tcb struct {
					ComposeHash string `json:"compose_hash"`
				}
				if err := json.Unmarshal(shared(t, c.composeHashFrom), &tcb); err != nil {
					t.Fatal(err)
				}
				if compose != tcb.ComposeHash {
					t.Fatalf("compose-hash event %s, tcb_info compose_hash %s", compose, tcb.ComposeHash)
				}
			}
			// MRCONFIGID is 0x01 || compose hash (dstack's convention).
			if got := hex.EncodeToString(v.Quote.MRConfigID[1:33]); c.mrConfigID && (v.Quote.MRConfigID[0] != 1 || got != compose) {
				t.Fatalf("mr_config_id %s does not carry the compose hash %s", v.Quote.MRConfigID, compose)
			}

			pinned := dstackPolicy(v.Quote.MRTD, map[string][]string{
				"compose-hash": {compose}, "app-id": {appID}, "key-provider": {"*"},
			})
			if err := pinned.Validate(); err != nil {
				t.Fatal(err)
			}
			if err := pinned.Evaluate(v); err != nil {
				t.Fatalf("the app's own compose hash and app id: %v", err)
			}

			other := dstackPolicy(v.Quote.MRTD, map[string][]string{
				"compose-hash": {strings.Repeat("ab", 32)}, "app-id": {appID},
			})
			vs := attest.Violations(other.Evaluate(v))
			if len(vs) != 1 || vs[0].Reason != attest.ReasonEventNotAllowed ||
				!strings.Contains(vs[0].Message, "rtmr3 event compose-hash "+compose[:8]) ||
				!strings.Contains(vs[0].Message, "not in rtmr3Events.compose-hash") {
				t.Fatalf("another compose hash: %v", vs)
			}

			absent := dstackPolicy(v.Quote.MRTD, map[string][]string{"fleetbox.profile": {"*"}})
			if vs := attest.Violations(absent.Evaluate(v)); len(vs) != 1 || vs[0].Reason != attest.ReasonEventMissing ||
				!strings.Contains(vs[0].Message, "fleetbox.profile") {
				t.Fatalf("an event the log lacks: %v", vs)
			}

			// The same quote without its log: a policy that pins events
			// refuses it, naming the events.
			bare := c.verified(t)
			if vs := attest.Violations(pinned.Evaluate(bare)); len(vs) != 1 || vs[0].Reason != attest.ReasonEventLogMissing ||
				!strings.Contains(vs[0].Message, "app-id, compose-hash, key-provider") {
				t.Fatalf("no event log: %v", vs)
			}
		})
	}
}

// A log with one event changed does not replay to the quote: it is refused
// as a mismatch that names the event, and the verdict stays unbound.
func TestRealDstackLogChanged(t *testing.T) {
	c := dstackCases["Q7 near-mpc node"]
	logRaw := shared(t, c.log)
	compose := "2911e1f733466216dedb862d6d669e11256ee7a34ce4dbc66c4b807ba7a9c895"
	if !bytes.Contains(logRaw, []byte(compose)) {
		t.Fatal("fixture lacks the compose hash")
	}
	for name, tc := range map[string]struct {
		edit func([]byte) []byte
		want []string
	}{
		"compose-hash payload, digest kept": {
			edit: func(b []byte) []byte {
				// Only the event's payload: the first occurrence after "compose-hash".
				i := bytes.Index(b, []byte(`"compose-hash"`))
				j := i + bytes.Index(b[i:], []byte(compose))
				out := bytes.Clone(b)
				copy(out[j:], strings.Repeat("0", 64))
				return out
			},
			want: []string{"compose-hash", "rtmr3: the log's"},
		},
		"a boot event's digest": {
			edit: func(b []byte) []byte {
				var evs []map[string]any
				var tcb map[string]json.RawMessage
				json.Unmarshal(b, &tcb)
				json.Unmarshal(tcb["event_log"], &evs)
				for _, e := range evs {
					if e["imr"].(float64) == 1 {
						e["digest"] = strings.Repeat("11", 48)
						break
					}
				}
				out, _ := json.Marshal(evs)
				return out
			},
			want: []string{"rtmr1: the log's"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			v := c.verified(t)
			_, err := eventlog.Bind(tc.edit(logRaw), v)
			var me *eventlog.MismatchError
			if !errors.As(err, &me) {
				t.Fatalf("got %v, want a MismatchError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
			if v.EventLogChecked || v.Rtmr3Events != nil {
				t.Fatal("a refused log changed the verdict")
			}
		})
	}
}

// FuzzBind: a log that binds to a quote leaves a verdict whose recorded
// RTMR3 events are within limits; one that does not leaves it unchanged.
func FuzzBind(f *testing.F) {
	f.Add([]byte(`[{"imr":3,"event_type":134217729,"digest":"","event":"compose-hash","event_payload":"2911"}]`), byte(0))
	f.Add([]byte(`{"event_log":"[]"}`), byte(1))
	f.Fuzz(func(t *testing.T, raw []byte, r3 byte) {
		q := &attest.Quote{}
		q.RTMR[3][0] = r3
		v := &attest.Verdict{Quote: q}
		if _, err := eventlog.Bind(raw, v); err != nil {
			if v.EventLogChecked || v.Rtmr3Events != nil {
				t.Fatal("a refused log changed the verdict")
			}
			return
		}
		if err := attest.CheckRtmr3Events(v.Rtmr3Events); err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkBindDstackLog is the cost of checking a real dstack log (29
// events) against its quote: what every announce and key request with a
// log adds to quote verification.
func BenchmarkBindDstackLog(b *testing.B) {
	raw, err := os.ReadFile(filepath.Join(sharedTDX, "near-mpc/tcb_info.json"))
	if err != nil {
		b.Skip(err)
	}
	qraw, err := os.ReadFile(filepath.Join(sharedTDX, "near-mpc/quote.json"))
	if err != nil {
		b.Skip(err)
	}
	qb, err := attest.DecodeQuoteFile(qraw)
	if err != nil {
		b.Fatal(err)
	}
	q, err := attest.ParseQuote(qb)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := eventlog.Bind(raw, &attest.Verdict{Quote: q}); err != nil {
			b.Fatal(err)
		}
	}
}
