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
// initrd), with systemd-boot, as `fleetbox measure image` computes them.
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
	b.SetBytes(int64(len(fw) + len(img)))
	for b.Loop() {
		md, err := tdvf.Parse(fw)
		if err != nil {
			b.Fatal(err)
		}
		for _, o := range tdvf.Orders {
			if _, err := md.MRTD(fw, o, nil); err != nil {
				b.Fatal(err)
			}
		}
		// Both stub and kernel measuring: the most work (every section and
		// the initrd hashed once more).
		if _, err := uki.Predict(&uki.Input{UKI: img, Bootloader: boot, StubMeasuresCC: &yes, KernelMeasuresCC: &yes}); err != nil {
			b.Fatal(err)
		}
	}
}
