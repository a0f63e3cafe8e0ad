package uki

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// GPT layout: UEFI 2.10 section 5.3 "GUID Partition Table (GPT) Disk Layout".
const (
	gptHeaderSize   = 92 // sizeof(EFI_PARTITION_TABLE_HEADER)
	maxGPTEntries   = 1024
	maxGPTEntrySize = 4096
)

// ErrNoGPT means the disk has no valid primary GPT header.
var ErrNoGPT = errors.New("uki: no GPT header at LBA 1")

// GPTEventData reads the primary GPT of a disk image and returns the
// UEFI_GPT_DATA the firmware measures as EV_EFI_GPT_EVENT (TCG PC Client
// PFP spec 1.05, section 10.4.5; edk2 DxeTpm2MeasureBootLib
// Tcg2MeasureGptTable): the 92-byte header, the number of non-empty
// entries as a u64, then those entries in table order.
func GPTEventData(disk io.ReaderAt, sectorSize int) ([]byte, error) {
	if sectorSize != 512 && sectorSize != 4096 {
		return nil, fmt.Errorf("uki: sector size %d (want 512 or 4096)", sectorSize)
	}
	blk := make([]byte, sectorSize)
	if _, err := disk.ReadAt(blk, int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("reading GPT header: %w", err)
	}
	if string(blk[0:8]) != "EFI PART" {
		return nil, ErrNoGPT
	}
	hdrSize := binary.LittleEndian.Uint32(blk[12:])
	if hdrSize < gptHeaderSize || int(hdrSize) > sectorSize {
		return nil, fmt.Errorf("uki: GPT header size %d", hdrSize)
	}
	hdr := bytes.Clone(blk[:hdrSize])
	wantCRC := binary.LittleEndian.Uint32(hdr[16:])
	clear(hdr[16:20])
	if crc32.ChecksumIEEE(hdr) != wantCRC {
		return nil, fmt.Errorf("uki: GPT header CRC mismatch")
	}
	entLBA := binary.LittleEndian.Uint64(blk[72:])
	n := binary.LittleEndian.Uint32(blk[80:])
	size := binary.LittleEndian.Uint32(blk[84:])
	if n > maxGPTEntries || size < 128 || size > maxGPTEntrySize || size%8 != 0 {
		return nil, fmt.Errorf("uki: GPT with %d entries of %d bytes", n, size)
	}
	if entLBA > 1<<40 {
		return nil, fmt.Errorf("uki: GPT entry array at LBA %d", entLBA)
	}
	arr := make([]byte, int(n)*int(size))
	if _, err := disk.ReadAt(arr, int64(entLBA)*int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("reading GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(arr) != binary.LittleEndian.Uint32(blk[88:]) {
		return nil, fmt.Errorf("uki: GPT entry array CRC mismatch")
	}
	var zero [16]byte
	out := bytes.NewBuffer(append([]byte(nil), blk[:gptHeaderSize]...))
	var entries [][]byte
	for i := range int(n) {
		e := arr[i*int(size) : (i+1)*int(size)]
		if !bytes.Equal(e[:16], zero[:]) {
			entries = append(entries, e)
		}
	}
	var cnt [8]byte
	binary.LittleEndian.PutUint64(cnt[:], uint64(len(entries)))
	out.Write(cnt[:])
	for _, e := range entries {
		out.Write(e)
	}
	return out.Bytes(), nil
}
