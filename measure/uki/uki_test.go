package uki

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/measure/eventlog"
)

const (
	stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	bootPath = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	tdxData  = "../../../shared/testdata/tdx"
)

func kernelPath(tb testing.TB) string {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(ks) == 0 {
		tb.Skip("no kernel in /boot (apt-get install linux-image-amd64)")
	}
	return ks[0]
}

// testUKI is a UKI built the way ukify lays one out: Debian's systemd-stub
// with .osrel, .cmdline, .linux (the real Debian kernel) and a 2 MiB
// deterministic pseudo-random .initrd added by objcopy; about 10 MiB.
type testUKI struct {
	path                           string
	osrel, cmdline, kernel, initrd string
}

func buildUKI(tb testing.TB) *testUKI {
	tb.Helper()
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		tb.Skip("objcopy not installed (apt-get install binutils)")
	}
	if _, err := os.Stat(stubPath); err != nil {
		tb.Skipf("systemd-stub not installed (apt-get install systemd-boot-efi): %v", err)
	}
	dir := tb.TempDir()
	u := &testUKI{
		path:    filepath.Join(dir, "fleetbox.efi"),
		osrel:   filepath.Join(dir, "os-release"),
		cmdline: filepath.Join(dir, "cmdline"),
		kernel:  kernelPath(tb),
		initrd:  filepath.Join(dir, "initrd"),
	}
	initrd := make([]byte, 2<<20)
	r := rand.NewChaCha8([32]byte{'f', 'l', 'e', 'e', 't'})
	r.Read(initrd)
	for p, b := range map[string][]byte{
		u.osrel:   []byte("ID=debian\nVERSION_ID=12\nIMAGE_ID=fleetbox\n"),
		u.cmdline: []byte("console=ttyS0 systemd.firstboot=off"),
		u.initrd:  initrd,
	} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	// The stub's image ends below 0x20000 (SizeOfImage 0x19300, ImageBase 0).
	cmd := exec.Command(objcopy,
		"--add-section", ".osrel="+u.osrel, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+u.cmdline, "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+u.kernel, "--change-section-vma", ".linux=0x40000",
		"--add-section", ".initrd="+u.initrd, "--change-section-vma", ".initrd=0x2000000",
		stubPath, u.path)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("objcopy: %v\n%s", err, out)
	}
	return u
}

// TestPCR11MatchesSystemdMeasure: the UKI section measurements equal what
// systemd-measure computes (sha384 bank) from the same files. "--phase="
// gives the value after the sections alone; "enter-initrd" adds one more
// extend with SHA-384("enter-initrd"), which checks that reading.
func TestPCR11MatchesSystemdMeasure(t *testing.T) {
	tool := "/usr/lib/systemd/systemd-measure"
	if _, err := os.Stat(tool); err != nil {
		t.Skip("systemd-measure not installed (apt-get install systemd)")
	}
	b := buildUKI(t)
	img, err := os.ReadFile(b.path)
	if err != nil {
		t.Fatal(err)
	}
	u, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	got := PCR11(u)
	args := []string{"calculate", "--bank=sha384", "--linux=" + b.kernel, "--osrel=" + b.osrel, "--cmdline=" + b.cmdline, "--initrd=" + b.initrd}
	// A stub of 253 or later also measures the .sbat section it carries
	// itself (Debian's 252 does not; bookworm-backports' 254 does), so
	// systemd-measure must be given it too.
	if sbat := u.SectionData(".sbat"); sbat != nil && u.StubVersion >= 253 {
		p := filepath.Join(t.TempDir(), "sbat")
		if err := os.WriteFile(p, sbat, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--sbat="+p)
	}
	measure := func(phase string) string {
		out, err := exec.Command(tool, append(args, "--phase="+phase)...).CombinedOutput()
		m := regexp.MustCompile(`11:sha384=([0-9a-f]{96})`).FindSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("systemd-measure: %v\n%s", err, out)
		}
		return string(m[1])
	}
	if want := measure(""); got.String() != want {
		t.Errorf("PCR11 %s, systemd-measure %s (stub %d, sections %v)", got, want, u.StubVersion, MeasuredSections(u.StubVersion))
	}
	phase := eventlog.Extend(got, sha512.Sum384([]byte("enter-initrd")))
	if want := measure("enter-initrd"); phase.String() != want {
		t.Errorf("PCR11+enter-initrd %s, systemd-measure %s", phase, want)
	}
}

// Constant events, pinned by the digests in real OVMF event logs (dstack's
// quote-report, which also replays to its quote).
func TestConstantEventsMatchRealLog(t *testing.T) {
	want := map[string]string{
		ActionCallingEFIApp:      "77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71",
		ActionExitBootServices:   "214b0bef1379756011344877743fdc2a5382bac6e70362d624ccf3f654407c1b4badf7d8f9295dd3dabdef65b27677e0",
		ActionExitBootServicesOK: "0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74",
		"separator":              "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0",
	}
	l, err := eventlog.ParseJSON(readFile(t, tdxData+"/derived/dstack_quote-report.eventlog.json"))
	if err != nil {
		t.Fatal(err)
	}
	logged := map[string]string{}
	for _, e := range l.Events {
		switch e.Type {
		case eventlog.EvEFIAction:
			logged[string(e.Data)] = e.Digest.String()
		case eventlog.EvSeparator:
			logged["separator"] = e.Digest.String()
		}
	}
	p := predictTest(t, nil)
	for _, e := range p.Events {
		key := string(e.Data)
		if e.Type == eventlog.EvSeparator {
			key = "separator"
		} else if e.Type != eventlog.EvEFIAction {
			continue
		}
		if logged[key] != e.Digest.String() {
			t.Errorf("%q: predicted %s, real log %s", key, e.Digest, logged[key])
		}
		delete(want, key)
	}
	if len(want) != 0 {
		t.Errorf("constant events not predicted: %v", want)
	}
}

// Tagged-event data for the Linux EFI stub events equals the payloads in
// the real dstack log (kernel with CC measurement support).
func TestKernelTaggedEventsMatchRealLog(t *testing.T) {
	l, err := eventlog.ParseJSON(readFile(t, tdxData+"/derived/dstack_quote-report.eventlog.json"))
	if err != nil {
		t.Fatal(err)
	}
	var real [][]byte
	for _, e := range l.Events {
		if e.Type == eventlog.EvEventTag {
			real = append(real, e.Data)
		}
	}
	yes := true
	p := predictTest(t, func(in *Input) { in.KernelMeasuresCC = &yes })
	var got [][]byte
	for _, e := range p.Events {
		if e.Type == eventlog.EvEventTag {
			got = append(got, e.Data)
		}
	}
	if len(got) != 2 || len(real) != 2 || !bytes.Equal(got[0], real[0]) || !bytes.Equal(got[1], real[1]) {
		t.Fatalf("tagged event data %x, real log %x", got, real)
	}
}

func readFile(tb testing.TB, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Skipf("test data not available: %v", err)
	}
	return b
}

func predictTest(tb testing.TB, mod func(*Input)) *Prediction {
	b := buildUKI(tb)
	img, err := os.ReadFile(b.path)
	if err != nil {
		tb.Fatal(err)
	}
	boot, err := os.ReadFile(bootPath)
	if err != nil {
		tb.Skipf("systemd-boot not installed: %v", err)
	}
	in := &Input{UKI: img, Bootloader: boot}
	if mod != nil {
		mod(in)
	}
	p, err := Predict(in)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestPredictBookworm: Debian bookworm's stub (252) and kernel (6.1) do not
// measure into RTMRs, so RTMR2 stays zero and RTMR1 holds the firmware's
// events, the bootloader, the UKI and the kernel the stub loads. The expected RTMR1 is replayed here
// from digests taken from other sources: the constant events from the real
// log above, and the Authenticode digests checked against pesign and
// osslsigncode in measure/pe.
func TestPredictBookworm(t *testing.T) {
	p := predictTest(t, nil)
	if p.StubVersion != 252 || !strings.HasPrefix(p.KernelVersion, "6.1.") {
		t.Skipf("not bookworm's stub and kernel (stub %d, kernel %q)", p.StubVersion, p.KernelVersion)
	}
	var types []string
	for _, e := range p.Events {
		types = append(types, eventlog.TypeName(e.Type))
		if e.Source == "" {
			t.Errorf("event %d has no source", e.Seq)
		}
	}
	wantTypes := "EV_EFI_ACTION EV_SEPARATOR EV_EFI_BOOT_SERVICES_APPLICATION EV_EFI_BOOT_SERVICES_APPLICATION EV_EFI_BOOT_SERVICES_APPLICATION EV_EFI_ACTION EV_EFI_ACTION"
	if strings.Join(types, " ") != wantTypes {
		t.Fatalf("events %v, want %s", types, wantTypes)
	}
	if p.RTMR2 != ([48]byte{}) {
		t.Errorf("rtmr2 %s, want zero", p.RTMR2)
	}
	hexd := func(s string) eventlog.Digest {
		var d eventlog.Digest
		b, _ := hex.DecodeString(s)
		copy(d[:], b)
		return d
	}
	var r [48]byte
	for _, d := range []eventlog.Digest{
		hexd("77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71"),
		hexd("394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0"),
		eventlog.Digest(*p.BootloaderAuthenticode),
		eventlog.Digest(p.UKIAuthenticode),
		eventlog.Digest(*p.KernelAuthenticode),
		hexd("214b0bef1379756011344877743fdc2a5382bac6e70362d624ccf3f654407c1b4badf7d8f9295dd3dabdef65b27677e0"),
		hexd("0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74"),
	} {
		r = eventlog.Extend(r, d)
	}
	if p.RTMR1 != r {
		t.Errorf("rtmr1 %s, replay %x", p.RTMR1, r)
	}
}

// TestPredictNewStub: a stub that measures (255+) adds the UKI sections to
// RTMR2; those events alone replay to systemd-measure's PCR 11 value, and
// the load options systemd-boot passes are measured around them.
func TestPredictNewStub(t *testing.T) {
	yes := true
	p := predictTest(t, func(in *Input) { in.StubMeasuresCC = &yes })
	var sections, pcr12 []eventlog.Event
	for _, e := range p.Events {
		switch e.PCR {
		case 11:
			sections = append(sections, e)
		case 12:
			pcr12 = append(pcr12, e)
		}
	}
	if r := eventlog.Replay(sections); p.PCR11 == nil || r[2] != *p.PCR11 {
		t.Errorf("section events replay to %s, pcr11 %v", r[2], p.PCR11)
	}
	want := sha512.Sum384(utf16z("console=ttyS0 systemd.firstboot=off"))
	if len(pcr12) != 2 || pcr12[0].Digest != want || pcr12[1].Digest != want {
		t.Errorf("load-options events %v", pcr12)
	}
	// A command line from a loader entry replaces the UKI's.
	cl := "console=ttyS0 evil=1"
	p2 := predictTest(t, func(in *Input) { in.StubMeasuresCC = &yes; in.Cmdline = &cl })
	if p2.RTMR2 == p.RTMR2 {
		t.Error("loader command line does not change rtmr2")
	}
}

// TestGPTEventFromRealLog rebuilds a disk from the EV_EFI_GPT_EVENT in
// go-tdx-guest's GCE CCEL (header at LBA 1, entries where the header says)
// and checks GPTEventData reproduces the logged event data, CRCs included.
func TestGPTEventFromRealLog(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-tdx-guest").Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Skipf("go-tdx-guest not in the module cache: %v", err)
	}
	l, err := eventlog.ParseCCEL(readFile(t, filepath.Join(strings.TrimSpace(string(out)), "testing/testdata/ccel/ccel_data.dat")))
	if err != nil {
		t.Fatal(err)
	}
	var ev []byte
	for _, e := range l.Events {
		if e.Type == eventlog.EvEFIGPTEvent {
			ev = e.Data
		}
	}
	if ev == nil {
		t.Fatal("no GPT event in the log")
	}
	hdr := ev[:92]
	n := binary.LittleEndian.Uint64(ev[92:])
	entLBA := binary.LittleEndian.Uint64(hdr[72:])
	size := binary.LittleEndian.Uint32(hdr[84:])
	disk := make([]byte, int(entLBA)*512+int(binary.LittleEndian.Uint32(hdr[80:]))*int(size))
	copy(disk[512:], hdr)
	copy(disk[int(entLBA)*512:], ev[100:100+int(n)*int(size)])
	got, err := GPTEventData(bytes.NewReader(disk), 512)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ev) {
		t.Fatal("GPT event data differs from the real log")
	}
	// The digest the log holds is SHA-384 of that data.
	bad := bytes.Clone(disk)
	bad[512+40] ^= 1
	if _, err := GPTEventData(bytes.NewReader(bad), 512); err == nil {
		t.Error("corrupt GPT header accepted")
	}
	if _, err := GPTEventData(bytes.NewReader(make([]byte, 4096)), 512); err != ErrNoGPT {
		t.Errorf("blank disk: %v, want ErrNoGPT", err)
	}
}

func TestOpenRejects(t *testing.T) {
	stub, err := os.ReadFile(stubPath)
	if err != nil {
		t.Skip("systemd-stub not installed")
	}
	if _, err := Open(stub); err != ErrNotUKI {
		t.Errorf("bare stub: %v, want ErrNotUKI", err)
	}
	if _, err := Open([]byte("not a PE")); err == nil {
		t.Error("garbage accepted")
	}
}

// BenchmarkRTMR12 measures the RTMR1/RTMR2 prediction for the ~10 MiB UKI
// (bootloader, UKI and kernel Authenticode, section digests).
func BenchmarkRTMR12(b *testing.B) {
	u := buildUKI(b)
	img, err := os.ReadFile(u.path)
	if err != nil {
		b.Fatal(err)
	}
	boot, _ := os.ReadFile(bootPath)
	yes := true
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := Predict(&Input{UKI: img, Bootloader: boot, StubMeasuresCC: &yes, KernelMeasuresCC: &yes}); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzGPTEventData(f *testing.F) {
	// A minimal valid GPT: header at LBA 1, one entry at LBA 2.
	disk := make([]byte, 3*512+128)
	h := disk[512:]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x10000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], 1)
	binary.LittleEndian.PutUint32(h[84:], 128)
	disk[1024] = 1 // non-zero type GUID
	binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(disk[1024:1024+128]))
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	if _, err := GPTEventData(bytes.NewReader(disk), 512); err != nil {
		f.Fatalf("seed: %v", err)
	}
	f.Add(disk)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := GPTEventData(bytes.NewReader(b), 512)
		if err == nil && len(d) < 100 {
			t.Fatalf("event data of %d bytes", len(d))
		}
	})
}
