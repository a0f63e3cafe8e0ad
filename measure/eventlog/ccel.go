package eventlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// TCG algorithm ID of SHA-384 (TCG Algorithm Registry, TPM_ALG_SHA384).
const algSHA384 = 0x000c

// maxEventData bounds one event's data; the largest real events (handoff
// tables, GPT) are a few KiB.
const maxEventData = 1 << 20

// specIDSignature opens the first event of a crypto-agile log
// (TCG PC Client PFP spec, 10.4.5.1 "TCG_EfiSpecIDEventStruct").
var specIDSignature = []byte("Spec ID Event03\x00")

// FormatError is a malformed event log.
type FormatError struct {
	Offset int // byte offset (binary) or event position (JSON); -1 if none
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return "eventlog: " + e.Msg
	}
	return fmt.Sprintf("eventlog: at %d: %s", e.Offset, e.Msg)
}

// ErrNoSHA384 means the log does not record SHA-384 digests, which RTMRs use.
var ErrNoSHA384 = errors.New("eventlog: log has no SHA-384 digests")

type reader struct {
	b   []byte
	off int
}

func (r *reader) need(n int) error {
	if n < 0 || len(r.b)-r.off < n {
		return &FormatError{r.off, fmt.Sprintf("truncated: need %d bytes, %d left", n, len(r.b)-r.off)}
	}
	return nil
}

func (r *reader) u16() (uint16, error) {
	if err := r.need(2); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint16(r.b[r.off:])
	r.off += 2
	return v, nil
}

func (r *reader) u32() (uint32, error) {
	if err := r.need(4); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v, nil
}

func (r *reader) bytes(n int) ([]byte, error) {
	if err := r.need(n); err != nil {
		return nil, err
	}
	v := r.b[r.off : r.off+n]
	r.off += n
	return v, nil
}

// ParseCCEL parses a binary TCG2 crypto-agile CC event log. Trailing padding
// (the unused part of the ACPI CCEL area, 0x00 or 0xff) ends the log.
func ParseCCEL(b []byte) (*Log, error) { return parseTCG2(b, false) }

// ParseTPMLog parses a TCG2 crypto-agile log indexed by TPM PCR (a vTPM's
// binary_bios_measurements) and maps each PCR to the RTMR the TDX firmware
// uses for it (UEFI 2.10 section 38.4.1: PCR 0,1,7 -> RTMR0; 2-6 -> RTMR1;
// 8-15 -> RTMR2); Event.PCR keeps the PCR. Events in other PCRs are
// dropped. The log must carry SHA-384 digests. It lets a boot on a vTPM
// (no TDX needed) be compared with a prediction per PCR; the registers
// themselves differ from a TD's, since a TPM firmware logs one separator
// per PCR where TDX firmware logs one per RTMR.
func ParseTPMLog(b []byte) (*Log, error) { return parseTCG2(b, true) }

// PCRToRTMR maps a PCR index to the RTMR TDX firmware extends instead
// (UEFI 2.10 section 38.4.1; edk2 TdTcg2Dxe MapPcrToMrIndex), or -1.
func PCRToRTMR(pcr int) int {
	switch {
	case pcr == 0 || pcr == 1 || pcr == 7:
		return 0
	case pcr >= 2 && pcr <= 6:
		return 1
	case pcr >= 8 && pcr <= 15:
		return 2
	}
	return -1
}

func parseTCG2(b []byte, pcrIndexed bool) (*Log, error) {
	if len(b) > MaxLogSize {
		return nil, &FormatError{-1, fmt.Sprintf("log of %d bytes exceeds the %d-byte limit", len(b), MaxLogSize)}
	}
	r := &reader{b: b}
	sizes, err := parseSpecID(r)
	if err != nil {
		return nil, err
	}
	if _, ok := sizes[algSHA384]; !ok {
		return nil, ErrNoSHA384
	}
	log := &Log{Format: "ccel"}
	if pcrIndexed {
		log.Format = "tpm"
	}
	for seq := 1; r.off < len(b); seq++ {
		if isPadding(b[r.off:]) {
			break
		}
		if seq > maxEvents {
			return nil, &FormatError{r.off, fmt.Sprintf("more than %d events", maxEvents)}
		}
		start := r.off
		mr, err := r.u32()
		if err != nil {
			return nil, err
		}
		typ, err := r.u32()
		if err != nil {
			return nil, err
		}
		if mr == 0xffffffff && typ == 0xffffffff {
			break // padding that is not uniform after the header words
		}
		count, err := r.u32()
		if err != nil {
			return nil, err
		}
		if count == 0 || int(count) > len(sizes) {
			return nil, &FormatError{start, fmt.Sprintf("event %d: %d digests (log declares %d algorithms)", seq, count, len(sizes))}
		}
		var d Digest
		found := false
		for range count {
			alg, err := r.u16()
			if err != nil {
				return nil, err
			}
			n, ok := sizes[alg]
			if !ok {
				return nil, &FormatError{r.off - 2, fmt.Sprintf("event %d: digest algorithm 0x%04x not declared in the header", seq, alg)}
			}
			v, err := r.bytes(int(n))
			if err != nil {
				return nil, err
			}
			if alg == algSHA384 {
				copy(d[:], v)
				found = true
			}
		}
		size, err := r.u32()
		if err != nil {
			return nil, err
		}
		if size > maxEventData {
			return nil, &FormatError{r.off - 4, fmt.Sprintf("event %d: %d bytes of data exceeds the %d-byte limit", seq, size, maxEventData)}
		}
		data, err := r.bytes(int(size))
		if err != nil {
			return nil, err
		}
		if typ == EvNoAction {
			continue // informational, never extended (PFP spec 10.4.1)
		}
		if !found {
			return nil, &FormatError{start, fmt.Sprintf("event %d: no SHA-384 digest", seq)}
		}
		ev := Event{Seq: seq, Type: typ, Digest: d, Data: bytes.Clone(data), PCR: -1}
		if pcrIndexed {
			if mr > 23 {
				return nil, &FormatError{start, fmt.Sprintf("event %d (%s): PCR %d out of range", seq, TypeName(typ), mr)}
			}
			ev.PCR = int(mr)
			if ev.RTMR = PCRToRTMR(ev.PCR); ev.RTMR < 0 {
				continue
			}
		} else {
			if mr < 1 || mr > Registers {
				return nil, &FormatError{start, fmt.Sprintf("event %d (%s): CC MR index %d is not an RTMR (1..4)", seq, TypeName(typ), mr)}
			}
			ev.RTMR = int(mr) - 1
		}
		log.Events = append(log.Events, ev)
	}
	return log, nil
}

// parseSpecID reads the first, SHA-1-format event (TCG_PCR_EVENT) holding
// TCG_EfiSpecIDEventStruct and returns the declared digest sizes.
func parseSpecID(r *reader) (map[uint16]uint16, error) {
	if _, err := r.u32(); err != nil { // PCR/MR index
		return nil, err
	}
	typ, err := r.u32()
	if err != nil {
		return nil, err
	}
	if typ != EvNoAction {
		return nil, &FormatError{4, fmt.Sprintf("first event is %s, not the EV_NO_ACTION Spec ID event of a crypto-agile log", TypeName(typ))}
	}
	if _, err := r.bytes(20); err != nil { // SHA-1 digest field, zero
		return nil, err
	}
	size, err := r.u32()
	if err != nil {
		return nil, err
	}
	if size > maxEventData {
		return nil, &FormatError{r.off - 4, "Spec ID event too large"}
	}
	ev, err := r.bytes(int(size))
	if err != nil {
		return nil, err
	}
	s := &reader{b: ev}
	sig, err := s.bytes(16)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sig, specIDSignature) {
		return nil, &FormatError{32, fmt.Sprintf("Spec ID signature %q, want %q", sig, specIDSignature)}
	}
	if _, err := s.bytes(8); err != nil { // platform class, version, uintn size
		return nil, err
	}
	n, err := s.u32()
	if err != nil {
		return nil, err
	}
	if n == 0 || n > 16 {
		return nil, &FormatError{32 + 24, fmt.Sprintf("Spec ID event declares %d algorithms", n)}
	}
	sizes := make(map[uint16]uint16, n)
	for range n {
		alg, err := s.u16()
		if err != nil {
			return nil, err
		}
		sz, err := s.u16()
		if err != nil {
			return nil, err
		}
		if sz == 0 || sz > 64 {
			return nil, &FormatError{-1, fmt.Sprintf("algorithm 0x%04x: digest size %d", alg, sz)}
		}
		if alg == algSHA384 && sz != 48 {
			return nil, &FormatError{-1, fmt.Sprintf("SHA-384 declared with digest size %d", sz)}
		}
		sizes[alg] = sz
	}
	return sizes, nil
}

func isPadding(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	c := b[0]
	if c != 0 && c != 0xff {
		return false
	}
	for _, x := range b {
		if x != c {
			return false
		}
	}
	return true
}
