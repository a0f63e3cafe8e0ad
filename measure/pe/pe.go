// Package pe reads the parts of PE/COFF images (EFI applications, Linux
// kernels, unified kernel images) that measured boot depends on: the
// section table and the Authenticode digest that UEFI firmware measures for
// every image it loads.
//
// Layouts: Microsoft "PE Format" (the COFF file header, optional header
// magic 0x10b/0x20b, CheckSum at optional-header offset 64, data directory
// 4 = Certificate Table). Digest: Microsoft "Windows Authenticode Portable
// Executable Signature Format", section "Calculating the PE Image Hash", as
// edk2 implements it for measurement (SecurityPkg Tcg2Dxe/TdTcg2Dxe
// MeasurePeImageAndExtend / HashPeImageByType).
package pe

import (
	"cmp"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strings"
)

// MaxImageSize bounds an image (UKIs with a full initrd reach ~125 MB).
const MaxImageSize = 512 << 20

// maxSections bounds the section table (the COFF field is 16 bits).
const maxSections = 96

const (
	magicPE32     = 0x10b
	magicPE32Plus = 0x20b
	dirSecurity   = 4 // IMAGE_DIRECTORY_ENTRY_SECURITY
)

// FormatError is a malformed image.
type FormatError struct {
	Offset int64
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return "pe: " + e.Msg
	}
	return fmt.Sprintf("pe: at offset 0x%x: %s", e.Offset, e.Msg)
}

func formatErr(off int, format string, a ...any) error {
	return &FormatError{Offset: int64(off), Msg: fmt.Sprintf(format, a...)}
}

// ErrNotPE means the bytes do not start with an MZ/PE header.
var ErrNotPE = errors.New("pe: not a PE image")

// Section is one section header.
type Section struct {
	Name             string
	VirtualSize      uint32
	VirtualAddress   uint32
	SizeOfRawData    uint32
	PointerToRawData uint32
}

// File is a parsed image; it keeps the image bytes it was parsed from.
type File struct {
	img []byte
	// Sections in header order.
	Sections []Section

	checksumOff   int // offset of OptionalHeader.CheckSum
	certDirOff    int // offset of the Certificate Table directory entry, -1 if absent
	sizeOfHeaders int
	certSize      uint32
}

// Parse reads the headers and section table of a PE image.
func Parse(img []byte) (*File, error) {
	if len(img) > MaxImageSize {
		return nil, formatErr(-1, "image is %d bytes, over the %d-byte limit", len(img), MaxImageSize)
	}
	if len(img) < 0x40 || img[0] != 'M' || img[1] != 'Z' {
		return nil, ErrNotPE
	}
	peOff := int(binary.LittleEndian.Uint32(img[0x3c:]))
	if peOff > len(img)-24 || peOff < 0x40 {
		return nil, formatErr(0x3c, "PE header offset 0x%x outside the image", peOff)
	}
	if string(img[peOff:peOff+4]) != "PE\x00\x00" {
		return nil, ErrNotPE
	}
	coff := peOff + 4
	nsec := int(binary.LittleEndian.Uint16(img[coff+2:]))
	optSize := int(binary.LittleEndian.Uint16(img[coff+16:]))
	opt := coff + 20
	if nsec > maxSections {
		return nil, formatErr(coff+2, "%d sections (limit %d)", nsec, maxSections)
	}
	if opt+optSize > len(img) || optSize < 2 {
		return nil, formatErr(coff+16, "optional header of %d bytes runs past the end", optSize)
	}
	f := &File{img: img, checksumOff: opt + 64, certDirOff: -1}
	var numDirsOff, dirsOff int
	switch magic := binary.LittleEndian.Uint16(img[opt:]); magic {
	case magicPE32:
		numDirsOff, dirsOff = opt+92, opt+96
	case magicPE32Plus:
		numDirsOff, dirsOff = opt+108, opt+112
	default:
		return nil, formatErr(opt, "optional header magic 0x%x", magic)
	}
	if numDirsOff+4 > opt+optSize {
		return nil, formatErr(opt, "optional header of %d bytes too short", optSize)
	}
	f.sizeOfHeaders = int(binary.LittleEndian.Uint32(img[opt+60:]))
	numDirs := int(binary.LittleEndian.Uint32(img[numDirsOff:]))
	if numDirs > 16 {
		return nil, formatErr(numDirsOff, "%d data directories (limit 16)", numDirs)
	}
	if dirsOff+8*numDirs > opt+optSize {
		return nil, formatErr(numDirsOff, "%d data directories do not fit the optional header", numDirs)
	}
	if numDirs > dirSecurity {
		f.certDirOff = dirsOff + 8*dirSecurity
		f.certSize = binary.LittleEndian.Uint32(img[f.certDirOff+4:])
	}
	secTab := opt + optSize
	if secTab+40*nsec > len(img) {
		return nil, formatErr(secTab, "section table of %d entries runs past the end", nsec)
	}
	if f.sizeOfHeaders < secTab+40*nsec || f.sizeOfHeaders > len(img) {
		return nil, formatErr(opt+60, "SizeOfHeaders 0x%x does not cover the headers or exceeds the image", f.sizeOfHeaders)
	}
	for i := range nsec {
		h := img[secTab+40*i : secTab+40*(i+1)]
		s := Section{
			Name:             strings.TrimRight(string(h[0:8]), "\x00"),
			VirtualSize:      binary.LittleEndian.Uint32(h[8:]),
			VirtualAddress:   binary.LittleEndian.Uint32(h[12:]),
			SizeOfRawData:    binary.LittleEndian.Uint32(h[16:]),
			PointerToRawData: binary.LittleEndian.Uint32(h[20:]),
		}
		if uint64(s.PointerToRawData)+uint64(s.SizeOfRawData) > uint64(len(img)) {
			return nil, formatErr(secTab+40*i, "section %q raw data 0x%x+0x%x runs past the end of the %d-byte image", s.Name, s.PointerToRawData, s.SizeOfRawData, len(img))
		}
		f.Sections = append(f.Sections, s)
	}
	return f, nil
}

// Section returns the first section with the given name, or nil.
func (f *File) Section(name string) *Section {
	for i := range f.Sections {
		if f.Sections[i].Name == name {
			return &f.Sections[i]
		}
	}
	return nil
}

// Data returns a section's contents as loaded in memory: VirtualSize bytes,
// the raw data zero-extended if VirtualSize exceeds it. A section with
// VirtualSize 0 yields its raw data.
func (f *File) Data(s *Section) []byte {
	raw := f.img[s.PointerToRawData : s.PointerToRawData+s.SizeOfRawData]
	n := s.VirtualSize
	if n == 0 {
		return raw
	}
	if n <= s.SizeOfRawData {
		return raw[:n]
	}
	out := make([]byte, n)
	copy(out, raw)
	return out
}

// Authenticode computes the Authenticode digest of the image with the given
// hash: the headers without CheckSum and the Certificate Table entry, the
// sections' raw data in file order, then any trailing data except the
// attribute certificate table.
func (f *File) Authenticode(h hash.Hash) ([]byte, error) {
	img := f.img
	h.Write(img[:f.checksumOff])
	if f.certDirOff < 0 {
		h.Write(img[f.checksumOff+4 : f.sizeOfHeaders])
	} else {
		h.Write(img[f.checksumOff+4 : f.certDirOff])
		h.Write(img[f.certDirOff+8 : f.sizeOfHeaders])
	}
	secs := slices.Clone(f.Sections)
	slices.SortStableFunc(secs, func(a, b Section) int { return cmp.Compare(a.PointerToRawData, b.PointerToRawData) })
	hashed := uint64(f.sizeOfHeaders)
	for _, s := range secs {
		if s.SizeOfRawData == 0 {
			continue
		}
		h.Write(img[s.PointerToRawData : s.PointerToRawData+s.SizeOfRawData])
		hashed += uint64(s.SizeOfRawData)
	}
	size := uint64(len(img))
	if size > hashed {
		cert := uint64(f.certSize)
		if f.certDirOff < 0 {
			cert = 0
		}
		switch {
		case size > hashed+cert:
			h.Write(img[hashed : size-cert])
		case size < hashed+cert:
			return nil, formatErr(-1, "certificate table of %d bytes overlaps the hashed sections", cert)
		}
	}
	return h.Sum(nil), nil
}

// Digest is an Authenticode SHA-384 digest.
type Digest [sha512.Size384]byte

// AuthenticodeSHA384 parses img and returns its Authenticode SHA-384 digest,
// the value TDX firmware extends into an RTMR when it loads the image.
func AuthenticodeSHA384(img []byte) (Digest, error) {
	f, err := Parse(img)
	if err != nil {
		return Digest{}, err
	}
	return f.AuthenticodeSHA384()
}

// AuthenticodeSHA384 returns the image's Authenticode SHA-384 digest.
func (f *File) AuthenticodeSHA384() (Digest, error) {
	var d Digest
	sum, err := f.Authenticode(sha512.New384())
	if err != nil {
		return d, err
	}
	copy(d[:], sum)
	return d, nil
}

// AuthenticodeHash computes the digest with any of SHA-256/384/512 (for
// comparing with tools that only print SHA-256).
func (f *File) AuthenticodeHash(alg crypto.Hash) ([]byte, error) {
	switch alg {
	case crypto.SHA256:
		return f.Authenticode(sha256.New())
	case crypto.SHA384:
		return f.Authenticode(sha512.New384())
	case crypto.SHA512:
		return f.Authenticode(sha512.New())
	}
	return nil, fmt.Errorf("pe: unsupported hash %v", alg)
}
