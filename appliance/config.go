package appliance

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/strictjson"
	"github.com/fleetbox/fleetbox/kms/api"
)

// Profiles. dev allows mock quotes (announced on the console) and has a
// root shell on the serial console; prod refuses mock and has no login.
const (
	ProfileDev  = "dev"
	ProfileProd = "prod"
)

// MaxConfigSize bounds fleetbox.conf and every operational settings source.
const MaxConfigSize = 64 << 10

// ImageConfig is /etc/fleetbox/fleetbox.conf: JSON, camelCase, decoded
// strictly. It is a file of the image, so RTMR2 covers it (the stub
// measures the initrd that holds the whole OS), and the appliance extends
// its SHA-256 into RTMR3 as the fleetbox.config-sha256 event, so a policy
// can pin the configuration by itself.
type ImageConfig struct {
	// Profile is "dev" or "prod".
	Profile string `json:"profile"`
	// AllowMock lets the appliance fall back to MOCK quotes where there is
	// no TDX. Only the dev profile may set it.
	AllowMock bool `json:"allowMock,omitempty"`
	// Mock is what a mock quote carries besides the replayed RTMR3 (dev).
	Mock *MockConfig `json:"mock,omitempty"`
	// KMS: where the key comes from and how the KMS is known.
	KMS KMSConfig `json:"kms"`
	// DataDevice is the block device of the encrypted data volume.
	DataDevice string `json:"dataDevice"`
	// Node: the node's listen addresses and default operational settings.
	Node NodeConfig `json:"node"`
}

// MockConfig says what a dev mock quote carries besides RTMR3, which is
// always replayed from the events the appliance extended. Either Replay, or
// the four fixed registers (hex).
type MockConfig struct {
	// Replay: the registers a real TD booting this image would show, as far
	// as a non-TDX VM can tell them: MRTD from the fw_cfg entry
	// opt/fleetbox/mock-mrtd (image/qemu.sh computes it from the firmware
	// it gives QEMU), RTMR0-2 replayed from the firmware's own event log of
	// this boot (a vTPM's, with its separators as TDX firmware logs them;
	// eventlog.TDXFromTPM).
	Replay bool   `json:"replay,omitempty"`
	MRTD   string `json:"mrtd,omitempty"`
	RTMR0  string `json:"rtmr0,omitempty"`
	RTMR1  string `json:"rtmr1,omitempty"`
	RTMR2  string `json:"rtmr2,omitempty"`
}

// KMSConfig is the KMS part of ImageConfig. Policy and PublicKey are its
// trust anchor: at least one is required.
type KMSConfig struct {
	// URL is the default KMS URL (an operational setting: unmeasured
	// sources may override it).
	URL string `json:"url,omitempty"`
	// Policy is the TeeAdmissionPolicy the KMS's own quote (/attest) must
	// satisfy before the appliance shows it a quote of its own.
	Policy json.RawMessage `json:"policy,omitempty"`
	// PublicKey pins the KMS's Ed25519 signing key (base64, 32 bytes):
	// every /get-key answer must carry its signature.
	PublicKey string `json:"publicKey,omitempty"`
	// PCCSURL, if set, is where the collateral for the KMS's quote comes
	// from (Intel PCS or a PCCS); without it a real KMS quote verifies as
	// TCB Unverified, which only a policy that allows it accepts.
	PCCSURL string `json:"pccsUrl,omitempty"`
	// WaitSeconds bounds how long the boot waits for a KMS that does not
	// answer (refusals stop it at once). Zero: 600.
	WaitSeconds int `json:"waitSeconds,omitempty"`
}

// NodeConfig is the node part of ImageConfig.
type NodeConfig struct {
	// ListenAddrs are the node's libp2p multiaddrs.
	ListenAddrs []string `json:"listenAddrs"`
	// Bootstrap and FleetJoin are defaults of operational settings.
	Bootstrap []string `json:"bootstrap,omitempty"`
	FleetJoin []string `json:"fleetJoin,omitempty"`
}

// ParseImageConfig decodes fleetbox.conf strictly and checks it.
func ParseImageConfig(data []byte) (*ImageConfig, error) {
	var c ImageConfig
	if err := decodeStrict(data, &c); err != nil {
		return nil, fmt.Errorf("fleetbox.conf: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(c.KMS.Policy), []byte("null")) {
		c.KMS.Policy = nil
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("fleetbox.conf: %w", err)
	}
	return &c, nil
}

func (c *ImageConfig) check() error {
	switch c.Profile {
	case ProfileDev:
	case ProfileProd:
		if c.AllowMock {
			return errors.New("allowMock is set in the prod profile; only dev may use mock quotes")
		}
	default:
		return fmt.Errorf("profile %q: want %q or %q", c.Profile, ProfileDev, ProfileProd)
	}
	if c.AllowMock && c.Mock == nil {
		return errors.New("allowMock needs mock (the registers a mock quote carries)")
	}
	if c.Mock != nil {
		if c.Mock.Replay {
			if c.Mock.MRTD != "" || c.Mock.RTMR0 != "" || c.Mock.RTMR1 != "" || c.Mock.RTMR2 != "" {
				return errors.New("mock: replay and fixed registers are exclusive")
			}
		} else if _, err := c.Mock.quote(); err != nil {
			return err
		}
	}
	if len(c.KMS.Policy) == 0 && c.KMS.PublicKey == "" {
		return errors.New("kms needs a trust anchor: policy (checked against the KMS's own quote) or publicKey (its pinned signing key)")
	}
	if len(c.KMS.Policy) > 0 {
		if _, err := attest.ParsePolicy(c.KMS.Policy); err != nil {
			return fmt.Errorf("kms.policy: %w", err)
		}
	}
	if c.KMS.PublicKey != "" {
		if _, err := parsePublicKey(c.KMS.PublicKey); err != nil {
			return fmt.Errorf("kms.publicKey: %w", err)
		}
	}
	if c.KMS.WaitSeconds < 0 {
		return errors.New("kms.waitSeconds is negative")
	}
	if !filepath.IsAbs(c.DataDevice) {
		return fmt.Errorf("dataDevice %q is not an absolute path", c.DataDevice)
	}
	if len(c.Node.ListenAddrs) == 0 {
		return errors.New("node.listenAddrs is empty")
	}
	return nil
}

// quote returns the mock quote template (RTMR3 left zero).
func (m *MockConfig) quote() (attest.MockQuote, error) {
	var q attest.MockQuote
	var err error
	if q.MRTD, err = attest.ParseMRTD(m.MRTD); err != nil {
		return q, fmt.Errorf("mock.mrtd: %w", err)
	}
	for i, s := range []string{m.RTMR0, m.RTMR1, m.RTMR2} {
		if q.RTMR[i], err = attest.ParseRTMR(s); err != nil {
			return q, fmt.Errorf("mock.rtmr%d: %w", i, err)
		}
	}
	return q, nil
}

func parsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not standard base64: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%d bytes, want an Ed25519 public key of %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// decodeStrict decodes one JSON document with the project's strict decoder
// (internal/strictjson: duplicate members, members not spelled exactly,
// unknown members and trailing data refused), at most MaxConfigSize bytes.
func decodeStrict(data []byte, v any) error {
	if len(data) > MaxConfigSize {
		return fmt.Errorf("%d bytes exceeds the %d-byte limit", len(data), MaxConfigSize)
	}
	return strictjson.Unmarshal(data, v)
}

// Operational is what unmeasured channels (fw_cfg, SMBIOS credentials) may
// set: where to reach things, never what to trust.
type Operational struct {
	KMSURL    string   `json:"kmsUrl,omitempty"`
	Bootstrap []string `json:"bootstrap,omitempty"`
	FleetJoin []string `json:"fleetJoin,omitempty"`
}

// ParseOperational decodes an operational settings document strictly. A key
// that names a security setting is refused by name.
func ParseOperational(data []byte) (*Operational, error) {
	var o Operational
	if err := decodeStrict(data, &o); err != nil {
		return nil, err
	}
	return &o, nil
}

// readLimited reads a file of at most MaxConfigSize bytes.
func readLimited(path string) ([]byte, error) { return readFileMax(path, MaxConfigSize) }

func readFileMax(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%s exceeds %d bytes", path, limit)
	}
	return b, nil
}

// checkKMSURL refuses a URL that is not http(s).
func checkKMSURL(u string) error {
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return fmt.Errorf("kms url %q is not http:// or https://", u)
	}
	if len(u) > 2048 {
		return errors.New("kms url is longer than 2048 characters")
	}
	return nil
}

// instanceIDOK reports whether id can name an instance to the KMS.
func instanceIDOK(id string) error { return api.CheckInstanceID(id) }
