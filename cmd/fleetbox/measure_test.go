package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
)

const measureShared = "../../../shared/testdata/tdx"

// runMeasureCLI runs the fleetbox command line in process.
func runMeasureCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func needFile(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%v (see measure/README.md for the packages tests need)", err)
	}
}

func TestMeasureMRTD(t *testing.T) {
	needFile(t, "/usr/share/ovmf/OVMF.fd")
	code, out, _ := runMeasureCLI(t, "measure", "mrtd", "--firmware", "/usr/share/ovmf/OVMF.fd", "--order", "single-pass")
	if code != exitOK || !strings.Contains(out, "order=single-pass") || strings.Contains(out, "two-pass") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.fd")
	os.WriteFile(bad, make([]byte, 4096), 0o644)
	if code, _, errs := runMeasureCLI(t, "measure", "mrtd", "--firmware", bad); code != exitUsage || !strings.Contains(errs, "no TDVF metadata") {
		t.Errorf("blank firmware: exit %d, %s", code, errs)
	}
	if code, _, _ := runMeasureCLI(t, "measure", "mrtd", "--firmware", bad, "--order", "three-pass"); code != exitUsage {
		t.Errorf("bad order: exit %d", code)
	}
}

// all-regions measures the TD HOB, which Google Cloud builds from the
// launch options: with a zero HOB its MRTD differs from what the platform
// reports, so it needs --td-hob (before, zeros were used silently).
func TestMeasureMRTDAllRegionsNeedsTDHOB(t *testing.T) {
	needFile(t, "/usr/share/ovmf/OVMF.fd")
	code, out, errs := runMeasureCLI(t, "measure", "mrtd", "--firmware", "/usr/share/ovmf/OVMF.fd", "--order", "all-regions")
	if code != exitUsage || !strings.Contains(errs, "--td-hob") || strings.Contains(out, "order=all-regions") {
		t.Fatalf("all-regions without --td-hob: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runMeasureCLI(t, "measure", "mrtd", "--firmware", "/usr/share/ovmf/OVMF.fd")
	if code != exitOK || strings.Contains(out, "order=all-regions") || !strings.Contains(errs, "all-regions left out") {
		t.Fatalf("every order without --td-hob: exit %d\n%s\n%s", code, out, errs)
	}
	hob := filepath.Join(t.TempDir(), "hob.bin")
	os.WriteFile(hob, []byte{1, 2, 3}, 0o644)
	code, out, errs = runMeasureCLI(t, "measure", "mrtd", "--firmware", "/usr/share/ovmf/OVMF.fd", "--order", "all-regions", "--td-hob", hob)
	if code != exitOK || !strings.Contains(out, "order=all-regions") {
		t.Fatalf("all-regions with --td-hob: exit %d\n%s\n%s", code, out, errs)
	}
}

func TestMeasureEventlogAgainstQuote(t *testing.T) {
	logPath := measureShared + "/derived/near-mpc_eventlog.json"
	quote := measureShared + "/derived/near-mpc_quote.bin"
	needFile(t, logPath)
	code, out, errs := runMeasureCLI(t, "measure", "eventlog", "--log", logPath, "--quote", quote)
	if code != exitOK || strings.Count(out, ": match") != 4 {
		t.Fatalf("exit %d:\n%s%s", code, out, errs)
	}
	// One runtime event changed: exit 1, the register and the event named.
	var evs []map[string]any
	b, _ := os.ReadFile(logPath)
	json.Unmarshal(b, &evs)
	evs[23]["event_payload"] = "abab"
	b, _ = json.Marshal(evs)
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, b, 0o644)
	code, out, _ = runMeasureCLI(t, "measure", "eventlog", "--log", bad, "--quote", quote, "--expect", logPath)
	if code != exitNo || !strings.Contains(out, "rtmr3: MISMATCH") || !strings.Contains(out, `! #23`) ||
		!strings.Contains(out, `"instance-id"`) || !strings.Contains(out, "diff: rtmr3: changed #23") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestMeasureImageAndPolicy(t *testing.T) {
	for _, p := range []string{"/usr/share/ovmf/OVMF.fd", "/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"} {
		needFile(t, p)
	}
	objcopy, err := exec.LookPath("objcopy")
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	if err != nil || len(ks) == 0 {
		t.Skip("needs objcopy and a kernel in /boot")
	}
	dir := t.TempDir()
	prod := filepath.Join(dir, "prod")
	os.MkdirAll(prod, 0o755)
	os.WriteFile(filepath.Join(prod, "cmdline"), []byte("console=ttyS0"), 0o644)
	if out, err := exec.Command(objcopy,
		"--add-section", ".cmdline="+filepath.Join(prod, "cmdline"), "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+ks[0], "--change-section-vma", ".linux=0x40000",
		"/usr/lib/systemd/boot/efi/linuxx64.efi.stub", filepath.Join(prod, "fleetbox.efi")).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(prod, "fleetbox.conf"), []byte("x = 1\n"), 0o644)

	// measure boot writes its prediction as a log that measure eventlog
	// diffs against; a changed bootloader digest is named.
	pred := filepath.Join(dir, "predicted.json")
	code, out, errs := runMeasureCLI(t, "measure", "boot", "--uki", filepath.Join(prod, "fleetbox.efi"),
		"--bootloader", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "--log-out", pred)
	if code != exitOK || !strings.Contains(out, "rtmr1 ") || !strings.Contains(out, "rtmr0 not predicted") {
		t.Fatalf("measure boot: exit %d\n%s%s", code, out, errs)
	}
	if code, out, _ := runMeasureCLI(t, "measure", "eventlog", "--log", pred, "--expect", pred); code != exitOK || !strings.Contains(out, "events match") {
		t.Fatalf("self diff: exit %d\n%s", code, out)
	}
	var pevs []map[string]any
	pb, _ := os.ReadFile(pred)
	json.Unmarshal(pb, &pevs)
	pevs[2]["digest"] = strings.Repeat("11", 48)
	pb, _ = json.Marshal(pevs)
	changed := filepath.Join(dir, "changed.json")
	os.WriteFile(changed, pb, 0o644)
	if code, out, _ := runMeasureCLI(t, "measure", "eventlog", "--log", changed, "--expect", pred); code != exitNo ||
		!strings.Contains(out, "diff: rtmr1: changed #2 EV_EFI_BOOT_SERVICES_APPLICATION") {
		t.Fatalf("changed bootloader: exit %d\n%s", code, out)
	}

	code, _, errs = runMeasureCLI(t, "measure", "image", dir, "--firmware", "/usr/share/ovmf/OVMF.fd")
	if code != exitOK || !strings.Contains(errs, "profile prod:") {
		t.Fatalf("measure image: exit %d\n%s", code, errs)
	}
	mj := filepath.Join(dir, "measurements.json")

	// A boot whose log equals the prediction matches measurements.json's
	// events; built here from measure boot and measure rtmr3.
	bootLog, rtLog := filepath.Join(dir, "boot.json"), filepath.Join(dir, "rt.json")
	if code, _, errs := runMeasureCLI(t, "measure", "boot", "--uki", filepath.Join(prod, "fleetbox.efi"), "--log-out", bootLog); code != exitOK {
		t.Fatalf("measure boot: %s", errs)
	}
	if code, _, errs := runMeasureCLI(t, "measure", "rtmr3", "--profile", "prod", "--config", filepath.Join(prod, "fleetbox.conf"), "--log-out", rtLog); code != exitOK {
		t.Fatalf("measure rtmr3: %s", errs)
	}
	var all []map[string]any
	for _, p := range []string{bootLog, rtLog} {
		var part []map[string]any
		b, _ := os.ReadFile(p)
		json.Unmarshal(b, &part)
		all = append(all, part...)
	}
	full, _ := json.Marshal(all)
	fullLog := filepath.Join(dir, "full.json")
	os.WriteFile(fullLog, full, 0o644)
	if code, out, errs := runMeasureCLI(t, "measure", "eventlog", "--log", fullLog, "--expect", mj, "--profile", "prod"); code != exitOK || !strings.Contains(out, "events match") {
		t.Fatalf("against measurements.json: exit %d\n%s%s", code, out, errs)
	}
	adm, kms := filepath.Join(dir, "adm.json"), filepath.Join(dir, "kms.json")
	if code, _, errs := runMeasureCLI(t, "policy", "from-measurements", mj, "--out", adm, "--kms-out", kms); code != exitUsage || !strings.Contains(errs, "rtmr0") {
		t.Fatalf("no rtmr0: exit %d %s", code, errs)
	}
	if _, err := os.Stat(adm); err == nil {
		t.Fatal("a policy was written without rtmr0")
	}
	quote := measureShared + "/derived/near-mpc_quote.bin"
	needFile(t, quote)
	code, _, errs = runMeasureCLI(t, "policy", "from-measurements", "--rtmr0-quote", quote, "--out", adm, "--kms-out", kms, mj)
	if code != exitOK {
		t.Fatalf("exit %d %s", code, errs)
	}
	for _, p := range []string{adm, kms} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		pol, err := attest.ParsePolicy(b)
		if err != nil {
			t.Fatal(err)
		}
		if pol.AllowedRtmr0[0] != "e673be2f70beefb70b48a6109eed4715d7270d4683b3bf356fa25fafbf1aa76e39e9127e6e688ccda98bdab1d4d47f46" || len(pol.AllowedMrtd) != 3 {
			t.Errorf("%s: %+v", p, pol)
		}
	}
	code, out, errs = runMeasureCLI(t, "policy", "from-measurements", "--waive", "rtmr0", "--out", "-", "--kms-out", kms, mj)
	if code != exitOK || !strings.Contains(out, `"*"`) || !strings.Contains(errs, "warning: rtmr0 is waived") {
		t.Fatalf("waive: exit %d\n%s\n%s", code, out, errs)
	}
}
