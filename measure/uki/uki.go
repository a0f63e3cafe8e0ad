// Package uki predicts the RTMR1 and RTMR2 values of a TD that boots
// fleetbox's image: OVMF loads systemd-boot from the EFI system partition of
// a GPT disk, systemd-boot loads a unified kernel image (UKI), and the UKI's
// systemd-stub starts the Linux kernel.
//
// The firmware measures into the CC measurement registers as the TDX
// mapping of UEFI 2.10 section 38.4.1 says (PCR 1,7 -> RTMR0; PCR 2-6 ->
// RTMR1; PCR 8-15 -> RTMR2). RTMR0 (PCR 0/1/7: the TD HOB, ACPI tables,
// Secure Boot and boot variables) depends on what the hypervisor builds and
// is not predicted here: it must come from a reference boot.
//
// Every predicted event names its source. The sequence was checked event by
// event against the firmware log of a real boot of Debian's OVMF,
// systemd-boot 252 and a UKI on a vTPM (TestLiveBootMatchesPrediction), and
// the separators and constant events against the real TD logs in the shared
// test data (go-tdx-guest's GCE CCEL, dstack's).
package uki

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf16"

	"golang.org/x/sync/errgroup"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/measure/pe"
)

// Constant EFI action strings (TCG PC Client PFP spec 1.05, section
// 10.4.4 "EV_EFI_ACTION Event Types"); the digest is SHA-384 of the string
// without a terminator.
const (
	ActionCallingEFIApp      = "Calling EFI Application from Boot Option"
	ActionExitBootServices   = "Exit Boot Services Invocation"
	ActionExitBootServicesOK = "Exit Boot Services Returned with Success"
)

// measuredSections are the sections systemd-stub measures into PCR 11, in
// the order it measures them (systemd src/fundamental/uki.h,
// unified_sections[]; .pcrsig is never measured), with the systemd version
// that first measures each. Sections absent from the UKI are skipped.
var measuredSections = []struct {
	name  string
	since int
}{
	{".linux", 0}, {".osrel", 0}, {".cmdline", 0}, {".initrd", 0}, {".ucode", 256},
	{".splash", 0}, {".dtb", 0}, {".uname", 253}, {".sbat", 253}, {".pcrpkey", 0},
	{".profile", 257}, {".dtbauto", 257}, {".hwids", 257}, {".efifw", 258},
}

// MeasuredSections lists the sections a systemd-stub of the given version
// measures, in order; version 0 (unknown) means the newest.
func MeasuredSections(version int) []string {
	var out []string
	for _, s := range measuredSections {
		if version == 0 || s.since <= version {
			out = append(out, s.name)
		}
	}
	return out
}

// Linux EFI stub tagged-event IDs (linux include/linux/efi.h,
// LINUX_EFI_INITRD_MEASUREMENT / LOAD_OPTIONS event IDs), as in the real
// dstack logs (ec223b8f / ed223b8f little-endian).
const (
	tagInitrd      = 0x8F3B22EC
	tagLoadOptions = 0x8F3B22ED
)

// UKI is a parsed unified kernel image.
type UKI struct {
	File *pe.File
	// Authenticode is the UKI's own Authenticode SHA-384 (what the firmware
	// measures when systemd-boot loads it).
	Authenticode pe.Digest
	// StubVersion is systemd-stub's version from its .sdmagic section, 0 if
	// unknown.
	StubVersion int
	// KernelVersion is the embedded kernel's version string; KernelMajor
	// and KernelMinor are parsed from it (0 if unknown).
	KernelVersion            string
	KernelMajor, KernelMinor int
}

// ErrNotUKI means the PE image has no .linux section.
var ErrNotUKI = errors.New("uki: image has no .linux section")

// Open parses a UKI.
func Open(img []byte) (*UKI, error) {
	u, err := openNoHash(img)
	if err != nil {
		return nil, err
	}
	if u.Authenticode, err = u.File.AuthenticodeSHA384(); err != nil {
		return nil, fmt.Errorf("hashing UKI: %w", err)
	}
	return u, nil
}

// openNoHash parses a UKI without computing its Authenticode digest.
func openNoHash(img []byte) (*UKI, error) {
	f, err := pe.Parse(img)
	if err != nil {
		return nil, fmt.Errorf("parsing UKI: %w", err)
	}
	linux := f.Section(".linux")
	if linux == nil {
		return nil, ErrNotUKI
	}
	u := &UKI{File: f}
	if s := f.Section(".sdmagic"); s != nil {
		u.StubVersion = loaderVersion(f.Data(s), "systemd-stub")
	}
	if s := f.Section(".uname"); s != nil {
		u.KernelVersion = string(bytes.TrimRight(f.Data(s), "\x00\n"))
	} else {
		u.KernelVersion = KernelVersion(f.Data(linux))
	}
	u.KernelMajor, u.KernelMinor = parseKernelVersion(u.KernelVersion)
	return u, nil
}

// SectionData returns the contents of a section as systemd-stub sees it, or
// nil if absent.
func (u *UKI) SectionData(name string) []byte {
	if s := u.File.Section(name); s != nil {
		return u.File.Data(s)
	}
	return nil
}

var loaderInfo = regexp.MustCompile(`#### LoaderInfo: ([a-z-]+) (\d+)`)

// loaderVersion reads "#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####".
func loaderVersion(b []byte, who string) int {
	m := loaderInfo.FindSubmatch(b)
	if m == nil || string(m[1]) != who {
		return 0
	}
	v, _ := strconv.Atoi(string(m[2]))
	return v
}

// BootloaderVersion returns systemd-boot's version from its .sdmagic, 0 if
// the image is not systemd-boot.
func BootloaderVersion(f *pe.File) int {
	if s := f.Section(".sdmagic"); s != nil {
		return loaderVersion(f.Data(s), "systemd-boot")
	}
	return 0
}

// KernelVersion reads the version string of an x86 bzImage (Linux boot
// protocol, Documentation/arch/x86/boot.rst: "HdrS" at 0x202, the
// kernel_version pointer at 0x20e, relative to 0x200).
func KernelVersion(k []byte) string {
	if len(k) < 0x210 || string(k[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int(binary.LittleEndian.Uint16(k[0x20e:])) + 0x200
	if off >= len(k) {
		return ""
	}
	end := bytes.IndexByte(k[off:min(len(k), off+256)], 0)
	if end < 0 {
		return ""
	}
	return string(k[off : off+end])
}

var kernelVer = regexp.MustCompile(`^(\d+)\.(\d+)`)

func parseKernelVersion(s string) (int, int) {
	m := kernelVer.FindStringSubmatch(s)
	if m == nil {
		return 0, 0
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	return a, b
}

// Input is what a boot prediction needs.
type Input struct {
	// UKI is the unified kernel image (required).
	UKI []byte
	// Bootloader is systemd-boot's EFI binary; nil means the firmware boots
	// the UKI directly as its boot option.
	Bootloader []byte
	// GPTEvent is the UEFI_GPT_DATA of the boot disk (GPTEventData); the
	// firmware measures it once, before the first image it loads from the
	// disk. Nil means the boot disk is not GPT (or not given) and no event
	// is predicted; Notes say so.
	GPTEvent []byte
	// Cmdline, if set, is the command line a loader entry passes to the UKI
	// instead of the UKI's own .cmdline (which systemd-boot otherwise
	// passes); nil means the UKI's .cmdline.
	Cmdline *string
	// StubMeasuresCC says whether systemd-stub and systemd-boot measure
	// into the TDX RTMRs (EFI_CC_MEASUREMENT_PROTOCOL, systemd 255 and
	// later). Nil: decided from the stub's version.
	StubMeasuresCC *bool
	// KernelMeasuresCC says whether the Linux EFI stub measures its load
	// options and initrd into RTMR2 (EFI_CC_MEASUREMENT_PROTOCOL support in
	// libstub, Linux 6.9 and later). Nil: decided from the kernel version.
	KernelMeasuresCC *bool
	// KernelImageNotMeasured drops the firmware's measurement of the kernel
	// that systemd-stub loads with LoadImage. The zero value predicts it,
	// as a real OVMF boot of systemd 252 without Secure Boot shows; with
	// Secure Boot enforced the stub's security override may bypass it.
	KernelImageNotMeasured bool
}

// Prediction is the predicted RTMR1 and RTMR2 and the events behind them.
type Prediction struct {
	// Events are RTMR1 and RTMR2 events in the order they occur, each with
	// the PCR a TPM firmware would use for it.
	Events []eventlog.Event
	RTMR1  attest.RTMR
	RTMR2  attest.RTMR
	// Notes are the assumptions the prediction rests on, in plain words.
	Notes []string

	BootloaderAuthenticode *pe.Digest // nil without a bootloader
	UKIAuthenticode        pe.Digest
	// KernelAuthenticode is the embedded kernel's Authenticode SHA-384,
	// nil when its event is not predicted.
	KernelAuthenticode *pe.Digest
	StubVersion        int
	BootloaderVersion  int
	KernelVersion      string
	// PCR11 is the value systemd-measure computes for the UKI's sections
	// (sha384 bank, no phase); nil when neither the stub nor the kernel
	// measures, since then no section digest is needed (uki.PCR11 computes
	// it on its own).
	PCR11 *attest.RTMR
}

// Predict computes the events and registers for a boot of the inputs.
//
// The sequence (PCR in brackets, RTMR by the TDX mapping) is the one a real
// OVMF boot of Debian's systemd-boot 252, a UKI and kernel 6.1 logs on a
// vTPM (see TestLiveBootMatchesPrediction), with TDX firmware's single
// separator per RTMR as the real CC logs in the shared test data show:
//
//	RTMR1: "Calling EFI Application from Boot Option" [4], separator,
//	       GPT [5], systemd-boot [4], UKI [4], kernel [4],
//	       "Exit Boot Services Invocation" [5], "... Returned with Success" [5]
//	RTMR2: load options by systemd-boot [12], UKI sections [11], load
//	       options by systemd-stub [12]   (only if they measure into RTMRs)
//	       load options [9], initrd [9]   (only if the kernel does)
func Predict(in *Input) (*Prediction, error) {
	u, err := openNoHash(in.UKI)
	if err != nil {
		return nil, err
	}
	kernel := u.SectionData(".linux")
	kf, err := pe.Parse(kernel)
	if err != nil {
		return nil, fmt.Errorf("parsing the UKI's .linux kernel: %w", err)
	}
	var bf *pe.File
	if in.Bootloader != nil {
		if bf, err = pe.Parse(in.Bootloader); err != nil {
			return nil, fmt.Errorf("parsing the bootloader: %w", err)
		}
	}
	p := &Prediction{StubVersion: u.StubVersion, KernelVersion: u.KernelVersion}
	stubCC := u.StubVersion >= 255
	if in.StubMeasuresCC != nil {
		stubCC = *in.StubMeasuresCC
	}
	kernelCC := u.KernelMajor > 6 || (u.KernelMajor == 6 && u.KernelMinor >= 9)
	if in.KernelMeasuresCC != nil {
		kernelCC = *in.KernelMeasuresCC
	}

	// The digests are independent and dominate the cost (tens of MB of
	// SHA-384): compute them concurrently. Every goroutine ends before
	// Wait returns.
	var g errgroup.Group
	var secDigests []sectionDigest
	g.Go(func() error {
		var err error
		if u.Authenticode, err = u.File.AuthenticodeSHA384(); err != nil {
			return fmt.Errorf("hashing UKI: %w", err)
		}
		return nil
	})
	if stubCC || kernelCC {
		// Only the stub's and the kernel's events use the section digests.
		g.Go(func() error { secDigests = sectionDigests(u); return nil })
	}
	if bf != nil {
		g.Go(func() error {
			d, err := bf.AuthenticodeSHA384()
			if err != nil {
				return fmt.Errorf("hashing the bootloader: %w", err)
			}
			p.BootloaderAuthenticode = &d
			return nil
		})
		p.BootloaderVersion = BootloaderVersion(bf)
	}
	if !in.KernelImageNotMeasured {
		g.Go(func() error {
			kd, err := kf.AuthenticodeSHA384()
			if err != nil {
				return fmt.Errorf("hashing the kernel: %w", err)
			}
			p.KernelAuthenticode = &kd
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	p.UKIAuthenticode = u.Authenticode
	if secDigests != nil {
		v := pcr11(secDigests)
		p.PCR11 = &v
	}
	cmdline := string(bytes.TrimRight(u.SectionData(".cmdline"), "\x00"))
	if in.Cmdline != nil {
		cmdline = *in.Cmdline
	}
	// The load options the UKI receives: systemd-boot passes the entry's
	// options, for a UKI its .cmdline; without a boot loader, none.
	var opts []byte
	if (in.Bootloader != nil || in.Cmdline != nil) && cmdline != "" {
		opts = utf16z(cmdline)
	}

	add := func(pcr int, typ uint32, d eventlog.Digest, data []byte, source string) {
		p.Events = append(p.Events, eventlog.Event{Seq: len(p.Events), RTMR: eventlog.PCRToRTMR(pcr), PCR: pcr,
			Type: typ, Digest: d, Data: data, Source: source})
	}
	action := func(pcr int, s, source string) {
		add(pcr, eventlog.EvEFIAction, sha512.Sum384([]byte(s)), []byte(s), source)
	}
	image := func(d pe.Digest, size int, source string) {
		// UEFI_IMAGE_LOAD_EVENT; only the length is known ahead of time, so
		// the data here carries the length field alone.
		data := make([]byte, 32)
		binary.LittleEndian.PutUint64(data[8:], uint64(size))
		add(4, eventlog.EvEFIBootServicesApplication, eventlog.Digest(d), data, source)
	}
	const bsa = "edk2 DxeTpm2MeasureBootLib, EV_EFI_BOOT_SERVICES_APPLICATION; TCG PFP 10.4.3"

	action(4, ActionCallingEFIApp, "edk2 TdTcg2Dxe OnReadyToBoot; TCG PFP 10.4.4")
	add(4, eventlog.EvSeparator, sha512.Sum384([]byte{0, 0, 0, 0}), []byte{0, 0, 0, 0},
		"edk2 TdTcg2Dxe OnReadyToBoot, one separator per RTMR; TCG PFP 3.3.2.2")
	if in.GPTEvent != nil {
		add(5, eventlog.EvEFIGPTEvent, sha512.Sum384(in.GPTEvent), in.GPTEvent,
			"edk2 DxeTpm2MeasureBootLib Tcg2MeasureGptTable; TCG PFP 10.4.5 UEFI_GPT_DATA")
	} else {
		p.Notes = append(p.Notes, "no GPT event: booting from a GPT disk adds one to RTMR1 before the first image; pass the disk image to include it")
	}
	if bf != nil {
		image(*p.BootloaderAuthenticode, len(in.Bootloader), "systemd-boot, loaded from the ESP by the boot manager: "+bsa)
		image(u.Authenticode, len(in.UKI), "UKI, loaded by systemd-boot with LoadImage: "+bsa)
		p.Notes = append(p.Notes, "systemd-boot's loader.conf and entries are not measured: disable the editor (editor no) so the console cannot change the command line")
	} else {
		image(u.Authenticode, len(in.UKI), "UKI, loaded as the boot option: "+bsa)
	}
	switch {
	case verityPinned(cmdline):
	case !mountsRoot(cmdline):
		p.Notes = append(p.Notes, "no root= on the command line: the initrd, measured into RTMR2, is the root file system (the whole OS in the UKI)")
	default:
		p.Notes = append(p.Notes, "the command line pins no dm-verity root hash (roothash=/usrhash=): the root file system, with the fleetbox binary and its configuration, is not covered by any measurement")
	}
	if stubCC {
		// systemd-boot measures the options it passes when it, too, can
		// measure into RTMRs (its own version, unless overridden).
		bootCC := p.BootloaderVersion >= 255 || in.StubMeasuresCC != nil
		if bf != nil && opts != nil && bootCC {
			add(12, eventlog.EvIPL, sha512.Sum384(opts), opts, "systemd-boot, load options it passes to the UKI")
		}
		for _, sd := range secDigests {
			nameZ := append([]byte(sd.name), 0)
			add(11, eventlog.EvIPL, sd.name0, nameZ, "systemd-stub, section name "+sd.name+"; systemd UKI specification")
			add(11, eventlog.EvIPL, sd.data, []byte(sd.name), "systemd-stub, section content "+sd.name+"; systemd UKI specification")
		}
		if opts != nil {
			add(12, eventlog.EvIPL, sha512.Sum384(opts), opts, "systemd-stub, load options it received")
		}
	} else {
		p.Notes = append(p.Notes, fmt.Sprintf("systemd-stub %d does not measure into RTMRs (needs 255+): UKI sections and command line add nothing to RTMR2; the UKI digest in RTMR1 covers them", u.StubVersion))
	}
	if p.KernelAuthenticode != nil {
		image(*p.KernelAuthenticode, len(kernel), "kernel from .linux, loaded by systemd-stub with LoadImage: "+bsa)
	} else {
		p.Notes = append(p.Notes, "the kernel systemd-stub loads is assumed unmeasured (--no-kernel-image); the UKI digest in RTMR1 covers it")
	}
	if kernelCC {
		// systemd-stub hands the kernel the command line it uses (the UKI's
		// .cmdline, or the options it received) as LoadOptions.
		if cmdline != "" {
			kopts := utf16z(cmdline)
			add(9, eventlog.EvEventTag, sha512.Sum384(kopts), taggedEvent(tagLoadOptions, "LOADED_IMAGE::LoadOptions\x00"),
				"Linux EFI stub efi_measure_tagged_event LoadOptions")
		}
		// The initrd systemd-stub hands over through LoadFile2: the
		// .initrd section and what the stub adds to it (initrd.go).
		if d, ok := kernelInitrdDigest(u); ok {
			add(9, eventlog.EvEventTag, d, taggedEvent(tagInitrd, "Linux initrd\x00"),
				"Linux EFI stub efi_measure_tagged_event initrd (LoadFile2 from systemd-stub: .initrd, then the .osrel cpio from 257 on; systemd src/boot/efi/stub.c)")
		}
	} else {
		p.Notes = append(p.Notes, fmt.Sprintf("kernel %q does not measure into RTMRs (EFI CC measurement in libstub needs 6.9+): nothing from the kernel in RTMR2", u.KernelVersion))
	}
	action(5, ActionExitBootServices, "edk2 TdTcg2Dxe OnExitBootServices; TCG PFP 10.4.4")
	action(5, ActionExitBootServicesOK, "edk2 TdTcg2Dxe OnExitBootServices; TCG PFP 10.4.4")

	r := eventlog.Replay(p.Events)
	p.RTMR1, p.RTMR2 = r[1], r[2]
	return p, nil
}

// verityPinned reports whether a kernel command line pins a dm-verity root
// hash (systemd-veritysetup-generator's roothash= or usrhash=, as mkosi's
// Verity= writes it), which extends the measurement to the root file system.
// mountsRoot reports whether the command line names a root or /usr file
// system to mount after the initrd (root=, mount.usr=).
func mountsRoot(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "root=") || strings.HasPrefix(f, "mount.usr=") || strings.HasPrefix(f, "usr=") {
			return true
		}
	}
	return false
}

func verityPinned(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "roothash=") || strings.HasPrefix(f, "usrhash=") {
			return true
		}
	}
	return false
}

// PCR11 is what the UKI's systemd-stub extends into PCR 11 for the UKI's
// sections, starting from zero: for each measured section, SHA-384 of its
// name with a NUL, then SHA-384 of its content (systemd-measure's
// "calculate" without a phase, sha384 bank).
func PCR11(u *UKI) attest.RTMR { return pcr11(sectionDigests(u)) }

type sectionDigest struct {
	name        string
	name0, data eventlog.Digest // SHA-384 of the NUL-terminated name, of the content
}

// sectionDigests hashes, in measuring order, the sections the UKI's stub
// measures and the UKI holds.
func sectionDigests(u *UKI) []sectionDigest {
	var out []sectionDigest
	for _, name := range MeasuredSections(u.StubVersion) {
		data := u.SectionData(name)
		if data == nil {
			continue
		}
		out = append(out, sectionDigest{name, sha512.Sum384(append([]byte(name), 0)), sha512.Sum384(data)})
	}
	return out
}

func pcr11(ds []sectionDigest) attest.RTMR {
	var r attest.RTMR
	for _, d := range ds {
		r = eventlog.Extend(r, d.name0)
		r = eventlog.Extend(r, d.data)
	}
	return r
}

// utf16z is a command line as EFI load options: UTF-16LE with a NUL.
func utf16z(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u)+2)
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

// taggedEvent is TCG_PCClientTaggedEvent: u32 id, u32 size, data.
func taggedEvent(id uint32, desc string) []byte {
	b := make([]byte, 8+len(desc))
	binary.LittleEndian.PutUint32(b, id)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(desc)))
	copy(b[8:], desc)
	return b
}
