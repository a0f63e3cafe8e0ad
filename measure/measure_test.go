package measure

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/measure/tdvf"
	"github.com/fleetbox/fleetbox/measure/uki"
)

const (
	tdxData    = "../../shared/testdata/tdx"
	debianOVMF = "/usr/share/ovmf/OVMF.fd"
	stubPath   = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	bootPath   = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	testConfig = "listen = \"/ip4/0.0.0.0/tcp/4001\"\n"
)

// TestBootEventsPinned pins fleetbox's RTMR3 for profile "prod" and
// testConfig. Worked out independently with Python's hashlib:
//
//	d(name, p) = SHA-384(01 00 00 08 || ":" || name || ":" || p)
//	e1 = d("fleetbox.profile", "prod")
//	e2 = d("fleetbox.config-sha256", SHA-256(testConfig))   (32 raw bytes)
//	e3 = d("fleetbox.boot-done", "")
//	rtmr3 = SHA-384(SHA-384(SHA-384(0^48 || e1) || e2) || e3)
func TestBootEventsPinned(t *testing.T) {
	evs, err := BootEvents("prod", ConfigHash([]byte(testConfig)))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"31e4717ec84222431a4e34049be3de4e58d65305b63efdc2a71f0cfc7adec5ae6f2b9cde71852209186b7b4ef4be993b",
		"070a72e8cba6f680f4b8af9b9cf2480ac7355a9f7d3d6252747ce7fdbd01e6a101317c8a02ca62f4be0a57d1935142de",
		"0cef19835fbb2da91a57c7dd5acbdc70e5a1a2958d89e5d13c1faee59dcd9c4e1ecc0757f87cc59132b300cef8846006",
	}
	for i, e := range evs {
		if e.Digest().String() != want[i] {
			t.Errorf("event %d %s: digest %s, want %s", i, e.Name, e.Digest(), want[i])
		}
	}
	if got := ReplayRTMR3(evs).String(); got != "1e7056ee1b24eb76097ac772cb0d889768734f2b2ec5792cc9a3c1657599099d77c5b81c5d024803e2469bda93f97a99" {
		t.Errorf("rtmr3 %s", got)
	}
	for name, p := range map[string]string{"empty": "", "long": string(make([]byte, 65))} {
		if _, err := BootEvents(p, [32]byte{}); !errors.Is(err, ErrProfileName) {
			t.Errorf("%s profile: %v", name, err)
		}
	}
}

// TestRuntimeEventMatchesDstack: a fleetbox RuntimeEvent with a dstack
// event's name and payload has the digest dstack logged, on real logs.
func TestRuntimeEventMatchesDstack(t *testing.T) {
	raw, err := os.ReadFile(tdxData + "/derived/dstack_quote-report.eventlog.json")
	if err != nil {
		t.Skipf("test data not available: %v", err)
	}
	var evs []struct {
		EventType uint32 `json:"event_type"`
		Digest    string `json:"digest"`
		Event     string `json:"event"`
		Payload   string `json:"event_payload"`
	}
	if err := json.Unmarshal(raw, &evs); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.EventType != RuntimeEventType {
			continue
		}
		p, _ := hex.DecodeString(e.Payload)
		if got := (RuntimeEvent{Name: e.Event, Payload: p}).Digest().String(); got != e.Digest {
			t.Errorf("%s: digest %s, dstack logged %s", e.Event, got, e.Digest)
		}
		n++
	}
	if n != 8 {
		t.Errorf("%d runtime events, want 8", n)
	}
}

func TestRuntimeLogRoundTrip(t *testing.T) {
	evs, _ := BootEvents("dev", ConfigHash([]byte(testConfig)))
	b, err := MarshalRuntimeLog(evs)
	if err != nil {
		t.Fatal(err)
	}
	l, err := eventlog.ParseJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.Replay()[3] != ReplayRTMR3(evs) || len(eventlog.Check(l.Events)) != 0 {
		t.Fatal("runtime log does not replay to RTMR3")
	}
}

// imageDir lays out an image directory with two profiles, "prod" and
// "dev", each with systemd-boot, a UKI (Debian's stub and kernel, added by
// objcopy) and a configuration.
func imageDir(t *testing.T) string {
	t.Helper()
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		t.Skip("objcopy not installed (apt-get install binutils)")
	}
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	for _, p := range []string{stubPath, bootPath, debianOVMF} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%v (apt-get install systemd-boot-efi ovmf)", err)
		}
	}
	if len(ks) == 0 {
		t.Skip("no kernel in /boot (apt-get install linux-image-amd64)")
	}
	dir := t.TempDir()
	initrd := make([]byte, 256<<10)
	rand.NewChaCha8([32]byte{1}).Read(initrd)
	for _, prof := range []string{"prod", "dev"} {
		d := filepath.Join(dir, prof)
		must(t, os.MkdirAll(d, 0o755))
		must(t, os.WriteFile(filepath.Join(d, "initrd"), initrd, 0o644))
		must(t, os.WriteFile(filepath.Join(d, "cmdline"), []byte("console=ttyS0 fleetbox.profile="+prof), 0o644))
		out, err := exec.Command(objcopy,
			"--add-section", ".cmdline="+filepath.Join(d, "cmdline"), "--change-section-vma", ".cmdline=0x30000",
			"--add-section", ".linux="+ks[0], "--change-section-vma", ".linux=0x40000",
			"--add-section", ".initrd="+filepath.Join(d, "initrd"), "--change-section-vma", ".initrd=0x2000000",
			stubPath, filepath.Join(d, "fleetbox.efi")).CombinedOutput()
		if err != nil {
			t.Fatalf("objcopy: %v\n%s", err, out)
		}
		boot, err := os.ReadFile(bootPath)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(d, "BOOTX64.EFI"), boot, 0o644))
		must(t, os.WriteFile(filepath.Join(d, ConfigFile), []byte(testConfig), 0o644))
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestMeasureImageAndPolicy(t *testing.T) {
	dir := imageDir(t)
	m, err := MeasureImage(dir, &ImageOptions{Firmware: debianOVMF, FleetboxVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.ProfileNames(); !slices.Equal(got, []string{"dev", "prod"}) {
		t.Fatalf("profiles %v", got)
	}
	fw, _ := os.ReadFile(debianOVMF)
	prod := m.Profiles["prod"]
	for _, o := range tdvf.Orders {
		want, _ := tdvf.MRTD(fw, o, nil)
		if prod.MRTD[o] != want {
			t.Errorf("mrtd %s differs", o)
		}
	}
	img, _ := os.ReadFile(filepath.Join(dir, "prod", "fleetbox.efi"))
	boot, _ := os.ReadFile(bootPath)
	pred, err := uki.Predict(&uki.Input{UKI: img, Bootloader: boot})
	if err != nil {
		t.Fatal(err)
	}
	if prod.RTMR1 != pred.RTMR1 || prod.RTMR2 != pred.RTMR2 {
		t.Error("rtmr1/2 differ from uki.Predict")
	}
	evs, _ := BootEvents("prod", ConfigHash([]byte(testConfig)))
	if prod.RTMR3 == nil || *prod.RTMR3 != ReplayRTMR3(evs) {
		t.Error("rtmr3 differs")
	}
	if m.Profiles["dev"].RTMR1 == prod.RTMR1 || *m.Profiles["dev"].RTMR3 == *prod.RTMR3 {
		t.Error("profiles with other command lines and names must differ in rtmr1 and rtmr3")
	}
	for _, role := range []string{"firmware", "uki", "bootloader", "config"} {
		if len(prod.Inputs[role].SHA256) != 64 {
			t.Errorf("input %s: %+v", role, prod.Inputs[role])
		}
	}

	// The predicted events replay to the recorded registers.
	evs2, err := prod.ExpectedEvents()
	if err != nil {
		t.Fatal(err)
	}
	if r := eventlog.Replay(evs2); r[1] != prod.RTMR1 || r[2] != prod.RTMR2 || r[3] != *prod.RTMR3 {
		t.Error("predicted events do not replay to the recorded registers")
	}

	// measurements.json round trip.
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := ParseMeasurements(b)
	if err != nil {
		t.Fatal(err)
	}
	if *m2.Profiles["prod"].RTMR3 != *prod.RTMR3 || m2.FleetboxVersion != "test" {
		t.Fatal("round trip changed values")
	}

	// Policies.
	if _, err := PolicyFromMeasurements(m2, nil); !errors.Is(err, ErrProfileChoice) {
		t.Errorf("two profiles, none chosen: %v", err)
	}
	if _, err := PolicyFromMeasurements(m2, &PolicyOptions{Profiles: []string{"prod"}}); !errors.Is(err, ErrRTMR0Unknown) {
		t.Errorf("no rtmr0: %v", err)
	}
	ref := attest.RTMR{0xab}
	pol, err := PolicyFromMeasurements(m2, &PolicyOptions{Profiles: []string{"prod"}, RTMR0: []attest.RTMR{ref}, Orders: []tdvf.Order{tdvf.SinglePass}})
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := pol.Marshal()
	if _, err := attest.ParsePolicy(pb); err != nil {
		t.Fatalf("written policy does not parse: %v", err)
	}
	q := &attest.Quote{MRTD: prod.MRTD[tdvf.SinglePass], RTMR: [4]attest.RTMR{ref, prod.RTMR1, prod.RTMR2, *prod.RTMR3}}
	if err := pol.Evaluate(&attest.Verdict{Quote: q, TcbStatus: attest.TcbUpToDate}); err != nil {
		t.Errorf("the measured image is refused: %v", err)
	}
	devQ := *q
	devQ.RTMR[3] = *m2.Profiles["dev"].RTMR3
	vs := attest.Violations(pol.Evaluate(&attest.Verdict{Quote: &devQ, TcbStatus: attest.TcbUpToDate}))
	if len(vs) != 1 || vs[0].Reason != "rtmr3_not_allowed" {
		t.Errorf("dev profile against the prod policy: %v", vs)
	}
	two := *q
	two.MRTD = prod.MRTD[tdvf.TwoPass]
	if pol.Evaluate(&attest.Verdict{Quote: &two, TcbStatus: attest.TcbUpToDate}) == nil {
		t.Error("two-pass MRTD admitted though only single-pass was chosen")
	}

	// Waivers are explicit and written as ["*"].
	pol, err = PolicyFromMeasurements(m2, &PolicyOptions{Profiles: []string{"prod", "dev"}, Waive: []string{RegRTMR0}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pol.AllowedRtmr0, []string{"*"}) || len(pol.AllowedRtmr3) != 2 || len(pol.AllowedMrtd) != 3 {
		t.Errorf("policy %+v", pol)
	}
	if _, err := PolicyFromMeasurements(m2, &PolicyOptions{Profiles: []string{"prod"}, Waive: []string{"rtmr9"}}); err == nil {
		t.Error("unknown register waived")
	}
	if _, err := PolicyFromMeasurements(m2, &PolicyOptions{Profiles: []string{"staging"}, Waive: []string{RegRTMR0}}); err == nil {
		t.Error("unknown profile accepted")
	}
}

func TestParseMeasurementsRejects(t *testing.T) {
	cases := map[string]string{
		"not json":      "{",
		"duplicate key": `{"version":1,"version":1,"profiles":{"a":{"mrtd":{"single-pass":"` + hex.EncodeToString(make([]byte, 48)) + `"}}}}`,
		"key case":      `{"Version":1,"profiles":{"a":{"mrtd":{"single-pass":"` + hex.EncodeToString(make([]byte, 48)) + `"}}}}`,
		"unknown field": `{"version":1,"profiles":{"a":{"mrtd":{"single-pass":"` + hex.EncodeToString(make([]byte, 48)) + `"}}},"extra":1}`,
		"bad version":   `{"version":2,"profiles":{}}`,
		"no profiles":   `{"version":1,"profiles":{}}`,
		"null profile":  `{"version":1,"profiles":{"a":null}}`,
		"bad order":     `{"version":1,"profiles":{"a":{"mrtd":{"three-pass":"` + hex.EncodeToString(make([]byte, 48)) + `"}}}}`,
		"short mrtd":    `{"version":1,"profiles":{"a":{"mrtd":{"single-pass":"00"}}}}`,
		"no mrtd":       `{"version":1,"profiles":{"a":{"rtmr1":"` + hex.EncodeToString(make([]byte, 48)) + `"}}}`,
	}
	for name, in := range cases {
		if _, err := ParseMeasurements([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseMeasurements(f *testing.F) {
	z := hex.EncodeToString(make([]byte, 48))
	f.Add([]byte(`{"version":1,"fleetboxVersion":"x","profiles":{"prod":{"mrtd":{"single-pass":"` + z + `"},"rtmr0":[],"rtmr1":"` + z + `","rtmr2":"` + z + `","rtmr3":null,"inputs":{}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMeasurements(b)
		if err != nil {
			return
		}
		_, _ = PolicyFromMeasurements(m, &PolicyOptions{Profiles: m.ProfileNames(), Waive: []string{RegRTMR0, RegRTMR3}})
	})
}
