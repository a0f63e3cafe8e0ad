package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Two FAT images made with the same content two seconds apart differ in
// the directory entries mmd stamps with the current time; clamped to one
// epoch they are identical, and nothing is later than the epoch.
func TestClampMakesImagesIdentical(t *testing.T) {
	for _, tool := range []string{"mkfs.fat", "mmd", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (dosfstools, mtools)", tool)
		}
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "BOOTX64.EFI")
	os.WriteFile(src, []byte("an EFI binary"), 0o644)
	os.Chtimes(src, time.Unix(1700000000, 0), time.Unix(1700000000, 0))
	make := func(name string, sizeMB int) string {
		img := filepath.Join(dir, name)
		run := func(args ...string) {
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
		}
		run("mkfs.fat", "-C", "--invariant", "-i", "12345678", img, strconv.Itoa(sizeMB*1024))
		run("mmd", "-i", img, "::/EFI", "::/EFI/BOOT")
		run("mcopy", "-i", img, "-m", src, "::/EFI/BOOT/BOOTX64.EFI")
		return img
	}
	epoch := time.Unix(1750000000, 0).UTC()
	for _, size := range []int{40, 300} { // FAT16 and FAT32
		a := make("a.img", size)
		time.Sleep(2100 * time.Millisecond)
		b := make("b.img", size)
		ba, _ := os.ReadFile(a)
		bb, _ := os.ReadFile(b)
		if bytes.Equal(ba, bb) {
			t.Fatalf("%d MB: the two images are equal before clamping; the test shows nothing", size)
		}
		for _, img := range []string{a, b} {
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			fs, err := openFAT(f, 0)
			if err != nil {
				t.Fatal(err)
			}
			n, err := fs.clamp(epoch)
			f.Close()
			if err != nil || n == 0 {
				t.Fatalf("%d MB: clamp: %d, %v", size, n, err)
			}
		}
		ba, _ = os.ReadFile(a)
		bb, _ = os.ReadFile(b)
		if !bytes.Equal(ba, bb) {
			t.Fatalf("%d MB: the images still differ after clamping", size)
		}
		// The copied file kept its older mtime (only later times clamp).
		out, err := exec.Command("mdir", "-i", a, "::/EFI/BOOT").CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("2023-11-14")) && !bytes.Contains(out, []byte("11-14-2023")) {
			t.Fatalf("%d MB: the file's own mtime was not kept: %v\n%s", size, err, out)
		}
		os.Remove(a)
		os.Remove(b)
	}
}

func TestFATDateTime(t *testing.T) {
	d, tm := fatDateTime(time.Date(2026, 11, 27, 19, 23, 12, 0, time.UTC))
	if d != (46<<9|11<<5|27) || tm != (19<<11|23<<5|6) {
		t.Fatalf("%#x %#x", d, tm)
	}
}
