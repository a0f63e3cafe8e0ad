// Package eventlog parses TDX event logs, replays them into RTMR values and
// explains, event by event, why a replay differs from a quote.
//
// Two forms are read:
//   - the binary TCG2 crypto-agile event log of a confidential VM (the CCEL,
//     exposed by Linux at /sys/firmware/acpi/tables/data/CCEL), TCG PC Client
//     Platform Firmware Profile (PFP) spec 1.05, section 10 "Event Logging",
//     with the CC measurement register (MR) indices of UEFI 2.10 section
//     38.4.1 (EFI_CC_MEASUREMENT_PROTOCOL): MR 0 = MRTD, 1..4 = RTMR0..3;
//   - the JSON form dstack publishes: an array of {imr, event_type, digest,
//     event, event_payload}, where imr is the RTMR index and RTMR3 runtime
//     events (type 0x08000001) carry a digest that can be recomputed.
package eventlog

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf16"

	"github.com/fleetbox/fleetbox/attest"
)

// Registers is the number of RTMRs.
const Registers = 4

// MaxLogSize bounds a log; a CCEL area is 64 KiB, dstack JSON logs ~20 KB.
const MaxLogSize = 4 << 20

// maxEvents bounds the number of events one log may hold.
const maxEvents = 1 << 16

// Event types, TCG PC Client PFP spec 1.05, table 9 "Event Types".
const (
	EvPrebootCert                = 0x00000000
	EvPostCode                   = 0x00000001
	EvNoAction                   = 0x00000003
	EvSeparator                  = 0x00000004
	EvAction                     = 0x00000005
	EvEventTag                   = 0x00000006
	EvSCRTMContents              = 0x00000007
	EvSCRTMVersion               = 0x00000008
	EvCPUMicrocode               = 0x00000009
	EvPlatformConfigFlags        = 0x0000000a
	EvTableOfDevices             = 0x0000000b
	EvCompactHash                = 0x0000000c
	EvIPL                        = 0x0000000d
	EvIPLPartitionData           = 0x0000000e
	EvNonhostCode                = 0x0000000f
	EvNonhostConfig              = 0x00000010
	EvNonhostInfo                = 0x00000011
	EvOmitBootDeviceEvents       = 0x00000012
	EvEFIVariableDriverConfig    = 0x80000001
	EvEFIVariableBoot            = 0x80000002
	EvEFIBootServicesApplication = 0x80000003
	EvEFIBootServicesDriver      = 0x80000004
	EvEFIRuntimeServicesDriver   = 0x80000005
	EvEFIGPTEvent                = 0x80000006
	EvEFIAction                  = 0x80000007
	EvEFIPlatformFirmwareBlob    = 0x80000008
	EvEFIHandoffTables           = 0x80000009
	EvEFIPlatformFirmwareBlob2   = 0x8000000a
	EvEFIHandoffTables2          = 0x8000000b
	EvEFIVariableBoot2           = 0x8000000c
	EvEFIHCRTMEvent              = 0x80000010
	EvEFIVariableAuthority       = 0x800000e0
	// EvRuntime is dstack's RTMR3 runtime event (not a TCG type); fleetbox
	// uses the same type for its own RTMR3 events.
	EvRuntime = 0x08000001
)

var typeNames = map[uint32]string{
	EvPrebootCert: "EV_PREBOOT_CERT", EvPostCode: "EV_POST_CODE", 2: "EV_UNUSED",
	EvNoAction: "EV_NO_ACTION", EvSeparator: "EV_SEPARATOR", EvAction: "EV_ACTION",
	EvEventTag: "EV_EVENT_TAG", EvSCRTMContents: "EV_S_CRTM_CONTENTS",
	EvSCRTMVersion: "EV_S_CRTM_VERSION", EvCPUMicrocode: "EV_CPU_MICROCODE",
	EvPlatformConfigFlags: "EV_PLATFORM_CONFIG_FLAGS", EvTableOfDevices: "EV_TABLE_OF_DEVICES",
	EvCompactHash: "EV_COMPACT_HASH", EvIPL: "EV_IPL", EvIPLPartitionData: "EV_IPL_PARTITION_DATA",
	EvNonhostCode: "EV_NONHOST_CODE", EvNonhostConfig: "EV_NONHOST_CONFIG",
	EvNonhostInfo: "EV_NONHOST_INFO", EvOmitBootDeviceEvents: "EV_OMIT_BOOT_DEVICE_EVENTS",
	EvEFIVariableDriverConfig: "EV_EFI_VARIABLE_DRIVER_CONFIG", EvEFIVariableBoot: "EV_EFI_VARIABLE_BOOT",
	EvEFIBootServicesApplication: "EV_EFI_BOOT_SERVICES_APPLICATION",
	EvEFIBootServicesDriver:      "EV_EFI_BOOT_SERVICES_DRIVER",
	EvEFIRuntimeServicesDriver:   "EV_EFI_RUNTIME_SERVICES_DRIVER",
	EvEFIGPTEvent:                "EV_EFI_GPT_EVENT", EvEFIAction: "EV_EFI_ACTION",
	EvEFIPlatformFirmwareBlob: "EV_EFI_PLATFORM_FIRMWARE_BLOB", EvEFIHandoffTables: "EV_EFI_HANDOFF_TABLES",
	EvEFIPlatformFirmwareBlob2: "EV_EFI_PLATFORM_FIRMWARE_BLOB2", EvEFIHandoffTables2: "EV_EFI_HANDOFF_TABLES2",
	EvEFIVariableBoot2: "EV_EFI_VARIABLE_BOOT2", EvEFIHCRTMEvent: "EV_EFI_HCRTM_EVENT",
	EvEFIVariableAuthority: "EV_EFI_VARIABLE_AUTHORITY", EvRuntime: "RUNTIME_EVENT",
}

// TypeName names an event type ("EV_EFI_ACTION", or "0x12345678").
func TypeName(t uint32) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("0x%08x", t)
}

// Digest is a SHA-384 event digest.
type Digest [sha512.Size384]byte

func (d Digest) String() string { return fmt.Sprintf("%x", d[:]) }

// Event is one measured event.
type Event struct {
	// Seq is the event's position in its log, from 0, counting every event
	// the log holds (including EV_NO_ACTION ones, which are not replayed).
	Seq int
	// RTMR is the register the event extends, 0..3 (CC MR index - 1).
	RTMR int
	// PCR is the TPM PCR the event belongs to when known (a vTPM log or a
	// prediction), -1 otherwise (a CC log records only the RTMR).
	PCR  int
	Type uint32
	// Digest is the SHA-384 extended into the register.
	Digest Digest
	// Data is the event data as logged.
	Data []byte
	// Name and Payload are set for runtime events (EvRuntime).
	Name    string
	Payload []byte
	// Logged is the digest the log states for a runtime event when it
	// differs from or is absent beside the one recomputed into Digest;
	// LoggedSet says whether the log stated one.
	Logged    Digest
	LoggedSet bool
	// Source says where the event comes from, for predicted events
	// (a spec section or a document); empty for parsed events.
	Source string
}

// Description is a one-line human-readable account of the event.
func (e *Event) Description() string {
	var b strings.Builder
	b.WriteString(TypeName(e.Type))
	if d := describeData(e); d != "" {
		b.WriteString(" ")
		b.WriteString(d)
	}
	if e.Source != "" {
		b.WriteString(" [")
		b.WriteString(e.Source)
		b.WriteString("]")
	}
	return b.String()
}

func describeData(e *Event) string {
	switch e.Type {
	case EvRuntime:
		p := printable(e.Payload)
		if p == "" && len(e.Payload) > 0 {
			p = fmt.Sprintf("%x", e.Payload)
		}
		return fmt.Sprintf("%q payload %s", e.Name, short(p, 64))
	case EvEFIAction, EvAction, EvIPL, EvPlatformConfigFlags, EvSCRTMVersion, EvCompactHash:
		if s := printable(e.Data); s != "" {
			return fmt.Sprintf("%q", short(s, 80))
		}
		if s := printable16(e.Data); s != "" {
			return fmt.Sprintf("%q", short(s, 80))
		}
	case EvSeparator:
		return fmt.Sprintf("%x", e.Data)
	case EvEventTag:
		// TCG_PCClientTaggedEvent: u32 id, u32 size, data.
		if len(e.Data) >= 8 {
			n := binary.LittleEndian.Uint32(e.Data[4:8])
			if uint64(n) <= uint64(len(e.Data)-8) {
				return fmt.Sprintf("tag 0x%08x %q", binary.LittleEndian.Uint32(e.Data), short(printable(e.Data[8:8+n]), 80))
			}
		}
	case EvEFIVariableDriverConfig, EvEFIVariableBoot, EvEFIVariableBoot2, EvEFIVariableAuthority:
		// UEFI_VARIABLE_DATA: GUID, u64 name length (chars), u64 data length, name (UTF-16).
		if len(e.Data) >= 32 {
			n := binary.LittleEndian.Uint64(e.Data[16:24])
			if n <= uint64(len(e.Data)-32)/2 {
				return fmt.Sprintf("variable %s", utf16String(e.Data[32:32+2*n]))
			}
		}
	case EvEFIBootServicesApplication, EvEFIBootServicesDriver, EvEFIRuntimeServicesDriver:
		// UEFI_IMAGE_LOAD_EVENT: u64 location, u64 length, u64 link address, u64 path length, path.
		if len(e.Data) >= 32 {
			return fmt.Sprintf("image of %d bytes", binary.LittleEndian.Uint64(e.Data[8:16]))
		}
	case EvEFIGPTEvent:
		return "GPT header and partition entries"
	}
	if len(e.Data) > 0 {
		return fmt.Sprintf("(%d bytes of data)", len(e.Data))
	}
	return ""
}

func printable(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return ""
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return ""
		}
	}
	return string(b)
}

func printable16(b []byte) string {
	if len(b) < 2 || len(b)%2 != 0 {
		return ""
	}
	s := utf16String(b)
	s = strings.TrimRight(s, "\x00")
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return ""
		}
	}
	return s
}

func utf16String(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return strings.TrimRight(string(utf16.Decode(u)), "\x00")
}

func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Log is a parsed event log.
type Log struct {
	// Format is "ccel" or "dstack-json".
	Format string
	// Events are the measured events in log order (EV_NO_ACTION excluded).
	Events []Event
}

// Extend returns SHA-384(r || d), the RTMR extend operation (TDX module
// spec, TDG.MR.RTMR.EXTEND).
func Extend(r attest.RTMR, d Digest) attest.RTMR {
	h := sha512.New384()
	h.Write(r[:])
	h.Write(d[:])
	var out attest.RTMR
	h.Sum(out[:0])
	return out
}

// Replay extends each register from 48 zero bytes with its events in order.
func Replay(events []Event) [Registers]attest.RTMR {
	var r [Registers]attest.RTMR
	for _, e := range events {
		if e.RTMR >= 0 && e.RTMR < Registers {
			r[e.RTMR] = Extend(r[e.RTMR], e.Digest)
		}
	}
	return r
}

// Replay replays the whole log.
func (l *Log) Replay() [Registers]attest.RTMR { return Replay(l.Events) }

// RuntimeDigest is the digest of a runtime event as dstack defines it:
// SHA-384(le32(type) || ":" || name || ":" || payload).
func RuntimeDigest(typ uint32, name string, payload []byte) Digest {
	return attest.RuntimeEventDigest(typ, name, payload)
}

// Parse reads either form: JSON when the first non-space byte is '[' or '{',
// the binary CCEL otherwise.
func Parse(b []byte) (*Log, error) {
	t := bytes.TrimSpace(b)
	if len(t) > 0 && (t[0] == '[' || t[0] == '{') {
		return ParseJSON(b)
	}
	return ParseCCEL(b)
}
