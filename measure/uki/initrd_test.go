package uki

import (
	"crypto/sha512"
	"encoding/hex"
	"testing"
)

// The cpio systemd-stub 257 makes of a .osrel section, and the combined
// initrd, against digests computed independently from the format in
// systemd src/boot/efi/cpio.c. The same rule reproduced the "Linux initrd"
// event of a real boot of the dev image (OVMF with a vTPM, systemd-stub
// 257.13, kernel 7.3), which the .initrd section alone did not.
func TestExtraCpio(t *testing.T) {
	c := extraCpio("os-release", []byte("ID=debian\n"))
	d := sha512.Sum384(c)
	if len(c) != 384 || hex.EncodeToString(d[:]) != "feae955492100e2cb017eb9282aff564864da27e590fb513c61c7bbcc1bb62a8cff5531579bd686e507fdd282d778604" {
		t.Fatalf("cpio of %d bytes, sha384 %x", len(c), d)
	}
	h := sha512.New384()
	h.Write([]byte("xxxxx\x00\x00\x00"))
	h.Write(c)
	if hex.EncodeToString(h.Sum(nil)) != "136a44eabda7114f163723229ecbd3f54bd66d34b865a01687261c26d74b4786ac5467bb9c9b1b1cf6b659a89aef638c" {
		t.Fatal("padding of the combined initrd")
	}
}
