package uki

import (
	"crypto/sha512"
	"fmt"

	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// The initrd systemd-stub hands the kernel, which the kernel's EFI stub
// measures as its "Linux initrd" tagged event. systemd src/boot/efi/stub.c
// (run, extend_initrds, combine_initrds): the UKI's .ucode, its .initrd,
// then the initrds the stub generates, each padded with zeros to a multiple
// of 4 bytes; a single initrd is passed as it is, unpadded. From systemd
// 257 the generated ones include a cpio archive for each of the .pcrsig,
// .pcrpkey, .osrel and .profile sections the UKI has (generate_embedded_
// initrds), placed under /.extra, in that order (the INITRD_* enum). The
// ones the stub picks up from the ESP (credentials, system extensions,
// configuration extensions) are not predicted: the appliance's ESP holds
// none, and a host that adds some changes RTMR2 (their cpios are measured).
var embeddedInitrds = []struct{ section, file string }{
	{".pcrsig", "tpm2-pcr-signature.json"},
	{".pcrpkey", "tpm2-pcr-public-key.pem"},
	{".osrel", "os-release"},
	{".profile", "profile"},
}

// kernelInitrdDigest is SHA-384 of the initrd the kernel receives, or false
// when the UKI has no initrd at all.
func kernelInitrdDigest(u *UKI) (eventlog.Digest, bool) {
	var parts [][]byte
	if d := u.SectionData(".ucode"); d != nil && u.StubVersion >= 256 {
		parts = append(parts, d)
	}
	if d := u.SectionData(".initrd"); d != nil {
		parts = append(parts, d)
	}
	if u.StubVersion >= 257 || u.StubVersion == 0 {
		for _, e := range embeddedInitrds {
			if d := u.SectionData(e.section); d != nil {
				parts = append(parts, extraCpio(e.file, d))
			}
		}
	}
	if len(parts) == 0 {
		return eventlog.Digest{}, false
	}
	h := sha512.New384()
	if len(parts) == 1 {
		h.Write(parts[0])
	} else {
		var zero [3]byte
		for _, p := range parts {
			h.Write(p)
			h.Write(zero[:pad4(len(p))])
		}
	}
	var d eventlog.Digest
	h.Sum(d[:0])
	return d, true
}

func pad4(n int) int { return (4 - n%4) % 4 }

// extraCpio builds the archive systemd-stub makes of a section (systemd
// src/boot/efi/cpio.c, pack_cpio_literal): the directory ".extra" (inode 1,
// mode 0555), the file ".extra/NAME" (inode 2, mode 0444) holding data, and
// the trailer, in the "newc" format (the kernel's
// Documentation/driver-api/early-userspace/buffer-format.rst) with uid,
// gid, mtime and devices zero and nlink 1, names and contents padded to 4
// bytes from the start of the archive.
func extraCpio(name string, data []byte) []byte {
	var b []byte
	entry := func(ino, mode uint32, path string, content []byte) {
		b = fmt.Appendf(b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, mode, 0, 0, 1, 0, len(content), 0, 0, 0, 0, len(path)+1, 0)
		b = append(b, path...)
		b = append(b, 0)
		b = append(b, make([]byte, pad4(len(b)))...)
		b = append(b, content...)
		b = append(b, make([]byte, pad4(len(b)))...)
	}
	const dir, reg = 0o040000, 0o100000
	entry(1, dir|0o555, ".extra", nil)
	entry(2, reg|0o444, ".extra/"+name, data)
	// The trailer is a literal in cpio.c (pack_cpio_trailer), name size
	// written "0000000B" in capitals, unlike the generated headers.
	return append(b, cpioTrailer...)
}

const cpioTrailer = "070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" +
	"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000B" + "00000000" +
	"TRAILER!!!\x00\x00\x00\x00"
