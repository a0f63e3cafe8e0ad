package appliance

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure"
)

// Where settings come from inside the image. Paths are joined under
// Config.Root, so tests run the whole boot in a temporary directory.
const (
	ImageConfigPath = "/etc/fleetbox/fleetbox.conf"
	CmdlinePath     = "/proc/cmdline"
	// FwCfgPath is QEMU's fw_cfg entry opt/fleetbox/config
	// (`-fw_cfg name=opt/fleetbox/config,file=F`), read through the
	// qemu_fw_cfg driver's sysfs tree.
	FwCfgPath = "/sys/firmware/qemu_fw_cfg/by_name/opt/fleetbox/config/raw"
)

// Source names where a setting came from and whether that place is
// measured (the image and the kernel command line are; fw_cfg and SMBIOS
// credentials are not).
type Source struct {
	Where    string
	Measured bool
}

func (s Source) String() string {
	if s.Measured {
		return s.Where + ", measured"
	}
	return s.Where + ", unmeasured"
}

var (
	fromImage   = Source{Where: "image " + ImageConfigPath, Measured: true}
	fromCmdline = Source{Where: "kernel command line", Measured: true}
	fromFwCfg   = Source{Where: "fw_cfg opt/fleetbox/config", Measured: false}
)

func fromCredential(name string) Source {
	return Source{Where: "systemd credential " + name, Measured: false}
}

// Setting is a value and where it came from.
type Setting[T any] struct {
	Value T
	From  Source
}

// Settings are the boot's resolved settings. Security settings (profile,
// mock, the KMS trust anchor) come only from measured places; operational
// ones (KMS URL, bootstrap peers, namespaces to fleet-join) may also come
// from unmeasured ones, which then take precedence over the image's
// defaults (the kernel command line still wins over them).
type Settings struct {
	Image *ImageConfig
	// ConfigHash is SHA-256 of fleetbox.conf as stored in the image, the
	// payload of the fleetbox.config-sha256 RTMR3 event.
	ConfigHash [32]byte

	Profile   Setting[string]
	AllowMock Setting[bool]
	KMSPolicy Setting[*attest.Policy]
	KMSKey    Setting[ed25519.PublicKey]

	KMSURL    Setting[string]
	Bootstrap Setting[[]string]
	FleetJoin Setting[[]string]
}

// cmdlineKeys are the fleetbox.* kernel command line options, measured
// into RTMR2 with the rest of the command line.
var cmdlineKeys = map[string]string{
	"fleetbox.kms_url":    "the KMS URL",
	"fleetbox.kms_key":    "the KMS's pinned Ed25519 signing key (base64)",
	"fleetbox.bootstrap":  "bootstrap peers, comma-separated multiaddrs",
	"fleetbox.fleet_join": "namespaces to fleet-join, comma-separated ids",
	"fleetbox.mock":       "off: refuse mock quotes even where the image allows them",
}

// credentialKeys are the systemd credentials (SMBIOS type 11, or
// systemd.set_credential= outside a confidential VM) the appliance reads;
// they carry operational settings only.
var credentialKeys = map[string]bool{
	"fleetbox.kms_url":    true,
	"fleetbox.bootstrap":  true,
	"fleetbox.fleet_join": true,
}

// LoadSettings reads the image configuration, the kernel command line, the
// systemd credentials in credDir (may be empty) and the fw_cfg entry under
// root, and resolves every setting with its source.
func LoadSettings(root, credDir string) (*Settings, error) {
	raw, err := readLimited(filepath.Join(root, ImageConfigPath))
	if err != nil {
		return nil, fmt.Errorf("reading the image configuration: %w", err)
	}
	img, err := ParseImageConfig(raw)
	if err != nil {
		return nil, err
	}
	s := &Settings{
		Image:      img,
		ConfigHash: measure.ConfigHash(raw),
		Profile:    Setting[string]{img.Profile, fromImage},
		AllowMock:  Setting[bool]{img.AllowMock, fromImage},
		KMSURL:     Setting[string]{img.KMS.URL, fromImage},
		Bootstrap:  Setting[[]string]{img.Node.Bootstrap, fromImage},
		FleetJoin:  Setting[[]string]{img.Node.FleetJoin, fromImage},
	}
	if len(img.KMS.Policy) > 0 {
		pol, err := attest.ParsePolicy(img.KMS.Policy)
		if err != nil {
			return nil, fmt.Errorf("fleetbox.conf: kms.policy: %w", err)
		}
		s.KMSPolicy = Setting[*attest.Policy]{pol, fromImage}
	}
	if img.KMS.PublicKey != "" {
		k, _ := parsePublicKey(img.KMS.PublicKey) // checked by ParseImageConfig
		s.KMSKey = Setting[ed25519.PublicKey]{k, fromImage}
	}

	// Unmeasured operational sources, lowest precedence first: fw_cfg,
	// then credentials. The command line, measured, is applied last.
	if b, err := readLimited(filepath.Join(root, FwCfgPath)); err == nil {
		op, err := ParseOperational(b)
		if err != nil {
			return nil, fmt.Errorf("fw_cfg opt/fleetbox/config: %w (it may set kmsUrl, bootstrap and fleetJoin; "+
				"security settings come only from the image or the kernel command line)", err)
		}
		s.applyOperational(op, fromFwCfg)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading fw_cfg opt/fleetbox/config: %w", err)
	}
	if credDir != "" {
		if err := s.applyCredentials(credDir); err != nil {
			return nil, err
		}
	}
	cl, err := readLimited(filepath.Join(root, CmdlinePath))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the kernel command line: %w", err)
	}
	if err := s.applyCmdline(string(cl)); err != nil {
		return nil, err
	}
	if s.KMSURL.Value == "" {
		return nil, errors.New("no KMS URL: set kms.url in fleetbox.conf, fleetbox.kms_url= on the kernel command line, " +
			"the credential fleetbox.kms_url or kmsUrl in fw_cfg opt/fleetbox/config")
	}
	if err := checkKMSURL(s.KMSURL.Value); err != nil {
		return nil, fmt.Errorf("%w (from %s)", err, s.KMSURL.From)
	}
	return s, nil
}

func (s *Settings) applyOperational(op *Operational, from Source) {
	if op.KMSURL != "" {
		s.KMSURL = Setting[string]{op.KMSURL, from}
	}
	if op.Bootstrap != nil {
		s.Bootstrap = Setting[[]string]{op.Bootstrap, from}
	}
	if op.FleetJoin != nil {
		s.FleetJoin = Setting[[]string]{op.FleetJoin, from}
	}
}

// applyCredentials reads fleetbox.* credentials. Any other fleetbox.*
// credential is refused by name: a credential is not measured, so it may
// not carry a security setting.
func (s *Settings) applyCredentials(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading credentials: %w", err)
	}
	op := &Operational{}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "fleetbox.") {
			continue
		}
		if !credentialKeys[name] {
			return fmt.Errorf("credential %s: not an operational setting; security settings come only from the image or the kernel command line", name)
		}
		b, err := readLimited(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("credential %s: %w", name, err)
		}
		v := strings.TrimSpace(string(b))
		switch name {
		case "fleetbox.kms_url":
			op.KMSURL = v
		case "fleetbox.bootstrap":
			op.Bootstrap = splitList(v)
		case "fleetbox.fleet_join":
			op.FleetJoin = splitList(v)
		}
		s.applyOperational(op, fromCredential(name))
		*op = Operational{}
	}
	return nil
}

// applyCmdline applies fleetbox.* options of the kernel command line. An
// unknown fleetbox.* option is an error: a typo must not silently leave a
// setting at its default.
func (s *Settings) applyCmdline(cmdline string) error {
	for _, w := range splitCmdline(cmdline) {
		if !strings.HasPrefix(w, "fleetbox.") {
			continue
		}
		k, v, ok := strings.Cut(w, "=")
		if _, known := cmdlineKeys[k]; !known {
			return fmt.Errorf("kernel command line: unknown option %q (known: %s)", k, strings.Join(sortedKeys(cmdlineKeys), ", "))
		}
		if !ok || v == "" {
			return fmt.Errorf("kernel command line: %s needs a value (%s)", k, cmdlineKeys[k])
		}
		switch k {
		case "fleetbox.kms_url":
			s.KMSURL = Setting[string]{v, fromCmdline}
		case "fleetbox.kms_key":
			key, err := parsePublicKey(v)
			if err != nil {
				return fmt.Errorf("kernel command line: fleetbox.kms_key: %w", err)
			}
			s.KMSKey = Setting[ed25519.PublicKey]{key, fromCmdline}
		case "fleetbox.bootstrap":
			s.Bootstrap = Setting[[]string]{splitList(v), fromCmdline}
		case "fleetbox.fleet_join":
			s.FleetJoin = Setting[[]string]{splitList(v), fromCmdline}
		case "fleetbox.mock":
			if v != "off" {
				return fmt.Errorf("kernel command line: fleetbox.mock=%s: only off is allowed (the image decides whether mock is allowed)", v)
			}
			s.AllowMock = Setting[bool]{false, fromCmdline}
		}
	}
	return nil
}

// splitCmdline splits a kernel command line into words; double quotes
// group a value with spaces, as the kernel's parser does.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, have = !inQuote, true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
