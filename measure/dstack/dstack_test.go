package dstack

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

const shared = "../../../shared/testdata/tdx"

// The near-mpc fixture (near/mpc crates/test-utils/assets/tcb_info.json): a
// NEAR MPC node on dstack, with its app-compose.json, the compose hash dstack
// logged, the event log, and the quote the log replays to
// (shared/testdata/tdx/README.md, Q7).
const (
	nearComposeHash = "2911e1f733466216dedb862d6d669e11256ee7a34ce4dbc66c4b807ba7a9c895"
	nearMRConfigID  = "012911e1f733466216dedb862d6d669e11256ee7a34ce4dbc66c4b807ba7a9c895000000000000000000000000000000"
)

func readShared(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(shared + "/" + name)
	if err != nil {
		t.Skipf("shared test data: %v", err)
	}
	return b
}

type nearTcbInfo struct {
	MRTD        string `json:"mrtd"`
	RTMR0       string `json:"rtmr0"`
	RTMR1       string `json:"rtmr1"`
	RTMR2       string `json:"rtmr2"`
	ComposeHash string `json:"compose_hash"`
	AppCompose  string `json:"app_compose"`
}

func nearTcb(t testing.TB) (nearTcbInfo, []byte) {
	b := readShared(t, "near-mpc/tcb_info.json")
	var ti nearTcbInfo
	if err := json.Unmarshal(b, &ti); err != nil {
		t.Fatal(err)
	}
	return ti, b
}

// The compose hash of the real app-compose.json equals the compose_hash the
// fixture states, the compose-hash event's payload, and the MRCONFIGID of
// the quote (in the version-1 form).
func TestComposeHashNearMPC(t *testing.T) {
	ti, doc := nearTcb(t)
	a, err := ParseAppCompose([]byte(ti.AppCompose))
	if err != nil {
		t.Fatal(err)
	}
	if a.Hash.String() != nearComposeHash || ti.ComposeHash != nearComposeHash {
		t.Fatalf("compose hash %s, fixture says %s", a.Hash, ti.ComposeHash)
	}
	if a.Name != "mpc-localnet-one-node-1786619449" || a.Runner != "docker-compose" || !a.HasDockerComposeFile ||
		a.ManifestVersion != "2" || a.KMSEnabled || !a.NoInstanceID || len(a.Notes) != 0 {
		t.Errorf("parsed %+v", a)
	}
	// The same hash from the tcb_info document that carries it.
	b, err := ParseComposeDocument(doc)
	if err != nil || b.Hash != a.Hash {
		t.Fatalf("from tcb_info.json: %v, %v", b, err)
	}

	l, err := eventlog.ParseJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	var payloads []string
	for _, e := range l.Events {
		if e.Type == eventlog.EvRuntime && e.Name == EventComposeHash {
			payloads = append(payloads, hex.EncodeToString(e.Payload))
		}
		if e.Type == eventlog.EvRuntime && e.Name == EventAppID {
			// Without the KMS the app-id is the truncated compose hash.
			if id := a.Hash.AppIDWithoutKMS(); hex.EncodeToString(e.Payload) != hex.EncodeToString(id[:]) {
				t.Errorf("app-id event %x, want %x", e.Payload, id)
			}
		}
	}
	if len(payloads) != 1 || payloads[0] != nearComposeHash {
		t.Errorf("compose-hash events: %v", payloads)
	}

	raw, err := attest.DecodeQuoteFile(readShared(t, "near-mpc/quote.json"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := attest.ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	if q.MRConfigID.String() != nearMRConfigID || a.Hash.MRConfigIDV1() != q.MRConfigID {
		t.Errorf("quote MRCONFIGID %s, compose implies %s", q.MRConfigID, a.Hash.MRConfigIDV1())
	}
}

// dstack hashes the file as uploaded: the SDKs' deterministic JSON (keys
// sorted, compact) of the same app gives another hash, which is not the one
// dstack logged.
func TestComposeHashIsOverBytesNotJSON(t *testing.T) {
	ti, _ := nearTcb(t)
	var v map[string]any
	if err := json.Unmarshal([]byte(ti.AppCompose), &v); err != nil {
		t.Fatal(err)
	}
	compact, _ := json.Marshal(v) // encoding/json sorts map keys
	if h := ComposeHashOf(compact).String(); h == nearComposeHash {
		t.Fatalf("re-serialized JSON hashes the same (%s): the fixture does not tell the two apart", h)
	}
	// One added trailing newline changes the app's identity.
	if ComposeHashOf([]byte(ti.AppCompose+"\n")).String() == nearComposeHash {
		t.Fatal("a trailing newline did not change the hash")
	}
}

func TestParseAppComposeRejects(t *testing.T) {
	cases := map[string]struct {
		in   string
		want string
	}{
		"empty":            {"", "not a JSON object"},
		"array":            {`[1]`, "not a JSON object"},
		"no runner":        {`{"manifest_version":2,"name":"a"}`, "missing [runner]"},
		"no name, version": {`{"runner":"bash"}`, "missing [manifest_version name]"},
		"duplicate name":   {`{"manifest_version":2,"name":"a","name":"b","runner":"bash"}`, "duplicate"},
		"name not string":  {`{"manifest_version":2,"name":1,"runner":"bash"}`, "name"},
		"bad version":      {`{"manifest_version":-1,"name":"a","runner":"bash"}`, "manifest_version"},
		"version bool":     {`{"manifest_version":true,"name":"a","runner":"bash"}`, "manifest_version"},
		"trailing data":    {`{"manifest_version":2,"name":"a","runner":"bash"} {}`, ""},
		"invalid UTF-8":    {"{\"manifest_version\":2,\"name\":\"\xff\",\"runner\":\"bash\"}", ""},
		"too large":        {`{"name":"` + strings.Repeat("a", MaxDocumentSize) + `"}`, "size limit"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseAppCompose([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
		})
	}
	_, err := ParseAppCompose([]byte(`{"name":"` + strings.Repeat("a", MaxDocumentSize) + `"}`))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v is not ErrTooLarge", err)
	}
}

func TestParseAppComposeNotes(t *testing.T) {
	a, err := ParseAppCompose([]byte(`{"manifest_version":"2","name":"x","runner":"docker-compose","unknown_member":[1,2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if a.ManifestVersion != "2" || len(a.Notes) != 1 || !strings.Contains(a.Notes[0], "no docker_compose_file") {
		t.Errorf("%+v", a)
	}
	a, err = ParseAppCompose([]byte(`{"manifest_version":2,"name":"x","runner":"podman"}`))
	if err != nil || len(a.Notes) != 1 || !strings.Contains(a.Notes[0], `"podman"`) {
		t.Errorf("%+v %v", a, err)
	}
}

// A guest agent Info answer carries tcb_info as a string, which carries
// app_compose as a string.
func TestParseComposeDocumentNested(t *testing.T) {
	ti, _ := nearTcb(t)
	inner, _ := json.Marshal(map[string]string{"app_compose": ti.AppCompose})
	outer, _ := json.Marshal(map[string]string{"app_id": "x", "tcb_info": string(inner)})
	a, err := ParseComposeDocument(outer)
	if err != nil || a.Hash.String() != nearComposeHash {
		t.Fatalf("%v %v", a, err)
	}
	if _, err := ParseComposeDocument([]byte(`{"tcb_info":"{\"mrtd\":\"00\"}"}`)); err == nil {
		t.Error("a tcb_info without app_compose was accepted")
	}
}

func TestParseOSMeasurements(t *testing.T) {
	ti, doc := nearTcb(t)
	want := [4]string{ti.MRTD, ti.RTMR0, ti.RTMR1, ti.RTMR2}
	got := func(m *OSMeasurements) [4]string {
		return [4]string{m.MRTD.String(), m.RTMR0.String(), m.RTMR1.String(), m.RTMR2.String()}
	}
	m, err := ParseOSMeasurements(doc)
	if err != nil || got(m) != want {
		t.Fatalf("tcb_info: %v %v", m, err)
	}
	// dstack-mr measure --json prints the same member names.
	mr, _ := json.Marshal(map[string]string{"mrtd": ti.MRTD, "rtmr0": ti.RTMR0, "rtmr1": ti.RTMR1, "rtmr2": ti.RTMR2})
	if m, err := ParseOSMeasurements(mr); err != nil || got(m) != want {
		t.Fatalf("dstack-mr: %v %v", m, err)
	}
	// The quote the same boot made.
	if m, err := ParseOSMeasurements(readShared(t, "near-mpc/quote.json")); err != nil || got(m) != want || m.Source != "quote" {
		t.Fatalf("quote: %v %v", m, err)
	}
	for name, in := range map[string]string{
		"no rtmr2":  `{"mrtd":"` + ti.MRTD + `","rtmr0":"` + ti.RTMR0 + `","rtmr1":"` + ti.RTMR1 + `"}`,
		"short":     `{"mrtd":"00","rtmr0":"` + ti.RTMR0 + `","rtmr1":"` + ti.RTMR1 + `","rtmr2":"` + ti.RTMR2 + `"}`,
		"not a doc": `hello`,
		"mock":      string(attest.MockQuote{}.Encode(attest.ReportData{})),
	} {
		if _, err := ParseOSMeasurements([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPolicyFor(t *testing.T) {
	ti, doc := nearTcb(t)
	os1, err := ParseOSMeasurements(doc)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ParseComposeHash(nearComposeHash)
	p, err := PolicyFor(&PolicyOptions{ComposeHashes: []ComposeHash{h, h}, OS: []OSMeasurements{*os1, *os1},
		KeyProviders: []string{"*"}, Events: map[string][]string{"instance-id": {""}, "compose-hash": {strings.ToUpper(nearComposeHash)}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.AllowedMrtd) != 1 || p.AllowedMrtd[0] != ti.MRTD || p.AllowedRtmr2[0] != ti.RTMR2 || p.AllowedRtmr3[0] != "*" || p.AcceptMock {
		t.Errorf("%+v", p)
	}
	if ev := p.Rtmr3Events; len(ev) != 3 || len(ev["compose-hash"]) != 1 || ev["key-provider"][0] != "*" || ev["instance-id"][0] != "" {
		t.Errorf("events %v", ev)
	}
	for name, o := range map[string]*PolicyOptions{
		"no compose":        {OS: []OSMeasurements{*os1}},
		"no os":             {ComposeHashes: []ComposeHash{h}},
		"os and waive":      {ComposeHashes: []ComposeHash{h}, OS: []OSMeasurements{*os1}, WaiveOS: true},
		"wildcard compose":  {ComposeHashes: []ComposeHash{h}, WaiveOS: true, Events: map[string][]string{"compose-hash": {"*"}}},
		"wildcard and vals": {ComposeHashes: []ComposeHash{h}, WaiveOS: true, Events: map[string][]string{"x": {"*", "00"}}},
		"revoked":           {ComposeHashes: []ComposeHash{h}, WaiveOS: true, TcbStatuses: []attest.TcbStatus{attest.TcbRevoked}},
	} {
		if _, err := PolicyFor(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzParseAppCompose: any input either fails or yields a hash of exactly
// the input; the document reader never panics either.
func FuzzParseAppCompose(f *testing.F) {
	f.Add([]byte(`{"manifest_version":2,"name":"a","runner":"docker-compose","docker_compose_file":"services: {}"}`))
	f.Add([]byte(`{"app_compose":"{\"manifest_version\":2,\"name\":\"a\",\"runner\":\"bash\"}"}`))
	f.Add([]byte(`{"tcb_info":"{\"app_compose\":\"{}\"}"}`))
	f.Add([]byte(`{"manifest_version":1e40,"name":"a","runner":"bash"}`))
	if b, err := os.ReadFile(shared + "/near-mpc/tcb_info.json"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if a, err := ParseAppCompose(b); err == nil && a.Hash != ComposeHashOf(b) {
			t.Fatal("hash is not over the input")
		}
		ParseComposeDocument(b)
		ParseOSMeasurements(b)
	})
}
