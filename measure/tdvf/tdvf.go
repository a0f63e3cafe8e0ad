// Package tdvf reads the TDVF metadata of an OVMF/TDVF firmware image and
// computes the MRTD a TD built from it will report.
//
// Sources for the constants and layouts below:
//   - Intel, "TDX Virtual Firmware Design Guide" (rev. 1.01, 2023), section 11
//     "TDVF Metadata": the descriptor ("TDVF", length, version, section
//     count) and the 32-byte TDVF_SECTION records, section types and the
//     MR.EXTEND / PAGE.AUG attributes.
//   - edk2 OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm and
//     OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm: the GUIDed table that
//     ends 0x20 bytes before the end of the image, walked backwards, with the
//     footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d and the metadata
//     offset entry e47a6535-984a-4798-865e-4685a7bf8ec2.
//   - Intel TDX Module Base Architecture Specification, TDH.MEM.PAGE.ADD and
//     TDH.MR.EXTEND: the 128-byte extension buffers hashed into MRTD.
package tdvf

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/fleetbox/fleetbox/attest/measurement"
)

// Section types (TDX Virtual Firmware Design Guide, table 11-2).
const (
	TypeBFV          = 0 // boot firmware volume
	TypeCFV          = 1 // configuration firmware volume (variables)
	TypeTDHOB        = 2 // TD hand-off block, written by the VMM
	TypeTempMem      = 3 // temporary memory
	TypePermMem      = 4 // permanent memory
	TypePayload      = 5 // payload image (TD-shim)
	TypePayloadParam = 6 // payload parameters
	TypeTDInfo       = 7 // TD_INFO
	TypeTDParams     = 8 // TD_PARAMS
)

// Section attributes (TDX Virtual Firmware Design Guide, table 11-3).
const (
	// AttrMRExtend: the VMM extends MRTD with the section's content
	// (TDH.MR.EXTEND).
	AttrMRExtend = 1 << 0
	// AttrPageAug: the pages are added after TD build with TDH.MEM.PAGE.AUG,
	// so they are not part of MRTD at all.
	AttrPageAug = 1 << 1
)

// Page and chunk sizes of the TD build measurement (TDX Module spec).
const (
	PageSize  = 4096
	ChunkSize = 256
	bufSize   = 128 // one MRTD extension buffer
)

// MaxFirmwareSize bounds a firmware image; OVMF images are 2-4 MiB.
const MaxFirmwareSize = 64 << 20

// maxSections bounds the section table; real images have 4-8 sections.
const maxSections = 64

// maxMeasuredBytes bounds the memory one image may ask to measure, so a
// forged section size cannot make MRTD run for minutes.
const maxMeasuredBytes = 1 << 30

// GUIDs, in the EFI byte order in which they appear in the image
// (first three fields little-endian).
var (
	guidTableFooter = efiGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	guidTDXMetadata = efiGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
)

const (
	// guidTableEnd: the footer GUID ends this many bytes before the end of
	// the image (edk2 ResetVectorVtf0.asm, "guidedStructureEnd").
	guidTableEnd = 0x20
	// guidEntryTrailer: every GUIDed table entry ends with a u16 length and
	// its GUID; the length counts the whole entry including these 18 bytes.
	guidEntryTrailer = 18
	descriptorSize   = 16
	sectionSize      = 32
	tdvfSignature    = "TDVF"
)

// ErrNoMetadata means the image carries no TDVF metadata (for example
// bookworm's OVMF_CODE_4M.fd, built without TDX support).
var ErrNoMetadata = errors.New("tdvf: no TDVF metadata in image")

// FormatError is a malformed or truncated firmware image.
type FormatError struct {
	Offset int64  // byte offset in the image where the problem is, -1 if none
	Msg    string // what is wrong
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return "tdvf: " + e.Msg
	}
	return fmt.Sprintf("tdvf: at offset 0x%x: %s", e.Offset, e.Msg)
}

func formatErr(off int, format string, a ...any) error {
	return &FormatError{Offset: int64(off), Msg: fmt.Sprintf(format, a...)}
}

// Section is one TDVF_SECTION record.
type Section struct {
	DataOffset     uint32 // where the raw data starts in the image
	RawDataSize    uint32 // bytes of raw data in the image (0: none)
	MemoryAddress  uint64 // guest physical address
	MemoryDataSize uint64 // bytes of guest memory
	Type           uint32
	Attributes     uint32
}

// TypeName names the section type as the design guide does.
func (s Section) TypeName() string {
	names := []string{"BFV", "CFV", "TD_HOB", "TempMem", "PermMem", "Payload", "PayloadParam", "TD_INFO", "TD_PARAMS"}
	if int(s.Type) < len(names) {
		return names[s.Type]
	}
	return fmt.Sprintf("type%d", s.Type)
}

// Metadata is the parsed TDVF metadata of an image.
type Metadata struct {
	Version  uint32
	Sections []Section
}

// Parse finds and validates the TDVF metadata in a firmware image. It never
// panics on malformed input; every problem is a *FormatError or ErrNoMetadata.
func Parse(fw []byte) (*Metadata, error) {
	if len(fw) > MaxFirmwareSize {
		return nil, formatErr(-1, "image is %d bytes, over the %d-byte limit", len(fw), MaxFirmwareSize)
	}
	off, err := metadataOffset(fw)
	if err != nil {
		return nil, err
	}
	// The entry holds the metadata's offset counted back from the end of
	// the image; the descriptor starts there.
	if off < descriptorSize || int(off) > len(fw) {
		return nil, formatErr(-1, "metadata offset 0x%x from the end is outside the %d-byte image", off, len(fw))
	}
	start := len(fw) - int(off)
	// edk2 puts the GUID e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae just before
	// the descriptor; QEMU does not check it and neither does this parser:
	// the "TDVF" signature below is what QEMU checks.
	d := fw[start:]
	if len(d) < descriptorSize {
		return nil, formatErr(start, "truncated TDVF descriptor")
	}
	if string(d[0:4]) != tdvfSignature {
		return nil, formatErr(start, "descriptor signature %q, want %q", d[0:4], tdvfSignature)
	}
	length := binary.LittleEndian.Uint32(d[4:8])
	version := binary.LittleEndian.Uint32(d[8:12])
	count := binary.LittleEndian.Uint32(d[12:16])
	if version != 1 {
		return nil, formatErr(start+8, "descriptor version %d, want 1", version)
	}
	if count == 0 || count > maxSections {
		return nil, formatErr(start+12, "%d sections (want 1..%d)", count, maxSections)
	}
	if uint64(length) != descriptorSize+sectionSize*uint64(count) {
		return nil, formatErr(start+4, "descriptor length %d does not match %d sections", length, count)
	}
	if uint64(len(d)) < uint64(length) {
		return nil, formatErr(start, "section table (%d bytes) runs past the end of the image", length)
	}
	md := &Metadata{Version: version}
	var measured uint64
	for i := range int(count) {
		at := start + descriptorSize + i*sectionSize
		r := fw[at : at+sectionSize]
		s := Section{
			DataOffset:     binary.LittleEndian.Uint32(r[0:4]),
			RawDataSize:    binary.LittleEndian.Uint32(r[4:8]),
			MemoryAddress:  binary.LittleEndian.Uint64(r[8:16]),
			MemoryDataSize: binary.LittleEndian.Uint64(r[16:24]),
			Type:           binary.LittleEndian.Uint32(r[24:28]),
			Attributes:     binary.LittleEndian.Uint32(r[28:32]),
		}
		if s.Type > TypeTDParams {
			return nil, formatErr(at+24, "section %d: unknown type %d", i, s.Type)
		}
		if s.MemoryAddress%PageSize != 0 || s.MemoryDataSize%PageSize != 0 {
			return nil, formatErr(at+8, "section %d (%s): address 0x%x or size 0x%x not 4 KiB aligned", i, s.TypeName(), s.MemoryAddress, s.MemoryDataSize)
		}
		if s.MemoryAddress+s.MemoryDataSize < s.MemoryAddress {
			return nil, formatErr(at+8, "section %d (%s): address range overflows", i, s.TypeName())
		}
		if uint64(s.RawDataSize) > s.MemoryDataSize {
			return nil, formatErr(at+4, "section %d (%s): raw size 0x%x exceeds memory size 0x%x", i, s.TypeName(), s.RawDataSize, s.MemoryDataSize)
		}
		if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(len(fw)) {
			return nil, formatErr(at, "section %d (%s): raw data 0x%x+0x%x runs past the end of the image", i, s.TypeName(), s.DataOffset, s.RawDataSize)
		}
		if s.Attributes&AttrMRExtend != 0 && s.Attributes&AttrPageAug != 0 {
			return nil, formatErr(at+28, "section %d (%s): both MR.EXTEND and PAGE.AUG set", i, s.TypeName())
		}
		for j, p := range md.Sections {
			if s.MemoryAddress < p.MemoryAddress+p.MemoryDataSize && p.MemoryAddress < s.MemoryAddress+s.MemoryDataSize {
				return nil, formatErr(at+8, "section %d (%s) overlaps section %d (%s)", i, s.TypeName(), j, p.TypeName())
			}
		}
		measured += s.MemoryDataSize
		if measured > maxMeasuredBytes {
			return nil, formatErr(at+16, "sections cover more than %d bytes of memory", maxMeasuredBytes)
		}
		md.Sections = append(md.Sections, s)
	}
	return md, nil
}

// metadataOffset walks the GUIDed table at the end of the image and returns
// the value of the TDX metadata offset entry.
func metadataOffset(fw []byte) (uint32, error) {
	footerEnd := len(fw) - guidTableEnd
	if footerEnd < guidEntryTrailer {
		return 0, formatErr(-1, "image of %d bytes is too small for a GUIDed table", len(fw))
	}
	if !bytes.Equal(fw[footerEnd-16:footerEnd], guidTableFooter[:]) {
		return 0, fmt.Errorf("%w: GUIDed table footer not found", ErrNoMetadata)
	}
	tableLen := int(binary.LittleEndian.Uint16(fw[footerEnd-guidEntryTrailer:]))
	if tableLen < guidEntryTrailer || tableLen > footerEnd {
		return 0, formatErr(footerEnd-guidEntryTrailer, "GUIDed table length %d is invalid", tableLen)
	}
	tableStart := footerEnd - tableLen
	// Entries end where the footer entry begins; walk them backwards.
	end := footerEnd - guidEntryTrailer
	for end > tableStart {
		if end-tableStart < guidEntryTrailer {
			return 0, formatErr(tableStart, "GUIDed table: %d stray bytes before the first entry", end-tableStart)
		}
		guid := fw[end-16 : end]
		n := int(binary.LittleEndian.Uint16(fw[end-guidEntryTrailer:]))
		if n < guidEntryTrailer || n > end-tableStart {
			return 0, formatErr(end-guidEntryTrailer, "GUIDed table entry length %d is invalid", n)
		}
		if bytes.Equal(guid, guidTDXMetadata[:]) {
			if n < guidEntryTrailer+4 {
				return 0, formatErr(end-guidEntryTrailer, "TDX metadata entry of %d bytes has no offset", n)
			}
			return binary.LittleEndian.Uint32(fw[end-n:]), nil
		}
		end -= n
	}
	return 0, fmt.Errorf("%w: GUIDed table has no TDX metadata entry", ErrNoMetadata)
}

// Order is the sequence in which a hypervisor adds and measures the TD's
// initial pages. The page contents are the same; the order changes MRTD.
type Order string

const (
	// SinglePass: per 4 KiB page, TDH.MEM.PAGE.ADD then, for MR_EXTEND
	// sections, TDH.MR.EXTEND of its 16 chunks. QEMU 9 and later with the
	// upstream KVM TDX API (KVM_TDX_INIT_MEM_REGION with
	// KVM_TDX_MEASURE_MEMORY_REGION, one page at a time).
	SinglePass Order = "single-pass"
	// TwoPass: per section, TDH.MEM.PAGE.ADD for every page, then
	// TDH.MR.EXTEND for every chunk. QEMU 8 with the earlier KVM TDX patch
	// sets.
	TwoPass Order = "two-pass"
	// AllRegions: single-pass, but every section is extended as if it had
	// MR_EXTEND, with zeros (or the given TD HOB) where it has no raw data,
	// as Google Compute Engine's hypervisor does.
	//
	// In every order, PAGE_AUG sections are left out entirely.
	AllRegions Order = "all-regions"
)

// Orders lists every supported order.
var Orders = []Order{SinglePass, TwoPass, AllRegions}

// ParseOrder validates an order name.
func ParseOrder(s string) (Order, error) {
	for _, o := range Orders {
		if string(o) == s {
			return o, nil
		}
	}
	names := make([]string, len(Orders))
	for i, o := range Orders {
		names[i] = string(o)
	}
	return "", fmt.Errorf("unknown page order %q (known: %s)", s, strings.Join(names, ", "))
}

// Options change what MRTD measures. The zero value is right for QEMU.
type Options struct {
	// TDHOB is the content of the TD_HOB section as the hypervisor writes it.
	// Only AllRegions measures it; nil means zeros. Shorter content is padded
	// with zeros to the section size.
	TDHOB []byte
}

// MRTD computes the MRTD of a TD built from fw in the given order.
func MRTD(fw []byte, order Order, opts *Options) (measurement.MRTD, error) {
	md, err := Parse(fw)
	if err != nil {
		return measurement.MRTD{}, err
	}
	return md.MRTD(fw, order, opts)
}

// MRTD computes the MRTD from already-parsed metadata and the image it came
// from.
func (md *Metadata) MRTD(fw []byte, order Order, opts *Options) (measurement.MRTD, error) {
	if _, err := ParseOrder(string(order)); err != nil {
		return measurement.MRTD{}, err
	}
	if opts == nil {
		opts = &Options{}
	}
	m := newMeasurer()
	for i, s := range md.Sections {
		if s.Attributes&AttrPageAug != 0 {
			// Added after the build with TDH.MEM.PAGE.AUG: not measured.
			continue
		}
		if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(len(fw)) {
			return measurement.MRTD{}, formatErr(-1, "section %d: raw data outside the image", i)
		}
		extend := s.Attributes&AttrMRExtend != 0 || order == AllRegions
		content := fw[s.DataOffset : s.DataOffset+s.RawDataSize]
		if s.Type == TypeTDHOB && order == AllRegions && opts.TDHOB != nil {
			if uint64(len(opts.TDHOB)) > s.MemoryDataSize {
				return measurement.MRTD{}, fmt.Errorf("tdvf: TD HOB of %d bytes exceeds its %d-byte section", len(opts.TDHOB), s.MemoryDataSize)
			}
			content = opts.TDHOB
		}
		mem := sectionMemory{content: content, size: s.MemoryDataSize}
		switch order {
		case SinglePass, AllRegions:
			for p := uint64(0); p < s.MemoryDataSize; p += PageSize {
				m.pageAdd(s.MemoryAddress + p)
				if extend {
					for c := p; c < p+PageSize; c += ChunkSize {
						m.mrExtend(s.MemoryAddress+c, mem.chunk(c))
					}
				}
			}
		case TwoPass:
			for p := uint64(0); p < s.MemoryDataSize; p += PageSize {
				m.pageAdd(s.MemoryAddress + p)
			}
			if extend {
				for c := uint64(0); c < s.MemoryDataSize; c += ChunkSize {
					m.mrExtend(s.MemoryAddress+c, mem.chunk(c))
				}
			}
		}
	}
	return m.sum(), nil
}

// MRTDs computes the MRTD in every order (Orders), concurrently.
func (md *Metadata) MRTDs(fw []byte, opts *Options) (map[Order]measurement.MRTD, error) {
	res := make([]measurement.MRTD, len(Orders))
	var g errgroup.Group
	for i, o := range Orders {
		g.Go(func() error {
			var err error
			res[i], err = md.MRTD(fw, o, opts)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := make(map[Order]measurement.MRTD, len(Orders))
	for i, o := range Orders {
		out[o] = res[i]
	}
	return out, nil
}

// sectionMemory is a section's initial memory: its raw data, then zeros.
type sectionMemory struct {
	content []byte
	size    uint64
	zero    [ChunkSize]byte
}

func (s *sectionMemory) chunk(off uint64) []byte {
	if off+ChunkSize <= uint64(len(s.content)) {
		return s.content[off : off+ChunkSize]
	}
	if off >= uint64(len(s.content)) {
		return s.zero[:]
	}
	var c [ChunkSize]byte
	copy(c[:], s.content[off:])
	return c[:]
}

type measurer struct {
	h   hash.Hash
	buf [bufSize]byte
}

func newMeasurer() *measurer { return &measurer{h: sha512.New384()} }

// pageAdd: TDH.MEM.PAGE.ADD extends MRTD with a 128-byte buffer: bytes 0-11
// "MEM.PAGE.ADD", bytes 16-23 the GPA little-endian, the rest zero.
func (m *measurer) pageAdd(gpa uint64) {
	m.record("MEM.PAGE.ADD", gpa)
}

// mrExtend: TDH.MR.EXTEND extends MRTD with a 128-byte buffer (bytes 0-8
// "MR.EXTEND", bytes 16-23 the GPA) and then the 256-byte chunk as two more
// 128-byte buffers.
func (m *measurer) mrExtend(gpa uint64, chunk []byte) {
	m.record("MR.EXTEND", gpa)
	m.h.Write(chunk)
}

func (m *measurer) record(tag string, gpa uint64) {
	clear(m.buf[:])
	copy(m.buf[:], tag)
	binary.LittleEndian.PutUint64(m.buf[16:24], gpa)
	m.h.Write(m.buf[:])
}

func (m *measurer) sum() measurement.MRTD {
	var out measurement.MRTD
	m.h.Sum(out[:0])
	return out
}

// efiGUID encodes a textual GUID in EFI byte order (the first three fields
// little-endian, the last two as written).
func efiGUID(s string) [16]byte {
	var g, raw [16]byte
	if _, err := hex.Decode(raw[:], []byte(strings.ReplaceAll(s, "-", ""))); err != nil {
		panic("tdvf: bad GUID literal " + s) // only called on constants
	}
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g
}
