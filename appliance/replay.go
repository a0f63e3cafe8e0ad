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
