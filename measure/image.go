// Package measure computes, from the files that make a fleetbox image, the
// TDX measurements a TD booted from it will report, so that anyone can
// check a TeeAdmissionPolicy without TDX hardware:
//
//   - MRTD from the TDVF/OVMF firmware (measure/tdvf), in each page order
//     hypervisors use;
//   - RTMR1 and RTMR2 from the boot chain: systemd-boot, the UKI and what
//     its systemd-stub and kernel measure (measure/uki, measure/pe);
//   - RTMR3 from fleetbox's own runtime events (RuntimeEvent, BootEvents);
//   - RTMR0 is not predicted: it depends on the hypervisor's ACPI tables and
//     TD HOB, so it comes from a reference boot (a quote or an event log).
//
// MeasureImage writes all of it as measurements.json, and
// PolicyFromMeasurements turns that into the TeeAdmissionPolicy the
// namespace and the KMS enforce. measure/eventlog replays real event logs and
// explains a mismatch event by event.
package measure

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/fleetbox/fleetbox/internal/strictjson"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/measure/pe"
	"github.com/fleetbox/fleetbox/measure/tdvf"
	"github.com/fleetbox/fleetbox/measure/uki"
)

// MeasurementsVersion is the format version of measurements.json.
const MeasurementsVersion = 1

// MaxMeasurementsSize bounds a measurements.json document.
const MaxMeasurementsSize = 1 << 20

// Measurements is the content of measurements.json.
type Measurements struct {
	Version int `json:"version"`
	// FleetboxVersion is the version of the fleetbox binary that computed it.
	FleetboxVersion string `json:"fleetboxVersion"`
	// Profiles maps an image profile name ("prod", "dev") to its values.
	Profiles map[string]*Profile `json:"profiles"`
}

// InputFile names an input file and its SHA-256.
type InputFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// Profile holds the measurements of one image profile.
type Profile struct {
	// MRTD per page order ("single-pass", "two-pass", "all-regions").
	MRTD map[tdvf.Order]attest.MRTD `json:"mrtd"`
	// RTMR0 values taken from reference boots; empty when none was given
	// (RTMR0 cannot be computed from the image).
	RTMR0 []attest.RTMR `json:"rtmr0"`
	RTMR1 attest.RTMR   `json:"rtmr1"`
	RTMR2 attest.RTMR   `json:"rtmr2"`
	// RTMR3 is nil when the profile has no configuration file to hash.
	RTMR3 *attest.RTMR `json:"rtmr3"`
	// Inputs are the files the values were computed from, by role
	// ("firmware", "uki", "bootloader", "disk", "config", "rtmr0Log").
	Inputs map[string]InputFile `json:"inputs"`
	// Notes are the assumptions behind the values.
	Notes []string `json:"notes,omitempty"`
	// Events are the predicted RTMR1-3 events in the JSON event-log form
	// (eventlog.MarshalJSON), so that `measure eventlog --expect` can name
	// the events a real boot changed.
	Events json.RawMessage `json:"events,omitempty"`
}

// ExpectedEvents returns the profile's predicted events.
func (p *Profile) ExpectedEvents() ([]eventlog.Event, error) {
	if len(p.Events) == 0 {
		return nil, errors.New("measure: profile has no predicted events")
	}
	l, err := eventlog.ParseJSON(p.Events)
	if err != nil {
		return nil, fmt.Errorf("measure: predicted events: %w", err)
	}
	return l.Events, nil
}

// ImageOptions control MeasureImage.
type ImageOptions struct {
	// Firmware is the TDVF/OVMF image (required).
	Firmware string
	// FleetboxVersion is recorded in the output.
	FleetboxVersion string
	// RTMR0Logs are event logs of reference boots; their RTMR0 replays are
	// recorded for every profile.
	RTMR0Logs []string
	// RTMR0 are RTMR0 values taken from reference boots' quotes.
	RTMR0 []attest.RTMR
	// StubMeasuresCC and KernelMeasuresCC override the version detection
	// (see uki.Input).
	StubMeasuresCC, KernelMeasuresCC *bool
	// Profile, if set, names the directory itself as that one profile
	// (the layout image/build.sh writes: build/image/PROFILE/) and
	// subdirectories are not searched.
	Profile string
}

// Layout of an image directory, one profile per subdirectory (or the
// directory itself, profile "default"):
const (
	ConfigFile = "fleetbox.conf" // the appliance configuration, hashed into RTMR3
)

// ErrNoProfiles means the directory holds no UKI.
var ErrNoProfiles = errors.New("measure: no profile found (a directory with a UKI: an .efi file with a .linux section)")

// MeasureImage measures every profile under dir. A profile is dir itself or
// any direct subdirectory that holds a UKI (an .efi file with a .linux
// section); its name is the subdirectory's ("default" for dir). In a profile
// directory: systemd-boot (an .efi whose .sdmagic names systemd-boot) is the
// bootloader if present; a *.raw disk image gives the GPT event; ConfigFile,
// if present, gives RTMR3.
func MeasureImage(dir string, opts *ImageOptions) (*Measurements, error) {
	fw, err := os.ReadFile(opts.Firmware)
	if err != nil {
		return nil, fmt.Errorf("reading firmware: %w", err)
	}
	md, err := tdvf.Parse(fw)
	if err != nil {
		return nil, fmt.Errorf("firmware %s: %w", opts.Firmware, err)
	}
	mrtd, err := md.MRTDs(fw, nil)
	if err != nil {
		return nil, fmt.Errorf("firmware %s: %w", opts.Firmware, err)
	}
	rtmr0 := append([]attest.RTMR{}, opts.RTMR0...)
	rtmr0Inputs := map[string]InputFile{}
	for i, p := range opts.RTMR0Logs {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading RTMR0 reference log: %w", err)
		}
		l, err := eventlog.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("RTMR0 reference log %s: %w", p, err)
		}
		r := l.Replay()[0]
		if !slices.Contains(rtmr0, r) {
			rtmr0 = append(rtmr0, r)
		}
		rtmr0Inputs[fmt.Sprintf("rtmr0Log%d", i)] = InputFile{Path: p, SHA256: sum(b)}
	}

	m := &Measurements{Version: MeasurementsVersion, FleetboxVersion: opts.FleetboxVersion, Profiles: map[string]*Profile{}}
	dirs := map[string]string{"default": dir}
	if opts.Profile != "" {
		dirs = map[string]string{opts.Profile: dir}
	} else {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("reading image directory: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() {
				dirs[e.Name()] = filepath.Join(dir, e.Name())
			}
		}
	}
	for name, d := range dirs {
		p, err := measureProfile(d, name, opts)
		if err != nil {
			return nil, fmt.Errorf("profile %s: %w", name, err)
		}
		if p == nil {
			continue
		}
		p.MRTD = mrtd
		p.RTMR0 = rtmr0
		p.Inputs["firmware"] = InputFile{Path: opts.Firmware, SHA256: sum(fw)}
		for k, v := range rtmr0Inputs {
			p.Inputs[k] = v
		}
		if len(rtmr0) == 0 {
			p.Notes = append(p.Notes, "rtmr0 depends on the hypervisor's ACPI tables and TD HOB and cannot be computed from the image: take it from a reference boot (--rtmr0-log or --rtmr0) or waive it explicitly in the policy")
		}
		m.Profiles[name] = p
	}
	if len(m.Profiles) == 0 {
		return nil, ErrNoProfiles
	}
	return m, nil
}

func measureProfile(dir, name string, opts *ImageOptions) (*Profile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ukiPath, bootPath, diskPath string
	var ukiImg, bootImg []byte
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		switch {
		case strings.EqualFold(filepath.Ext(e.Name()), ".efi"):
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			f, err := pe.Parse(b)
			if err != nil {
				continue
			}
			switch {
			case f.Section(".linux") != nil:
				if ukiPath != "" {
					return nil, fmt.Errorf("two UKIs: %s and %s", ukiPath, p)
				}
				ukiPath, ukiImg = p, b
			case uki.BootloaderVersion(f) > 0:
				bootPath, bootImg = p, b
			}
		case strings.EqualFold(filepath.Ext(e.Name()), ".raw"):
			diskPath = p
		}
	}
	if ukiPath == "" {
		return nil, nil
	}
	in := &uki.Input{UKI: ukiImg, Bootloader: bootImg, StubMeasuresCC: opts.StubMeasuresCC, KernelMeasuresCC: opts.KernelMeasuresCC}
	p := &Profile{Inputs: map[string]InputFile{"uki": {Path: ukiPath, SHA256: sum(ukiImg)}}}
	if bootPath != "" {
		p.Inputs["bootloader"] = InputFile{Path: bootPath, SHA256: sum(bootImg)}
	}
	if diskPath != "" {
		f, err := os.Open(diskPath)
		if err != nil {
			return nil, err
		}
		gpt, err := uki.GPTEventData(f, 512)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", diskPath, err)
		}
		in.GPTEvent = gpt
		// The disk's content beyond the GPT is not measured; record the
		// GPT's own digest rather than hashing gigabytes.
		p.Inputs["disk"] = InputFile{Path: diskPath, SHA256: sum(gpt)}
		p.Notes = append(p.Notes, "disk sha256 is of its UEFI_GPT_DATA (the part the firmware measures), not the whole file")
	}
	pred, err := uki.Predict(in)
	if err != nil {
		return nil, err
	}
	p.RTMR1, p.RTMR2 = pred.RTMR1, pred.RTMR2
	p.Notes = append(p.Notes, pred.Notes...)
	events := pred.Events
	cfgPath := filepath.Join(dir, ConfigFile)
	if cfg, err := os.ReadFile(cfgPath); err == nil {
		evs, err := BootEvents(name, ConfigHash(cfg))
		if err != nil {
			return nil, err
		}
		r := ReplayRTMR3(evs)
		p.RTMR3 = &r
		events = append(events, RuntimeLogEvents(evs)...)
		p.Inputs["config"] = InputFile{Path: cfgPath, SHA256: sum(cfg)}
	} else if errors.Is(err, os.ErrNotExist) {
		p.Notes = append(p.Notes, "no "+ConfigFile+": rtmr3 not predicted")
	} else {
		return nil, err
	}
	if p.Events, err = eventlog.MarshalJSON(events); err != nil {
		return nil, err
	}
	return p, nil
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Marshal writes the measurements as indented JSON with sorted keys.
func (m *Measurements) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ParseMeasurements reads measurements.json.
func ParseMeasurements(b []byte) (*Measurements, error) {
	if len(b) > MaxMeasurementsSize {
		return nil, fmt.Errorf("measurements: %d bytes exceeds the %d-byte limit", len(b), MaxMeasurementsSize)
	}
	var m Measurements
	if err := strictjson.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("measurements: %w", err)
	}
	if m.Version != MeasurementsVersion {
		return nil, fmt.Errorf("measurements: version %d, want %d", m.Version, MeasurementsVersion)
	}
	if len(m.Profiles) == 0 {
		return nil, errors.New("measurements: no profiles")
	}
	for name, p := range m.Profiles {
		if p == nil {
			return nil, fmt.Errorf("measurements: profile %q is null", name)
		}
		for o := range p.MRTD {
			if _, err := tdvf.ParseOrder(string(o)); err != nil {
				return nil, fmt.Errorf("measurements: profile %q: %w", name, err)
			}
		}
		if len(p.MRTD) == 0 {
			return nil, fmt.Errorf("measurements: profile %q has no mrtd", name)
		}
	}
	return &m, nil
}

// ProfileNames returns the profile names, sorted.
func (m *Measurements) ProfileNames() []string {
	names := make([]string, 0, len(m.Profiles))
	for n := range m.Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
