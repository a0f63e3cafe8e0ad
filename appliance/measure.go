package appliance

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/atomicfile"
	"github.com/fleetbox/fleetbox/measure"
)

// RTMR3Path is the kernel's TDX measurement register file for RTMR3 with
// SHA-384 (Documentation/ABI/testing/sysfs-devices-virtual-misc-tdx_guest,
// KernelVersion v6.16): writing a 48-byte digest extends the register,
// reading returns its value.
const RTMR3Path = "/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384"

// Files the boot leaves under the run directory (tmpfs) for the node and
// for whoever checks a quote of this boot.
const (
	// RTMR3LogFile is the RTMR3 event log (measure.MarshalRuntimeLog, the
	// JSON form `fleetbox measure eventlog` replays).
	RTMR3LogFile = "rtmr3-events.json"
	// AttestationFile tells the node where its quotes come from
	// (`fleetbox node run --attest-source appliance`).
	AttestationFile = "attestation.json"
)

// Extender extends RTMR3. The real one writes RTMR3Path; a mock boot has
// none and only replays.
type Extender interface {
	Extend(d [48]byte) error
}

// SysfsExtender writes digests to the kernel's RTMR3 file.
type SysfsExtender struct{ Path string }

// Extend implements Extender.
func (s SysfsExtender) Extend(d [48]byte) error {
	f, err := os.OpenFile(s.Path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("extending RTMR3: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(d[:]); err != nil {
		return fmt.Errorf("extending RTMR3 through %s: %w", s.Path, err)
	}
	return nil
}

// extendBootEvents extends RTMR3 with the boot events (measure.BootEvents:
// profile, configuration hash, boot-done), writes their log, and returns
// the RTMR3 a quote taken now must show when RTMR3 started at zero.
func extendBootEvents(x Extender, runDir, profile string, configHash [32]byte) (attest.RTMR, []measure.RuntimeEvent, error) {
	events, err := measure.BootEvents(profile, configHash)
	if err != nil {
		return attest.RTMR{}, nil, err
	}
	log, err := measure.MarshalRuntimeLog(events)
	if err != nil {
		return attest.RTMR{}, nil, err
	}
	// The log is written first: a verifier that finds a quote without a
	// log learns nothing; one that finds a log without its events extended
	// sees the mismatch event by event.
	if err := writeFileAtomic(filepath.Join(runDir, RTMR3LogFile), log, 0o644); err != nil {
		return attest.RTMR{}, nil, fmt.Errorf("writing the RTMR3 event log: %w", err)
	}
	if x != nil {
		for _, e := range events {
			if err := x.Extend(e.Digest()); err != nil {
				return attest.RTMR{}, nil, fmt.Errorf("event %s: %w", e.Name, err)
			}
		}
	}
	return measure.ReplayRTMR3(events), events, nil
}

// Attestation is AttestationFile: how the node gets quotes in this boot.
type Attestation struct {
	// Source is "tdx" or "mock".
	Source string `json:"source"`
	// Mock is the mock quote's registers (source mock only).
	Mock *AttestationMock `json:"mock,omitempty"`
}

// AttestationMock holds a mock quote's registers, hex.
type AttestationMock struct {
	MRTD string    `json:"mrtd"`
	RTMR [4]string `json:"rtmr"`
}

func attestationFor(src attest.Source, mock *attest.MockQuote) Attestation {
	if src.Kind() != "mock" || mock == nil {
		return Attestation{Source: src.Kind()}
	}
	a := Attestation{Source: "mock", Mock: &AttestationMock{MRTD: mock.MRTD.String()}}
	for i := range mock.RTMR {
		a.Mock.RTMR[i] = mock.RTMR[i].String()
	}
	return a
}

// LoadAttestation reads the AttestationFile an appliance boot wrote and
// returns the quote source it names: configfs-tsm for tdx, a mock source
// with the boot's registers (RTMR3 replayed) for mock.
func LoadAttestation(path string) (attest.Source, error) {
	b, err := readLimited(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is missing: the appliance boot (fleetbox-appliance.service) did not run or did not finish", path)
	}
	if err != nil {
		return nil, err
	}
	var a Attestation
	if err := decodeStrict(b, &a); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	src, err := attestationSource(path, &a)
	if err != nil {
		return nil, err
	}
	return &withEventLog{Source: src, path: filepath.Join(filepath.Dir(path), EventLogFile)}, nil
}

// withEventLog gives a source's quotes this boot's event log (EventLogFile,
// written by the boot beside the attestation file), so that a fleet
// announce carries it and a policy can pin fleetbox's RTMR3 events.
type withEventLog struct {
	attest.Source
	path string
}

func (w *withEventLog) GetEvidence(ctx context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	q, err := w.GetQuote(ctx, rd)
	if err != nil {
		return nil, err
	}
	ev := &attest.Evidence{Quote: q}
	b, err := os.ReadFile(w.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ev, nil // a boot that could not write it said so on the console
	case err != nil:
		return nil, fmt.Errorf("reading the boot's event log: %w", err)
	case len(b) > attest.MaxEventLog:
		return nil, fmt.Errorf("the boot's event log %s is %d bytes, over %d", w.path, len(b), attest.MaxEventLog)
	}
	ev.EventLog = b
	return ev, nil
}

func attestationSource(path string, a *Attestation) (attest.Source, error) {
	var err error
	switch a.Source {
	case "tdx":
		return attest.NewTSMSource()
	case "mock":
		if a.Mock == nil {
			return nil, fmt.Errorf("%s: source mock without registers", path)
		}
		var q attest.MockQuote
		if q.MRTD, err = attest.ParseMRTD(a.Mock.MRTD); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for i, s := range a.Mock.RTMR {
			if q.RTMR[i], err = attest.ParseRTMR(s); err != nil {
				return nil, fmt.Errorf("%s: rtmr%d: %w", path, i, err)
			}
		}
		return &attest.MockSource{Quote: q}, nil
	}
	return nil, fmt.Errorf("%s: source %q: want tdx or mock", path, a.Source)
}

// detectTDX returns a configfs-tsm source when the machine can make TDX
// quotes: it takes one quote over zero report_data, which also proves the
// provider is tdx_guest.
func detectTDX(ctx context.Context) (attest.Source, error) {
	src, err := attest.NewTSMSource()
	if err != nil {
		return nil, err
	}
	if _, err := src.GetQuote(ctx, attest.ReportData{}); err != nil {
		return nil, fmt.Errorf("%w: %v", attest.ErrNoTDX, err)
	}
	return src, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return atomicfile.Write(path, data, mode)
}
