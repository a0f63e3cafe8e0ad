package tdvf

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/google/gce-tcb-verifier/ovmf"
	gcetdx "github.com/google/gce-tcb-verifier/tdx"
)

// debianOVMF is the firmware in Debian's ovmf package (apt-get install ovmf).
const debianOVMF = "/usr/share/ovmf/OVMF.fd"

func readOVMF(tb testing.TB) []byte {
	tb.Helper()
	fw, err := os.ReadFile(debianOVMF)
	if err != nil {
		tb.Skipf("Debian OVMF firmware not available (apt-get install ovmf): %v", err)
	}
	return fw
}

// TestMRTDDebianOVMFMatchesGCE compares with an independent implementation:
// gce-tcb-verifier's tdx.MRTD, which adds and extends page by page (the
// single-pass order) and, with MeasureAllRegions, extends every section
// (all-regions) with the TD HOB its own builder writes.
func TestMRTDDebianOVMFMatchesGCE(t *testing.T) {
	matchesGCE(t, readOVMF(t))
}

// matchesGCE checks fw's single-pass MRTD, and its all-regions MRTD with the
// TD HOB gce-tcb-verifier builds, against gce-tcb-verifier's tdx.MRTD.
func matchesGCE(t *testing.T, fw []byte) {
	t.Helper()
	got, err := MRTD(fw, SinglePass, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := gcetdx.MRTD(&gcetdx.LaunchOptions{}, fw)
	if err != nil {
		t.Fatalf("gce-tcb-verifier: %v", err)
	}
	if got != want {
		t.Errorf("single-pass MRTD %x, gce-tcb-verifier %x", got, want)
	}

	regions, err := ovmf.ExtractMaterialGuestPhysicalRegionsTDHOBBug(fw, nil)
	if err != nil {
		t.Fatal(err)
	}
	md, err := Parse(fw)
	if err != nil {
		t.Fatal(err)
	}
	var hob []byte
	for _, s := range md.Sections {
		if s.Type != TypeTDHOB {
			continue
		}
		for _, r := range regions {
			if uint64(r.GPR.Start) == s.MemoryAddress {
				hob = r.HostBuffer
			}
		}
	}
	if hob == nil {
		t.Fatal("no TD HOB region from gce-tcb-verifier")
	}
	got, err = MRTD(fw, AllRegions, &Options{TDHOB: hob})
	if err != nil {
		t.Fatal(err)
	}
	want, err = gcetdx.MRTD(&gcetdx.LaunchOptions{MeasureAllRegions: true}, fw)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("all-regions MRTD %x, gce-tcb-verifier %x", got, want)
	}
}

// TestMRTDDebianOVMFPinned pins the three orders for bookworm's ovmf
// 2022.11-6+deb12u2 OVMF.fd; the single-pass value is the one
// gce-tcb-verifier also computes (above).
func TestMRTDDebianOVMFPinned(t *testing.T) {
	fw := readOVMF(t)
	want := map[Order]string{
		SinglePass: "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
		TwoPass:    "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1",
		AllRegions: "8df51d1f6a9c66d454b77dd22af7d77f36ef4035b846456998c596e77feb06cb4acccbf99ce6cc29a5280d678cc349c0",
	}
	sum := sha256hex(fw)
	if sum != debianOVMFSHA256 {
		t.Skipf("%s is not the pinned build (sha256 %s)", debianOVMF, sum)
	}
	for o, w := range want {
		got, err := MRTD(fw, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != w {
			t.Errorf("%s: MRTD %s, want %s", o, got, w)
		}
	}
}

// synthetic builds an 8 KiB TDVF image with three sections:
//
//	0 BFV      data 0x0+0x2000 -> GPA 0xffffe000 size 0x2000, MR_EXTEND
//	1 TD_HOB   no data         -> GPA 0x00800000 size 0x1000
//	2 TempMem  no data         -> GPA 0x00801000 size 0x1000, PAGE_AUG
//
// Byte i of the image is i%251, except the metadata (at 0x1000) and the
// GUIDed table (ending 0x20 bytes before the end), which the BFV covers too.
func synthetic() []byte {
	const size = 0x2000
	fw := make([]byte, size)
	for i := range fw {
		fw[i] = byte(i % 251)
	}
	// Metadata: GUID e9eaf9f3-... then the descriptor and 3 sections.
	const md = 0x1000
	g := efiGUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")
	copy(fw[md-16:], g[:])
	le32 := binary.LittleEndian.PutUint32
	le64 := binary.LittleEndian.PutUint64
	copy(fw[md:], "TDVF")
	le32(fw[md+4:], descriptorSize+3*sectionSize)
	le32(fw[md+8:], 1)
	le32(fw[md+12:], 3)
	sec := func(i int, off, raw uint32, gpa, msize uint64, typ, attr uint32) {
		r := fw[md+descriptorSize+i*sectionSize:]
		le32(r[0:], off)
		le32(r[4:], raw)
		le64(r[8:], gpa)
		le64(r[16:], msize)
		le32(r[24:], typ)
		le32(r[28:], attr)
	}
	sec(0, 0, size, 0xffffe000, size, TypeBFV, AttrMRExtend)
	sec(1, 0, 0, 0x800000, 0x1000, TypeTDHOB, 0)
	sec(2, 0, 0, 0x801000, 0x1000, TypeTempMem, AttrPageAug)
	// GUIDed table: [u32 offset | u16 22 | metadata GUID] [u16 40 | footer GUID]
	end := size - guidTableEnd
	copy(fw[end-16:], guidTableFooter[:])
	binary.LittleEndian.PutUint16(fw[end-18:], 18+22)
	e := end - 18
	copy(fw[e-16:], guidTDXMetadata[:])
	binary.LittleEndian.PutUint16(fw[e-18:], 22)
	le32(fw[e-22:], size-md)
	return fw
}

// TestMRTDSyntheticOrders pins each order over the synthetic image. With
// ADD(g) the 128-byte "MEM.PAGE.ADD" buffer for GPA g, EXT(g) the
// "MR.EXTEND" buffer followed by the 256 image bytes at g, and
// B = 0xffffe000, the SHA-384 input is:
//
//	single-pass: ADD(B) EXT(B) EXT(B+0x100) … EXT(B+0xf00)
//	             ADD(B+0x1000) EXT(B+0x1000) … EXT(B+0x1f00)
//	             ADD(0x800000)
//	two-pass:    ADD(B) ADD(B+0x1000) EXT(B) … EXT(B+0x1f00) ADD(0x800000)
//	all-regions: the single-pass stream, then EXT(0x800000) … EXT(0x800f00)
//	             over zeros (the TD HOB, which the hypervisor fills)
//
// The TempMem page is PAGE_AUG and appears in none. The digests were
// computed independently with Python's hashlib over exactly these streams.
func TestMRTDSyntheticOrders(t *testing.T) {
	fw := synthetic()
	want := map[Order]string{
		SinglePass: "e9267acd8b5bc41b371d18f16706b5636306c003d39918732749a6f7850faa6ead40dfe556a7770b4732ac9fa9d9d623",
		TwoPass:    "da0ef83566711379b581ca280180f4b46011c00fd926ca2fdfcf93ad337651921ec710d0032ebac4bf67e5ec1e4ffbc3",
		AllRegions: "bba2db59243ae9d151bcb9d3f221fc6f1d6f51dfda2212e05f7ca7a34a225ac86d788a21cbf52f57ee39c1a35eac5838",
	}
	for o, w := range want {
		got, err := MRTD(fw, o, nil)
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		if got.String() != w {
			t.Errorf("%s: MRTD %s, want %s", o, got, w)
		}
	}
}

// MRTDs (concurrent) agrees with MRTD for each order.
func TestMRTDsAllOrders(t *testing.T) {
	fw := synthetic()
	md, err := Parse(fw)
	if err != nil {
		t.Fatal(err)
	}
	all, err := md.MRTDs(fw, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range Orders {
		if one, _ := MRTD(fw, o, nil); all[o] != one {
			t.Errorf("%s differs", o)
		}
	}
}

func TestParseSynthetic(t *testing.T) {
	md, err := Parse(synthetic())
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Sections) != 3 || md.Sections[1].TypeName() != "TD_HOB" || md.Sections[2].Attributes != AttrPageAug {
		t.Fatalf("sections %+v", md.Sections)
	}
}

func TestMalformed(t *testing.T) {
	good := synthetic()
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	le32 := binary.LittleEndian.PutUint32
	sec0 := 0x1000 + descriptorSize
	cases := map[string]struct {
		fw     []byte
		noMeta bool
	}{
		"empty":            {fw: nil},
		"tiny":             {fw: make([]byte, 10)},
		"no footer":        {fw: make([]byte, 0x2000), noMeta: true},
		"truncated":        {fw: good[0x800:]},
		"cut at end":       {fw: good[:0x1800], noMeta: true},
		"bad signature":    {fw: mut(func(b []byte) []byte { b[0x1000] = 'X'; return b })},
		"bad version":      {fw: mut(func(b []byte) []byte { le32(b[0x1008:], 2); return b })},
		"zero sections":    {fw: mut(func(b []byte) []byte { le32(b[0x100c:], 0); return b })},
		"huge count":       {fw: mut(func(b []byte) []byte { le32(b[0x100c:], 0xffffffff); return b })},
		"length mismatch":  {fw: mut(func(b []byte) []byte { le32(b[0x1004:], 17); return b })},
		"raw past end":     {fw: mut(func(b []byte) []byte { le32(b[sec0:], 0x1fff); return b })},
		"raw over memory":  {fw: mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[sec0+16:], 0x1000); return b })},
		"unaligned gpa":    {fw: mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[sec0+8:], 0xffffe001); return b })},
		"unknown type":     {fw: mut(func(b []byte) []byte { le32(b[sec0+24:], 99); return b })},
		"overlap":          {fw: mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[sec0+32+8:], 0xfffff000); return b })},
		"gpa overflow":     {fw: mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[sec0+32+8:], 0xfffffffffffff000); return b })},
		"huge memory":      {fw: mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[sec0+32+16:], 1<<40); return b })},
		"aug and extend":   {fw: mut(func(b []byte) []byte { le32(b[sec0+28:], 3); return b })},
		"offset too big":   {fw: mut(func(b []byte) []byte { le32(b[0x2000-0x20-18-22:], 0x100000); return b })},
		"entry len zero":   {fw: mut(func(b []byte) []byte { b[0x2000-0x20-18-18] = 0; b[0x2000-0x20-18-17] = 0; return b })},
		"table len huge":   {fw: mut(func(b []byte) []byte { b[0x2000-0x20-18] = 0xff; b[0x2000-0x20-17] = 0xff; return b })},
		"no metadata guid": {fw: mut(func(b []byte) []byte { b[0x2000-0x20-18-1] ^= 0xff; return b }), noMeta: true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := MRTD(c.fw, SinglePass, nil)
			if err == nil {
				t.Fatal("no error")
			}
			var fe *FormatError
			if c.noMeta {
				if !errors.Is(err, ErrNoMetadata) {
					t.Fatalf("got %v, want ErrNoMetadata", err)
				}
			} else if !errors.As(err, &fe) {
				t.Fatalf("got %v (%T), want *FormatError", err, err)
			}
		})
	}
}

func TestParseOrder(t *testing.T) {
	for _, o := range Orders {
		if got, err := ParseOrder(string(o)); err != nil || got != o {
			t.Errorf("ParseOrder(%q) = %q, %v", o, got, err)
		}
	}
	if _, err := ParseOrder("three-pass"); err == nil {
		t.Error("unknown order accepted")
	}
}

func TestTDHOBTooBig(t *testing.T) {
	if _, err := MRTD(synthetic(), AllRegions, &Options{TDHOB: make([]byte, 0x1001)}); err == nil {
		t.Fatal("oversize TD HOB accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(synthetic())
	if fw, err := os.ReadFile(debianOVMF); err == nil {
		// The tail holds the GUIDed table and, for OVMF, the metadata.
		f.Add(fw[len(fw)-0x1000:])
	}
	f.Fuzz(func(t *testing.T, fw []byte) {
		md, err := Parse(fw)
		if err != nil {
			return
		}
		var mem uint64
		for _, s := range md.Sections {
			mem += s.MemoryDataSize
		}
		if mem > 16<<20 {
			return // valid but slow to hash; the parser is what is fuzzed
		}
		for _, o := range Orders {
			if _, err := md.MRTD(fw, o, nil); err != nil {
				t.Fatalf("parsed metadata but %s failed: %v", o, err)
			}
		}
	})
}

func BenchmarkMRTDDebianOVMF(b *testing.B) {
	fw := readOVMF(b)
	b.SetBytes(int64(len(fw)))
	for b.Loop() {
		if _, err := MRTD(fw, SinglePass, nil); err != nil {
			b.Fatal(err)
		}
	}
}

const debianOVMFSHA256 = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestSyntheticMatchesGCE cross-checks single-pass and all-regions on the
// synthetic image with gce-tcb-verifier too. gce-tcb-verifier does not know
// PAGE_AUG, so the TempMem section is made an ordinary one here.
func TestSyntheticMatchesGCE(t *testing.T) {
	fw := synthetic()
	binary.LittleEndian.PutUint32(fw[0x1000+descriptorSize+2*sectionSize+28:], 0)
	matchesGCE(t, fw)
}
