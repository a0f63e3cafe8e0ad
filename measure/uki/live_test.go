package uki

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// TestLiveBootMatchesPrediction boots a real image and compares the
// firmware's own event log with the prediction, event by event. It is slow
// (a TCG boot, about 20 s) and needs QEMU, swtpm and disk tools, so it runs
// only with FLEETBOX_BOOT_TEST=1.
//
// No TDX is needed: Debian's OVMF.fd with a vTPM (swtpm) logs the same
// image, GPT, action and stub events through the same measuring code
// (DxeTpm2MeasureBootLib, systemd-boot/stub 252, the kernel EFI stub), into
// PCRs instead of RTMRs. The comparison is per PCR, separators excepted:
// TPM firmware logs one per PCR 0-7, TDX firmware one per RTMR (as the real
// CC logs in the shared test data show). Systemd 252 and kernel 6.1 measure
// into a TPM, so the prediction is made with stub and kernel measuring on.
//
// The disk: GPT with one EFI system partition holding systemd-boot as
// \EFI\BOOT\BOOTX64.EFI, the UKI in \EFI\Linux and loader.conf "timeout 0";
// the UKI's initrd is testdata/dumplog, which prints the log and powers off.
func TestLiveBootMatchesPrediction(t *testing.T) {
	if os.Getenv("FLEETBOX_BOOT_TEST") != "1" {
		t.Skip("set FLEETBOX_BOOT_TEST=1 to boot OVMF with a vTPM under QEMU (about 20 s)")
	}
	tools := map[string]string{}
	for _, name := range []string{"qemu-system-x86_64", "swtpm", "swtpm_setup", "sfdisk", "mkfs.vfat", "mmd", "mcopy", "cpio", "objcopy", "go"} {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("%s not installed (apt-get install qemu-system-x86 swtpm swtpm-tools fdisk dosfstools mtools cpio binutils)", name)
		}
		tools[name] = p
	}
	for _, p := range []string{stubPath, bootPath, "/usr/share/ovmf/OVMF.fd"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%v (apt-get install systemd-boot-efi ovmf)", err)
		}
	}
	kernel := kernelPath(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, tools[name], args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	file := func(name string) string { return filepath.Join(dir, name) }

	// The initrd: a static /init.
	build := exec.CommandContext(ctx, tools["go"], "build", "-o", file("init"), "./testdata/dumplog")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building dumplog: %v\n%s", err, out)
	}
	cpio := exec.CommandContext(ctx, tools["cpio"], "-o", "-H", "newc")
	cpio.Dir, cpio.Stdin = dir, strings.NewReader("init\n")
	initrd, err := cpio.Output()
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	must(t, os.WriteFile(file("initrd.cpio"), initrd, 0o644))
	must(t, os.WriteFile(file("cmdline"), []byte("console=ttyS0 panic=-1"), 0o644))
	must(t, os.WriteFile(file("osrel"), []byte("ID=debian\n"), 0o644))
	run("objcopy",
		"--add-section", ".osrel=osrel", "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline=cmdline", "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+kernel, "--change-section-vma", ".linux=0x40000",
		"--add-section", ".initrd=initrd.cpio", "--change-section-vma", ".initrd=0x2000000",
		stubPath, "uki.efi")

	// The disk.
	const espSectors = 118784
	must(t, os.WriteFile(file("disk.raw"), nil, 0o644))
	must(t, os.Truncate(file("disk.raw"), 64<<20))
	sf := exec.CommandContext(ctx, tools["sfdisk"], "-q", "disk.raw")
	sf.Dir = dir
	sf.Stdin = strings.NewReader(fmt.Sprintf("label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\n"+
		"start=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=66666666-7777-8888-9999-000000000000, name=\"esp\"\n", espSectors))
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	must(t, os.WriteFile(file("esp.img"), nil, 0o644))
	must(t, os.Truncate(file("esp.img"), espSectors*512))
	run("mkfs.vfat", "-F", "32", "-i", "12345678", "esp.img")
	must(t, os.WriteFile(file("loader.conf"), []byte("timeout 0\neditor no\n"), 0o644))
	run("mmd", "-i", "esp.img", "::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader")
	run("mcopy", "-i", "esp.img", bootPath, "::/EFI/BOOT/BOOTX64.EFI")
	run("mcopy", "-i", "esp.img", "uki.efi", "::/EFI/Linux/fleetbox.efi")
	run("mcopy", "-i", "esp.img", "loader.conf", "::/loader/loader.conf")
	esp, err := os.ReadFile(file("esp.img"))
	must(t, err)
	disk, err := os.OpenFile(file("disk.raw"), os.O_RDWR, 0)
	must(t, err)
	_, err = disk.WriteAt(esp, 2048*512)
	must(t, err)
	must(t, disk.Close())

	// The vTPM, with a SHA-384 bank, and the boot.
	must(t, os.MkdirAll(file("tpm"), 0o755))
	run("swtpm_setup", "--tpm2", "--tpm-state", file("tpm"), "--pcr-banks", "sha256,sha384", "--overwrite")
	sock := file("swtpm.sock")
	swtpm := exec.CommandContext(ctx, tools["swtpm"], "socket", "--tpm2", "--tpmstate", "dir="+file("tpm"),
		"--ctrl", "type=unixio,path="+sock, "--terminate")
	must(t, swtpm.Start())
	t.Cleanup(func() { _ = swtpm.Process.Kill(); _ = swtpm.Wait() })
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fw, err := os.ReadFile("/usr/share/ovmf/OVMF.fd")
	must(t, err)
	must(t, os.WriteFile(file("ovmf.fd"), fw, 0o644))
	run("qemu-system-x86_64", "-nodefaults", "-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1",
		"-display", "none", "-serial", "file:"+file("serial.log"), "-monitor", "none", "-no-reboot",
		"-drive", "if=pflash,format=raw,file="+file("ovmf.fd"),
		"-drive", "if=none,id=d0,format=raw,file="+file("disk.raw")+",snapshot=on",
		"-device", "virtio-blk-pci,drive=d0,bootindex=0",
		"-chardev", "socket,id=chrtpm,path="+sock, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0")

	serial, err := os.ReadFile(file("serial.log"))
	must(t, err)
	var hx strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(serial))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "EL ") {
			hx.WriteString(l[3:])
		}
	}
	raw, err := hex.DecodeString(hx.String())
	if err != nil || len(raw) == 0 {
		t.Fatalf("no event log on the console (%v):\n%s", err, serial)
	}
	real, err := eventlog.ParseTPMLog(raw)
	if err != nil {
		t.Fatal(err)
	}

	img, err := os.ReadFile(file("uki.efi"))
	must(t, err)
	boot, err := os.ReadFile(bootPath)
	must(t, err)
	f, err := os.Open(file("disk.raw"))
	must(t, err)
	gpt, err := GPTEventData(f, 512)
	f.Close()
	must(t, err)
	yes := true
	pred, err := Predict(&Input{UKI: img, Bootloader: boot, GPTEvent: gpt, StubMeasuresCC: &yes, KernelMeasuresCC: &yes})
	must(t, err)

	perPCR := func(evs []eventlog.Event) map[int][]string {
		m := map[int][]string{}
		for _, e := range evs {
			if e.Type == eventlog.EvSeparator || e.PCR < 2 || e.PCR == 7 {
				continue
			}
			m[e.PCR] = append(m[e.PCR], eventlog.TypeName(e.Type)+" "+e.Digest.String())
		}
		return m
	}
	want, got := perPCR(pred.Events), perPCR(real.Events)
	for _, pcr := range []int{2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15} {
		if strings.Join(want[pcr], "\n") != strings.Join(got[pcr], "\n") {
			t.Errorf("pcr%d:\npredicted:\n  %s\nfirmware log:\n  %s", pcr, strings.Join(want[pcr], "\n  "), strings.Join(got[pcr], "\n  "))
		}
	}
	t.Logf("%d events in PCRs 2-6 and 8-15 match the firmware's log", len(want[4])+len(want[5])+len(want[9])+len(want[11])+len(want[12]))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
