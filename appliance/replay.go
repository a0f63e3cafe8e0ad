package appliance

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// Where a dev boot's replayed registers come from.
const (
	// MockMRTDPath is the fw_cfg entry opt/fleetbox/mock-mrtd: the MRTD of
	// the firmware the host gave QEMU, in hex (unmeasured: only a mock
	// quote ever carries it).
	MockMRTDPath = "/sys/firmware/qemu_fw_cfg/by_name/opt/fleetbox/mock-mrtd/raw"
	// TPMLogPath is the firmware's TCG2 event log as the kernel exposes it.
	TPMLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"
	// FirmwareLogFile under the run directory is the firmware's events in
	// the TDX form (eventlog.TDXFromTPM), as JSON: what the replayed
	// RTMR0-2 of a dev mock quote come from.
	FirmwareLogFile = "firmware-events.json"
)

// CCELPath is the TD's firmware event log (the ACPI CCEL table's data).
const CCELPath = "/sys/firmware/acpi/tables/data/CCEL"

// EventLogFile under the run directory is this boot's whole event log, the
// firmware's events (RTMR0-2) and the appliance's (RTMR3), in the JSON form
// `fleetbox measure eventlog` reads. It travels with the quote to the KMS.
const EventLogFile = "eventlog.json"

// fullEventLog returns the firmware's events (the CCEL on TDX, the vTPM's
// replayed ones in a mock boot) followed by the RTMR3 events, and writes
// them to EventLogFile. A firmware log that cannot be read leaves the
// RTMR3 events alone, with a console line.
func (b *booter) fullEventLog(runtime []eventlog.Event) []byte {
	fw := b.fwEvents
	if fw == nil {
		raw, err := readFileMax(filepath.Join(b.cfg.Root, CCELPath), eventlog.MaxLogSize)
		if err == nil {
			var l *eventlog.Log
			if l, err = eventlog.ParseCCEL(raw); err == nil {
				fw = l.Events
			}
		}
		if err != nil && b.src != "mock" {
			b.say("the firmware's event log (%s) is not readable: %v; the KMS gets the RTMR3 events only", CCELPath, err)
		}
	}
	all := append(append([]eventlog.Event(nil), fw...), runtime...)
	js, err := eventlog.MarshalJSON(all)
	if err != nil {
		return nil
	}
	if err := writeFileAtomic(filepath.Join(b.cfg.RunDir, EventLogFile), js, 0o644); err != nil {
		b.say("writing %s: %v", EventLogFile, err)
	}
	return js
}

// replayMock fills a mock quote's MRTD and RTMR0-2 the way a real TD
// booting this image would show them (MockConfig.Replay), and writes the
// firmware's events to FirmwareLogFile.
func (b *booter) replayMock(q *attest.MockQuote) error {
	raw, err := readLimited(filepath.Join(b.cfg.Root, MockMRTDPath))
	if err != nil {
		return fmt.Errorf("mock replay: reading the MRTD from fw_cfg opt/fleetbox/mock-mrtd (image/qemu.sh passes it): %w", err)
	}
	if q.MRTD, err = attest.ParseMRTD(strings.TrimSpace(string(raw))); err != nil {
		return fmt.Errorf("mock replay: fw_cfg opt/fleetbox/mock-mrtd: %w", err)
	}
	logb, err := readFileMax(filepath.Join(b.cfg.Root, TPMLogPath), eventlog.MaxLogSize)
	if err != nil {
		return fmt.Errorf("mock replay: the firmware's event log: %w (boot with a vTPM: image/qemu.sh starts swtpm)", err)
	}
	l, err := eventlog.ParseTPMLog(logb)
	if errors.Is(err, eventlog.ErrNoSHA384) {
		return fmt.Errorf("mock replay: the vTPM logs no SHA-384 digests (swtpm_setup --pcr-banks sha256,sha384): %w", err)
	}
	if err != nil {
		return fmt.Errorf("mock replay: parsing the firmware's event log: %w", err)
	}
	events := eventlog.TDXFromTPM(l.Events)
	b.fwEvents = events
	regs := eventlog.Replay(events)
	copy(q.RTMR[:3], regs[:3])
	js, err := eventlog.MarshalJSON(events)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(b.cfg.RunDir, FirmwareLogFile), js, 0o644); err != nil {
		return fmt.Errorf("writing the firmware event log: %w", err)
	}
	b.say("MOCK TDX: mrtd %s… from fw_cfg opt/fleetbox/mock-mrtd (the host's measure of the firmware it gave QEMU)", q.MRTD.String()[:16])
	b.say("MOCK TDX: rtmr0 %s… rtmr1 %s… rtmr2 %s… replayed from the firmware's event log (%d events, vTPM, TDX separators; %s)",
		q.RTMR[0].String()[:16], q.RTMR[1].String()[:16], q.RTMR[2].String()[:16], len(events), filepath.Join(b.cfg.RunDir, FirmwareLogFile))
	return nil
}
