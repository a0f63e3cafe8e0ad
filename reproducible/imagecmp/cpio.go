package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// cpioEntry is one member of a "newc" cpio archive (the kernel's
// Documentation/driver-api/early-userspace/buffer-format.rst).
type cpioEntry struct {
	Name               string
	Mode, UID, GID     uint64
	Mtime, Size, Nlink uint64
	Data               []byte
	Sum                string
}

// key is what must be equal between two builds.
func (e cpioEntry) key(ok bool) string {
	if !ok {
		return "missing"
	}
	return fmt.Sprintf("mode %o uid %d gid %d mtime %d sha256 %s", e.Mode, e.UID, e.GID, e.Mtime, e.Sum)
}

// maxCpioEntries bounds an archive (the appliance's initrd holds about
// 10,000 files).
const maxCpioEntries = 1 << 20

// readCpio reads every member up to the trailer; several concatenated
// archives (as the kernel accepts) are read one after the other.
func readCpio(b []byte) ([]cpioEntry, error) {
	var out []cpioEntry
	off := 0
	for off < len(b) {
		// Zero padding between concatenated archives.
		if b[off] == 0 {
			off++
			continue
		}
		if len(out) >= maxCpioEntries {
			return nil, fmt.Errorf("more than %d entries", maxCpioEntries)
		}
		if off+110 > len(b) {
			return nil, fmt.Errorf("truncated header at offset %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			return nil, fmt.Errorf("no newc magic at offset %d", off)
		}
		var f [13]uint64
		for i := range f {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("header field %d at offset %d: %w", i, off, err)
			}
			f[i] = v
		}
		// Fields: ino mode uid gid nlink mtime filesize devmajor devminor
		// rdevmajor rdevminor namesize check.
		nameSize, size := int(f[11]), int(f[6])
		nameEnd := off + 110 + nameSize
		if nameSize < 1 || nameEnd > len(b) {
			return nil, fmt.Errorf("name of %d bytes at offset %d runs past the end", nameSize, off)
		}
		name := string(bytes.TrimRight(b[off+110:nameEnd], "\x00"))
		dataStart := align4(nameEnd)
		dataEnd := dataStart + size
		if dataEnd > len(b) || dataStart > len(b) {
			return nil, fmt.Errorf("%s: %d bytes of data run past the end", name, size)
		}
		off = align4(dataEnd)
		if name == "TRAILER!!!" {
			continue
		}
		d := b[dataStart:dataEnd]
		s := sha256.Sum256(d)
		out = append(out, cpioEntry{Name: name, Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], Mtime: f[5], Size: uint64(size),
			Data: d, Sum: hex.EncodeToString(s[:])})
	}
	return out, nil
}

func align4(n int) int { return (n + 3) &^ 3 }
