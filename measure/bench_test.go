package measure

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/fleetbox/fleetbox/measure/tdvf"
	"github.com/fleetbox/fleetbox/measure/uki"
)

// BenchmarkFirmwareAndUKI is the performance figure: MRTD of
// Debian's OVMF.fd (bookworm's is 2 MiB; all three page orders) plus RTMR1
// and RTMR2 of a UKI of about 10 MiB (Debian's stub and kernel, a 2 MiB
// initrd), with systemd-boot, as `fleetbox measure image` computes them;
// hashing runs concurrently, so the figure depends on idle cores.
//
//	go test -run '^$' -bench BenchmarkFirmwareAndUKI -benchtime 20x ./measure
func BenchmarkFirmwareAndUKI(b *testing.B) {
	fw, err := os.ReadFile(debianOVMF)
	if err != nil {
		b.Skipf("%v (apt-get install ovmf)", err)
	}
	objcopy, err := exec.LookPath("objcopy")
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	if err != nil || len(ks) == 0 {
		b.Skip("needs objcopy and a kernel in /boot (apt-get install binutils linux-image-amd64)")
	}
	boot, err := os.ReadFile(bootPath)
	if err != nil {
		b.Skipf("%v (apt-get install systemd-boot-efi)", err)
	}
	dir := b.TempDir()
	initrd := make([]byte, 2<<20)
	rand.NewChaCha8([32]byte{2}).Read(initrd)
	if err := os.WriteFile(filepath.Join(dir, "initrd"), initrd, 0o644); err != nil {
		b.Fatal(err)
	}
	ukiPath := filepath.Join(dir, "uki.efi")
	if out, err := exec.Command(objcopy,
		"--add-section", ".linux="+ks[0], "--change-section-vma", ".linux=0x40000",
		"--add-section", ".initrd="+filepath.Join(dir, "initrd"), "--change-section-vma", ".initrd=0x2000000",
		stubPath, ukiPath).CombinedOutput(); err != nil {
		b.Fatalf("objcopy: %v\n%s", err, out)
	}
	img, err := os.ReadFile(ukiPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("firmware %d bytes, UKI %d bytes", len(fw), len(img))
	yes := true
	for name, in := range map[string]*uki.Input{
		// Debian bookworm: stub 252 and kernel 6.1 measure nothing into RTMRs.
		"bookworm": {UKI: img, Bootloader: boot},
		// A stub and kernel that measure: every section hashed as well.
		"measuring-stub-and-kernel": {UKI: img, Bootloader: boot, StubMeasuresCC: &yes, KernelMeasuresCC: &yes},
	} {
		b.Run(name, func(b *testing.B) { benchImage(b, fw, in) })
	}
}

func benchImage(b *testing.B, fw []byte, in *uki.Input) {
	b.SetBytes(int64(len(fw) + len(in.UKI)))
	for b.Loop() {
		md, err := tdvf.Parse(fw)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := md.MRTDs(fw, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := uki.Predict(in); err != nil {
			b.Fatal(err)
		}
	}
}
