package main

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// The near-mpc fixture: a NEAR MPC node on dstack, its tcb_info.json (with
// app_compose, compose_hash and the event log) and the quote the log
// replays to (shared/testdata/tdx/README.md, Q7).
const (
	nearTcbInfo     = measureShared + "/near-mpc/tcb_info.json"
	nearQuote       = measureShared + "/near-mpc/quote.json"
	nearComposeHash = "2911e1f733466216dedb862d6d669e11256ee7a34ce4dbc66c4b807ba7a9c895"
	nearMRConfigID  = "012911e1f733466216dedb862d6d669e11256ee7a34ce4dbc66c4b807ba7a9c895000000000000000000000000000000"
	// The key-provider event payload of the near-mpc boot: JSON naming the
	// local-sgx key provider and its MRENCLAVE.
	nearKeyProvider = "7b226e616d65223a226c6f63616c2d736778222c226964223a2236623565643032653534396131633330616161386533313731613034356631663434396230303137333533656635393565373865333963333438633938643031227d"
)

type nearTcb struct {
	MRTD       string `json:"mrtd"`
	RTMR0      string `json:"rtmr0"`
	RTMR1      string `json:"rtmr1"`
	RTMR2      string `json:"rtmr2"`
	AppCompose string `json:"app_compose"`
}

// nearFiles writes the near-mpc app-compose.json on its own, and the same
// app with one byte changed (another app version), into dir.
func nearFiles(t *testing.T, dir string) (tcb nearTcb, compose, other string) {
	t.Helper()
	needFile(t, nearTcbInfo)
	b, _ := os.ReadFile(nearTcbInfo)
	if err := json.Unmarshal(b, &tcb); err != nil {
		t.Fatal(err)
	}
	compose, other = filepath.Join(dir, "app-compose.json"), filepath.Join(dir, "other.json")
	os.WriteFile(compose, []byte(tcb.AppCompose), 0o644)
	os.WriteFile(other, []byte(strings.Replace(tcb.AppCompose, `"public_logs": true`, `"public_logs": false`, 1)), 0o644)
	return tcb, compose, other
}

func TestMeasureCompose(t *testing.T) {
	dir := t.TempDir()
	_, compose, _ := nearFiles(t, dir)
	notJSON := filepath.Join(dir, "bad.json")
	os.WriteFile(notJSON, []byte("services:\n  a: {}\n"), 0o644)
	noRunner := filepath.Join(dir, "norunner.json")
	os.WriteFile(noRunner, []byte(`{"manifest_version":2,"name":"x"}`), 0o644)
	cases := map[string]struct {
		args     []string
		code     int
		out, err string
	}{
		"app-compose.json": {[]string{compose}, exitOK, "compose-hash " + nearComposeHash + "\nmr-config-id " + nearMRConfigID, ""},
		"tcb_info.json":    {[]string{nearTcbInfo}, exitOK, "compose-hash " + nearComposeHash, ""},
		"json":             {[]string{"--json", nearTcbInfo}, exitOK, `"mrConfigId": "` + nearMRConfigID + `"`, ""},
		"json after file":  {[]string{compose, "--json"}, exitOK, `"name": "mpc-localnet-one-node-1786619449"`, ""},
		"no file":          {nil, exitUsage, "", "want one app-compose.json"},
		"two files":        {[]string{compose, compose}, exitUsage, "", "want one"},
		"missing":          {[]string{filepath.Join(dir, "nope.json")}, exitUsage, "", "no such file"},
		"a compose YAML":   {[]string{notJSON}, exitUsage, "", "not a JSON object"},
		"no runner":        {[]string{noRunner}, exitUsage, "", "missing [runner]"},
		"bad flag":         {[]string{"--yaml", compose}, exitUsage, "", "flag provided but not defined"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, out, errs := runMeasureCLI(t, append([]string{"measure", "compose"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.err) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tc.code, out, errs)
			}
		})
	}
}

func TestPolicyDstack(t *testing.T) {
	dir := t.TempDir()
	tcb, compose, other := nearFiles(t, dir)
	needFile(t, nearQuote)
	out := filepath.Join(dir, "policy.json")
	cases := map[string]struct {
		args []string
		code int
		err  string
		// check the written policy when the exit is 0.
		check func(t *testing.T, p *attest.Policy)
	}{
		"tcb_info pins the OS and the compose hash": {
			[]string{"--compose", compose, "--os-measurements", nearTcbInfo}, exitOK, "wrote",
			func(t *testing.T, p *attest.Policy) {
				want := map[string][]string{"mrtd": {tcb.MRTD}, "rtmr0": {tcb.RTMR0}, "rtmr1": {tcb.RTMR1}, "rtmr2": {tcb.RTMR2}, "rtmr3": {"*"}}
				got := map[string][]string{"mrtd": p.AllowedMrtd, "rtmr0": p.AllowedRtmr0, "rtmr1": p.AllowedRtmr1, "rtmr2": p.AllowedRtmr2, "rtmr3": p.AllowedRtmr3}
				for r, w := range want {
					if strings.Join(got[r], ",") != strings.Join(w, ",") {
						t.Errorf("%s %v, want %v", r, got[r], w)
					}
				}
				if len(p.Rtmr3Events) != 1 || strings.Join(p.Rtmr3Events["compose-hash"], ",") != nearComposeHash || p.AcceptMock || p.AllowDebug {
					t.Errorf("%+v", p)
				}
			}},
		"quote as OS measurements, two versions, more events": {
			[]string{"--compose", nearTcbInfo, "--compose", other, "--os-measurements", nearQuote, "--os-measurements", nearTcbInfo,
				"--app-id", "0x" + strings.ToUpper(nearComposeHash[:40]), "--key-provider", nearKeyProvider, "--event", "instance-id=", "--event", "storage-fs=*",
				"--tcb-status", "UpToDate", "--tcb-status", "SWHardeningNeeded", "--allow-debug"}, exitOK, "2 compose hash(es)",
			func(t *testing.T, p *attest.Policy) {
				ev := p.Rtmr3Events
				if len(ev["compose-hash"]) != 2 || ev["app-id"][0] != nearComposeHash[:40] || ev["key-provider"][0] != nearKeyProvider ||
					len(ev["instance-id"]) != 1 || ev["instance-id"][0] != "" || ev["storage-fs"][0] != "*" {
					t.Errorf("events %v", ev)
				}
				// The quote and tcb_info of one boot: one value per register.
				if len(p.AllowedMrtd) != 1 || p.AllowedRtmr1[0] != tcb.RTMR1 || len(p.AllowedTcbStatuses) != 2 || !p.AllowDebug {
					t.Errorf("%+v", p)
				}
			}},
		"waive-os": {[]string{"--compose", compose, "--waive-os", "--key-provider", "*"}, exitOK, "warning: --waive-os",
			func(t *testing.T, p *attest.Policy) {
				for _, l := range [][]string{p.AllowedMrtd, p.AllowedRtmr0, p.AllowedRtmr1, p.AllowedRtmr2, p.AllowedRtmr3} {
					if len(l) != 1 || l[0] != "*" {
						t.Errorf("%+v", p)
					}
				}
			}},
		"neither os nor waive":  {[]string{"--compose", compose}, exitUsage, "--os-measurements FILE", nil},
		"both os and waive":     {[]string{"--compose", compose, "--waive-os", "--os-measurements", nearTcbInfo}, exitUsage, "exclude each other", nil},
		"no compose":            {[]string{"--waive-os"}, exitUsage, "want --compose", nil},
		"positional compose":    {[]string{compose, "--waive-os"}, exitUsage, "unexpected argument", nil},
		"bad app-id hex":        {[]string{"--compose", compose, "--waive-os", "--app-id", "xyz"}, exitUsage, "--app-id \"xyz\" is not hex", nil},
		"short app-id":          {[]string{"--compose", compose, "--waive-os", "--app-id", "abcd"}, exitUsage, "--app-id \"abcd\" is 2 bytes, want 20", nil},
		"bad key-provider hex":  {[]string{"--compose", compose, "--waive-os", "--key-provider", "7b2"}, exitUsage, "--key-provider \"7b2\" is not hex", nil},
		"bad event hex":         {[]string{"--compose", compose, "--waive-os", "--event", "app-id=0xgg"}, exitUsage, "--event app-id \"0xgg\" is not hex", nil},
		"event without =":       {[]string{"--compose", compose, "--waive-os", "--event", "app-id"}, exitUsage, "want NAME=HEX", nil},
		"wildcard mixed":        {[]string{"--compose", compose, "--waive-os", "--key-provider", "*", "--key-provider", "00"}, exitUsage, "mixed with payloads", nil},
		"compose-hash wildcard": {[]string{"--compose", compose, "--waive-os", "--event", "compose-hash=*"}, exitUsage, "compose-hash cannot be", nil},
		"bad os file":           {[]string{"--compose", compose, "--os-measurements", compose}, exitUsage, "--os-measurements " + compose, nil},
		"bad compose":           {[]string{"--compose", nearQuote, "--waive-os"}, exitUsage, "--compose", nil},
		"revoked status":        {[]string{"--compose", compose, "--waive-os", "--tcb-status", "Revoked"}, exitUsage, "Revoked", nil},
		"unwritable out":        {[]string{"--compose", compose, "--waive-os", "--out", filepath.Join(dir, "no", "such", "dir.json")}, exitRuntime, "no such file", nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			os.Remove(out)
			args := append([]string{"policy", "dstack", "--out", out}, tc.args...)
			code, _, errs := runMeasureCLI(t, args...)
			if code != tc.code || !strings.Contains(errs, tc.err) {
				t.Fatalf("exit %d (want %d)\n%s", code, tc.code, errs)
			}
			b, err := os.ReadFile(out)
			if tc.check == nil {
				if err == nil && tc.code != exitOK {
					t.Fatal("a policy was written on failure")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p, err := attest.ParsePolicy(b)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

// nearVerdict builds by hand the verdict verification gives the near-mpc
// quote with its event log bound (what eventlog.Bind will do): the log's
// RTMR3 events, runtime events by name and payload, others by digest.
func nearVerdict(t *testing.T, edit func([]attest.Rtmr3Event)) *attest.Verdict {
	t.Helper()
	q, err := attest.ReadQuoteFile(nearQuote)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(nearTcbInfo)
	l, err := eventlog.ParseJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	var evs []attest.Rtmr3Event
	for _, e := range l.Events {
		if e.RTMR != 3 {
			continue
		}
		if e.Type == attest.RuntimeEventType {
			evs = append(evs, attest.Rtmr3Event{Type: e.Type, Name: e.Name, Payload: e.Payload})
		} else {
			evs = append(evs, attest.Rtmr3Event{Type: e.Type, Digest: e.Digest})
		}
	}
	if len(evs) != 9 {
		t.Fatalf("%d rtmr3 events in the near-mpc log, want 9", len(evs))
	}
	if edit != nil {
		edit(evs)
	}
	return &attest.Verdict{Quote: q, EventLogChecked: true, Rtmr3Events: evs, TcbStatus: attest.TcbUpToDate}
}

// The policy policy dstack writes admits the real near-mpc boot, and
// refuses it for another compose hash, naming the event.
func TestPolicyDstackEvaluatesNearMPC(t *testing.T) {
	dir := t.TempDir()
	_, compose, other := nearFiles(t, dir)
	needFile(t, nearQuote)
	write := func(args ...string) *attest.Policy {
		t.Helper()
		out := filepath.Join(dir, "p.json")
		code, _, errs := runMeasureCLI(t, append([]string{"policy", "dstack", "--out", out, "--os-measurements", nearTcbInfo}, args...)...)
		if code != exitOK {
			t.Fatalf("exit %d\n%s", code, errs)
		}
		b, _ := os.ReadFile(out)
		p, err := attest.ParsePolicy(b)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	pinned := write("--compose", compose, "--app-id", nearComposeHash[:40], "--key-provider", nearKeyProvider, "--event", "instance-id=")
	if err := pinned.Evaluate(nearVerdict(t, nil)); err != nil {
		t.Fatalf("near-mpc refused: %v", err)
	}
	// Two app versions: the near-mpc one among them is admitted.
	if err := write("--compose", other, "--compose", compose).Evaluate(nearVerdict(t, nil)); err != nil {
		t.Fatalf("near-mpc refused with two versions allowed: %v", err)
	}

	// Another app version only: refused, the compose-hash event named.
	err := write("--compose", other).Evaluate(nearVerdict(t, nil))
	vs := attest.Violations(err)
	if len(vs) != 1 || vs[0].Reason != attest.ReasonEventNotAllowed || !strings.Contains(vs[0].Message, "compose-hash") {
		t.Fatalf("another compose hash: %v", err)
	}

	// A log whose compose-hash payload claims the other version no longer
	// replays to the quote's RTMR3: the waived allowedRtmr3 still binds
	// the events to the quote.
	otherHash := write("--compose", other).Rtmr3Events["compose-hash"][0]
	forged := nearVerdict(t, func(evs []attest.Rtmr3Event) {
		for i := range evs {
			if evs[i].Name == "compose-hash" {
				evs[i].Payload, _ = hex.DecodeString(otherHash)
			}
		}
	})
	vs = attest.Violations(write("--compose", other).Evaluate(forged))
	if len(vs) != 1 || vs[0].Reason != attest.ReasonEventLogMismatch {
		t.Fatalf("forged compose-hash event: %v", vs)
	}

	// Without an event log the pinned events cannot be judged.
	v := nearVerdict(t, nil)
	v.EventLogChecked, v.Rtmr3Events = false, nil
	if vs := attest.Violations(pinned.Evaluate(v)); len(vs) != 1 || vs[0].Reason != attest.ReasonEventLogMissing {
		t.Fatalf("no event log: %v", vs)
	}
}

// quote verify --event-log: the near-mpc quote with its log is accepted by
// a policy that pins its compose hash and prints the events it checked; a
// policy for another app refuses it naming compose-hash; a log with one
// event changed is refused as eventlog_mismatch naming the event.
func TestQuoteVerifyEventLog(t *testing.T) {
	dir := t.TempDir()
	_, compose, other := nearFiles(t, dir)
	coll := measureShared + "/near-mpc/collateral.json"
	needFile(t, coll)
	pol := func(name, composeFile string) string {
		p := filepath.Join(dir, name)
		if code, _, stderr := runCLI(t, "policy", "dstack", "--compose", composeFile, "--os-measurements", nearTcbInfo, "--out", p); code != exitOK {
			t.Fatalf("policy dstack: %d %s", code, stderr)
		}
		return p
	}
	own, another := pol("own.json", compose), pol("other.json", other)
	b, _ := os.ReadFile(nearTcbInfo)
	forged := filepath.Join(dir, "forged.json")
	i := strings.Index(string(b), `"compose-hash"`)
	j := i + strings.Index(string(b[i:]), nearComposeHash)
	os.WriteFile(forged, []byte(string(b[:j])+strings.Repeat("0", 64)+string(b[j+64:])), 0o644)

	for name, c := range map[string]struct {
		policy, log string
		code        int
		want        []string
	}{
		"own app":          {own, nearTcbInfo, exitOK, []string{`"eventLogChecked": true`, `"compose-hash": [`, nearComposeHash}},
		"another app":      {another, nearTcbInfo, exitNo, []string{"rtmr3_event_not_allowed", "rtmr3 event compose-hash 2911e1f7"}},
		"forged event log": {own, forged, exitNo, []string{"eventlog_mismatch", "compose-hash", "rtmr3: the log's"}},
		"no log":           {own, "", exitNo, []string{"eventlog_missing"}},
	} {
		t.Run(name, func(t *testing.T) {
			args := []string{"quote", "verify", nearQuote, "--collateral", coll, "--at", "2026-08-13T10:46:38Z", "--policy", c.policy}
			if c.log != "" {
				args = append(args, "--event-log", c.log)
			}
			code, stdout, stderr := runCLI(t, args...)
			if code != c.code {
				t.Fatalf("exit %d, want %d: %s %s", code, c.code, stdout, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("output lacks %q: %s", w, stdout)
				}
			}
		})
	}
}
