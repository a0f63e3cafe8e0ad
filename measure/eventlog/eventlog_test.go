package eventlog

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
)

// tdxData is the shared real TDX test data, read in place.
const tdxData = "../../../shared/testdata/tdx"

func readFile(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Skipf("test data not available: %v", err)
	}
	return b
}

func quoteRTMRs(tb testing.TB, path string) [Registers]attest.RTMR {
	tb.Helper()
	raw, err := attest.DecodeQuoteFile(readFile(tb, path))
	if err != nil {
		tb.Fatal(err)
	}
	q, err := attest.ParseQuote(raw)
	if err != nil {
		tb.Fatal(err)
	}
	return q.RTMR
}

// goTDXGuestCCEL returns go-tdx-guest's GCE sample directory (a CCEL and the
// quote it belongs to), from the module cache.
func goTDXGuestCCEL(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-tdx-guest").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		tb.Skipf("go-tdx-guest module not in the module cache: %v", err)
	}
	return filepath.Join(dir, "testing", "testdata", "ccel")
}

// TestRealLogsReplayToQuotes: every matched log/quote pair from the shared
// test data replays to all four RTMRs of its quote.
func TestRealLogsReplayToQuotes(t *testing.T) {
	cases := map[string]struct {
		log, quote string
		format     string
		events     int
	}{
		"dstack quote-report":       {tdxData + "/derived/dstack_quote-report.eventlog.json", tdxData + "/derived/dstack_quote-report.quote.bin", "dstack-json", 28},
		"dstack quote-report (raw)": {tdxData + "/dstack/quote-report.json", tdxData + "/dstack/quote-report.json", "dstack-json", 28},
		"dstack lite":               {tdxData + "/derived/dstack_tdx-lite-getquote.eventlog.json", tdxData + "/derived/dstack_tdx-lite-getquote.quote.bin", "dstack-json", 29},
		"dstack lite (raw)":         {tdxData + "/dstack/tdx-lite-getquote.json", tdxData + "/dstack/tdx-lite-getquote.json", "dstack-json", 29},
		"near-mpc":                  {tdxData + "/derived/near-mpc_eventlog.json", tdxData + "/derived/near-mpc_quote.bin", "dstack-json", 29},
		"near-mpc tcb_info":         {tdxData + "/near-mpc/tcb_info.json", tdxData + "/near-mpc/quote.json", "dstack-json", 29},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			l, err := Parse(readFile(t, c.log))
			if err != nil {
				t.Fatal(err)
			}
			if l.Format != c.format || len(l.Events) != c.events {
				t.Fatalf("format %s with %d events, want %s with %d", l.Format, len(l.Events), c.format, c.events)
			}
			rep := Compare(l, quoteRTMRs(t, c.quote))
			if !rep.OK() {
				var b bytes.Buffer
				rep.WriteText(&b)
				t.Fatalf("replay differs:\n%s", b.String())
			}
		})
	}
	t.Run("go-tdx-guest CCEL", func(t *testing.T) {
		dir := goTDXGuestCCEL(t)
		l, err := ParseCCEL(readFile(t, filepath.Join(dir, "ccel_data.dat")))
		if err != nil {
			t.Fatal(err)
		}
		if l.Format != "ccel" || len(l.Events) != 43 {
			t.Fatalf("%s with %d events, want ccel with 43", l.Format, len(l.Events))
		}
		rep := Compare(l, quoteRTMRs(t, filepath.Join(dir, "cos-113-tdx-quote.dat")))
		if len(rep.Issues) != 0 {
			t.Errorf("self-hashing events disagree: %v", rep.Issues)
		}
		if !rep.OK() {
			var b bytes.Buffer
			rep.WriteText(&b)
			t.Fatalf("replay differs:\n%s", b.String())
		}
	})
}

// TestDstackCCELIsNotTappdPair: dstack/ccel.bin is a real CCEL that
// reproduces the tappd quote's RTMR0 but not its RTMR1 (see the test data
// README, Q4); the report must say exactly that.
func TestDstackCCELIsNotTappdPair(t *testing.T) {
	l, err := ParseCCEL(readFile(t, tdxData+"/dstack/ccel.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) == 0 {
		t.Fatal("no events")
	}
	rep := Compare(l, quoteRTMRs(t, tdxData+"/derived/dcap-qvl_quote-from-tappd.bin"))
	if !rep.Registers[0].Match() || rep.Registers[1].Match() {
		t.Fatalf("rtmr0 match %v (want true), rtmr1 match %v (want false)", rep.Registers[0].Match(), rep.Registers[1].Match())
	}
	if got := rep.Registers[1].Replayed.String(); got != "bdcf4ee0f7fdfe7c73fbb19ded73193aee23a6726b86d3b282ea097cf4c9ed7a0db21b5c1ccd513e410d90e310836b26" {
		t.Errorf("rtmr1 replay %s", got)
	}
}

// TestChangedRuntimeEventIsNamed changes one RTMR3 event's payload: RTMR3
// no longer matches and the report names that event.
func TestChangedRuntimeEventIsNamed(t *testing.T) {
	data := readFile(t, tdxData+"/derived/dstack_quote-report.eventlog.json")
	var evs []map[string]any
	if err := json.Unmarshal(data, &evs); err != nil {
		t.Fatal(err)
	}
	const target = 22 // "compose-hash"
	if evs[target]["event"] != "compose-hash" {
		t.Fatalf("event %d is %v", target, evs[target]["event"])
	}
	evs[target]["event_payload"] = strings.Repeat("ab", 32)
	changed, _ := json.Marshal(evs)
	l, err := ParseJSON(changed)
	if err != nil {
		t.Fatal(err)
	}
	rep := Compare(l, quoteRTMRs(t, tdxData+"/derived/dstack_quote-report.quote.bin"))
	if rep.Registers[3].Match() {
		t.Fatal("rtmr3 still matches")
	}
	for i := range 3 {
		if !rep.Registers[i].Match() {
			t.Errorf("rtmr%d no longer matches", i)
		}
	}
	if len(rep.Issues) != 1 || rep.Issues[0].Event.Seq != target || rep.Issues[0].Event.Name != "compose-hash" {
		t.Fatalf("issues %v, want one naming event #%d compose-hash", rep.Issues, target)
	}
	var b bytes.Buffer
	rep.WriteText(&b)
	if !strings.Contains(b.String(), "! #22") || !strings.Contains(b.String(), `"compose-hash"`) {
		t.Errorf("report does not mark event #22:\n%s", b.String())
	}
}

// TestChangedBootEventIsNamed changes the digest of one boot event (the
// kernel image, whose digest the log cannot recompute): Diff against the
// original log names it.
func TestChangedBootEventIsNamed(t *testing.T) {
	orig, err := ParseJSON(readFile(t, tdxData+"/derived/near-mpc_eventlog.json"))
	if err != nil {
		t.Fatal(err)
	}
	mod, _ := ParseJSON(readFile(t, tdxData+"/derived/near-mpc_eventlog.json"))
	const target = 11
	if mod.Events[target].Type != EvEFIBootServicesApplication {
		t.Fatalf("event %d is %s", target, TypeName(mod.Events[target].Type))
	}
	mod.Events[target].Digest[0] ^= 1
	rep := Compare(mod, quoteRTMRs(t, tdxData+"/derived/near-mpc_quote.bin"))
	if rep.Registers[1].Match() || !rep.Registers[0].Match() {
		t.Fatal("want exactly rtmr1 to differ")
	}
	changes, err := Diff(orig.Events, mod.Events)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].Kind != Changed || changes[0].Actual.Seq != target || changes[0].RTMR != 1 {
		t.Fatalf("changes %v", changes)
	}
	if s := changes[0].String(); !strings.Contains(s, "EV_EFI_BOOT_SERVICES_APPLICATION") || !strings.Contains(s, "#11") {
		t.Errorf("change %q does not name the event", s)
	}
	// A dropped and an added event are named too.
	dropped := append(append([]Event{}, orig.Events[:target]...), orig.Events[target+1:]...)
	changes, _ = Diff(orig.Events, dropped)
	if len(changes) != 1 || changes[0].Kind != Missing || changes[0].Expected.Seq != target {
		t.Fatalf("dropped: %v", changes)
	}
	changes, _ = Diff(dropped, orig.Events)
	if len(changes) != 1 || changes[0].Kind != Unexpected || changes[0].Actual.Seq != target {
		t.Fatalf("added: %v", changes)
	}
}

func TestRuntimeDigestRecomputed(t *testing.T) {
	// dstack's "lite" log leaves runtime digests empty; the first one is
	// "system-preparing" with an empty payload.
	l, err := ParseJSON(readFile(t, tdxData+"/derived/dstack_tdx-lite-getquote.eventlog.json"))
	if err != nil {
		t.Fatal(err)
	}
	var e *Event
	for i := range l.Events {
		if l.Events[i].Type == EvRuntime {
			e = &l.Events[i]
			break
		}
	}
	if e == nil || e.Name != "system-preparing" {
		t.Fatalf("first runtime event %+v", e)
	}
	// Same name and payload as in the full quote-report log, whose digest is
	// logged there: f9974020ef507068...
	if got := e.Digest.String(); !strings.HasPrefix(got, "f9974020ef507068") {
		t.Errorf("digest %s", got)
	}
}

func TestSeparatorDigest(t *testing.T) {
	l, err := ParseJSON(readFile(t, tdxData+"/derived/dstack_quote-report.eventlog.json"))
	if err != nil {
		t.Fatal(err)
	}
	if issues := Check(l.Events); len(issues) != 0 {
		t.Fatalf("issues in an unmodified log: %v", issues)
	}
}

func TestMalformedJSON(t *testing.T) {
	cases := map[string]string{
		"not json":      `[{`,
		"no imr":        `[{"event_type":4,"digest":"` + strings.Repeat("00", 48) + `"}]`,
		"bad imr":       `[{"imr":4,"event_type":4,"digest":"` + strings.Repeat("00", 48) + `"}]`,
		"negative imr":  `[{"imr":-1,"event_type":4,"digest":"` + strings.Repeat("00", 48) + `"}]`,
		"short digest":  `[{"imr":0,"event_type":4,"digest":"0011"}]`,
		"no digest":     `[{"imr":0,"event_type":4,"digest":""}]`,
		"bad payload":   `[{"imr":3,"event_type":134217729,"digest":"","event":"x","event_payload":"zz"}]`,
		"object no log": `{"quote":"00"}`,
		"log not array": `{"event_log":"{}"}`,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseJSON([]byte(in))
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want *FormatError", err)
			}
		})
	}
}

func TestMalformedCCEL(t *testing.T) {
	good := readFile(t, tdxData+"/dstack/ccel.bin")
	l, err := ParseCCEL(good)
	if err != nil {
		t.Fatal(err)
	}
	// End of the last event: the padding starts there.
	end := len(good)
	for end > 0 && good[end-1] == good[len(good)-1] {
		end--
	}
	cases := map[string][]byte{
		"empty":            nil,
		"header only":      good[:8],
		"truncated":        good[:end-3],
		"not crypto-agile": func() []byte { b := bytes.Clone(good); b[4] = 1; return b }(),
		"bad signature":    func() []byte { b := bytes.Clone(good); b[32] = 'X'; return b }(),
		"undeclared alg":   func() []byte { b := bytes.Clone(good); o := firstEvent(good); b[o+12] = 0x99; return b }(),
		"bad mr index":     func() []byte { b := bytes.Clone(good); o := firstMeasured(t, good); b[o] = 9; return b }(),
		"huge data size": func() []byte {
			b := bytes.Clone(good)
			o := firstEvent(good)
			copy(b[o+12+2+48:], []byte{0xff, 0xff, 0xff, 0x7f})
			return b
		}(),
		"huge count": func() []byte {
			b := bytes.Clone(good)
			o := firstEvent(good)
			copy(b[o+8:], []byte{0xff, 0xff, 0, 0})
			return b
		}(),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseCCEL(in)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want *FormatError", err)
			}
		})
	}
	_ = l
}

// firstEvent is the offset of the first crypto-agile event after the Spec ID
// event.
func firstEvent(b []byte) int {
	size := int(b[28]) | int(b[29])<<8 | int(b[30])<<16 | int(b[31])<<24
	return 32 + size
}

// firstMeasured is the offset of the first event that is not EV_NO_ACTION.
func firstMeasured(t *testing.T, b []byte) int {
	o := firstEvent(b)
	for range 100 {
		typ := uint32(b[o+4]) | uint32(b[o+5])<<8 | uint32(b[o+6])<<16 | uint32(b[o+7])<<24
		size := int(b[o+12+2+48]) | int(b[o+12+2+48+1])<<8
		if typ != EvNoAction {
			return o
		}
		o += 12 + 2 + 48 + 4 + size
	}
	t.Fatal("no measured event")
	return 0
}

func TestNoSHA384(t *testing.T) {
	// A Spec ID event declaring only SHA-256.
	b := specIDEvent(map[uint16]uint16{0x000b: 32})
	if _, err := ParseCCEL(b); !errors.Is(err, ErrNoSHA384) {
		t.Fatalf("got %v, want ErrNoSHA384", err)
	}
}

func specIDEvent(algs map[uint16]uint16) []byte {
	var ev bytes.Buffer
	ev.Write(specIDSignature)
	ev.Write(make([]byte, 8))
	ev.Write([]byte{byte(len(algs)), 0, 0, 0})
	for a, s := range algs {
		ev.Write([]byte{byte(a), byte(a >> 8), byte(s), byte(s >> 8)})
	}
	ev.WriteByte(0)
	var b bytes.Buffer
	b.Write([]byte{0, 0, 0, 0, EvNoAction, 0, 0, 0})
	b.Write(make([]byte, 20))
	n := ev.Len()
	b.Write([]byte{byte(n), byte(n >> 8), 0, 0})
	b.Write(ev.Bytes())
	return b.Bytes()
}

func FuzzParseCCEL(f *testing.F) {
	for _, p := range []string{tdxData + "/dstack/ccel.bin"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	if out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-tdx-guest").Output(); err == nil {
		if b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "testing/testdata/ccel/ccel_data.dat")); err == nil {
			f.Add(b)
		}
	}
	if b, err := os.ReadFile("testdata/ovmf-vtpm-boot.bin"); err == nil {
		f.Add(b)
	}
	f.Add(specIDEvent(map[uint16]uint16{algSHA384: 48}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if l, err := ParseTPMLog(b); err == nil {
			for _, e := range l.Events {
				if e.RTMR != PCRToRTMR(e.PCR) || e.RTMR < 0 {
					t.Fatalf("pcr %d mapped to rtmr %d", e.PCR, e.RTMR)
				}
			}
		}
		l, err := ParseCCEL(b)
		if err != nil {
			return
		}
		for _, e := range l.Events {
			if e.RTMR < 0 || e.RTMR >= Registers {
				t.Fatalf("event with rtmr %d", e.RTMR)
			}
			_ = e.Description()
		}
		_ = Compare(l, [Registers]attest.RTMR{})
	})
}

func FuzzParseJSON(f *testing.F) {
	for _, p := range []string{
		tdxData + "/derived/dstack_quote-report.eventlog.json",
		tdxData + "/derived/dstack_tdx-lite-getquote.eventlog.json",
		tdxData + "/near-mpc/tcb_info.json",
	} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`[{"imr":3,"event_type":134217729,"digest":"","event":"x","event_payload":"` + hex.EncodeToString([]byte("y")) + `"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseJSON(b)
		if err != nil {
			return
		}
		for _, e := range l.Events {
			if e.RTMR < 0 || e.RTMR >= Registers {
				t.Fatalf("event with rtmr %d", e.RTMR)
			}
			_ = e.Description()
		}
		var w bytes.Buffer
		Compare(l, [Registers]attest.RTMR{}).WriteText(&w)
	})
}

func TestMarshalJSONRoundTrip(t *testing.T) {
	l, err := ParseJSON(readFile(t, tdxData+"/derived/near-mpc_eventlog.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalJSON(l.Events)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := ParseJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.Replay() != l2.Replay() || len(l2.Events) != len(l.Events) {
		t.Fatal("round trip changed the log")
	}
}

// TestParseTPMLogReal reads a real vTPM log (testdata/README.md) and maps
// its PCRs to RTMRs the TDX way.
func TestParseTPMLogReal(t *testing.T) {
	b := readFile(t, "testdata/ovmf-vtpm-boot.bin")
	l, err := ParseTPMLog(b)
	if err != nil {
		t.Fatal(err)
	}
	perPCR := map[int]int{}
	seps := 0
	for _, e := range l.Events {
		perPCR[e.PCR]++
		if e.RTMR != PCRToRTMR(e.PCR) {
			t.Errorf("event %d: pcr %d -> rtmr %d", e.Seq, e.PCR, e.RTMR)
		}
		if e.Type == EvSeparator {
			seps++
		}
	}
	// TPM firmware: one separator for each of PCR 0-7.
	if seps != 8 || perPCR[11] != 8 || perPCR[9] != 2 {
		t.Errorf("separators %d, per PCR %v", seps, perPCR)
	}
	if issues := Check(l.Events); len(issues) != 0 {
		t.Errorf("self-hashing events disagree: %v", issues)
	}
	// The same bytes are not a CC log: PCR 7, 9, 11, 12 are no MR indices.
	var fe *FormatError
	if _, err := ParseCCEL(b); !errors.As(err, &fe) {
		t.Errorf("ParseCCEL on a PCR log: %v", err)
	}
}

// TDXFromTPM keeps every event of a vTPM log but PCR 0's and the extra
// separators: RTMR0 keeps PCR 7's, RTMR1 one where the TPM firmware's run
// of PCR 2-6 separators was.
func TestTDXFromTPM(t *testing.T) {
	l, err := ParseTPMLog(readFile(t, "testdata/ovmf-vtpm-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	got := TDXFromTPM(l.Events)
	seps := map[int]int{}
	var rest []Event
	for _, e := range got {
		if e.Type == EvSeparator {
			seps[e.RTMR]++
		} else {
			rest = append(rest, e)
		}
	}
	if seps[0] != 1 || seps[1] != 1 || seps[2] != 0 {
		t.Fatalf("separators per RTMR after the conversion: %v", seps)
	}
	var want []Event
	for _, e := range l.Events {
		if e.Type != EvSeparator && e.PCR != 0 {
			want = append(want, e)
		}
	}
	if len(rest) != len(want) {
		t.Fatalf("%d other events, want %d", len(rest), len(want))
	}
	for i := range want {
		if rest[i].Seq != want[i].Seq {
			t.Fatalf("event %d reordered", i)
		}
	}
	// RTMR2 has no separator in either form, so its replay is unchanged.
	if Replay(got)[2] != l.Replay()[2] || Replay(got)[1] == l.Replay()[1] {
		t.Fatal("the conversion changed RTMR2 or left RTMR1 as the TPM log has it")
	}
}
