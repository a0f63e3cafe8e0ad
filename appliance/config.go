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
	"sort"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
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

// decodeStrict decodes exactly one JSON object: bounded, unknown fields,
// duplicate keys, keys in another letter case and trailing data refused.
func decodeStrict(data []byte, v any) error {
	if len(data) > MaxConfigSize {
		return fmt.Errorf("%d bytes exceeds the %d-byte limit", len(data), MaxConfigSize)
	}
	if err := checkKeys(data, v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// checkKeys walks the JSON object tree and refuses a key that occurs twice in
// one object or whose spelling differs from every field name the target
// type declares (encoding/json matches case-insensitively and lets the last
// duplicate win, so `"allowMock": false, "allowmock": true` would mean
// something other than what a reader sees). Raw-message fields (the KMS
// policy) are checked by their own strict decoder.
func checkKeys(data []byte, v any) error {
	var tree any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	// A first pass with a token reader finds duplicates, which decoding into
	// map[string]any would hide.
	if err := scanDuplicates(json.NewDecoder(bytes.NewReader(data)), ""); err != nil {
		return err
	}
	if err := dec.Decode(&tree); err != nil {
		return err
	}
	return matchSpelling(tree, fieldNames(v), "")
}

func scanDuplicates(dec *json.Decoder, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			k := kt.(string)
			if seen[k] {
				return fmt.Errorf("key %q appears twice in %s", k, orRoot(path))
			}
			seen[k] = true
			if err := scanDuplicates(dec, path+"."+k); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if err := scanDuplicates(dec, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	}
	return nil
}

func orRoot(path string) string {
	if path == "" {
		return "the top-level object"
	}
	return strings.TrimPrefix(path, ".")
}

// schema maps a JSON key to the schema of its value; nil means "not
// checked further" (scalars, raw messages, lists of scalars).
type schema map[string]schema

// fieldNames returns the key schema of the config types. It is written
// out rather than reflected so that it reads as the documented format.
func fieldNames(v any) schema {
	switch v.(type) {
	case *ImageConfig:
		return schema{
			"profile": nil, "allowMock": nil, "dataDevice": nil,
			"mock": {"replay": nil, "mrtd": nil, "rtmr0": nil, "rtmr1": nil, "rtmr2": nil},
			"kms":  {"url": nil, "policy": nil, "publicKey": nil, "pccsUrl": nil, "waitSeconds": nil},
			"node": {"listenAddrs": nil, "bootstrap": nil, "fleetJoin": nil},
		}
	case *Operational:
		return schema{"kmsUrl": nil, "bootstrap": nil, "fleetJoin": nil}
	}
	return nil
}

func matchSpelling(tree any, s schema, path string) error {
	obj, ok := tree.(map[string]any)
	if !ok || s == nil {
		return nil
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sub, known := s[k]
		if !known {
			for want := range s {
				if strings.EqualFold(want, k) {
					return fmt.Errorf("key %q in %s is spelled %q in the format", k, orRoot(path), want)
				}
			}
			return fmt.Errorf("unknown key %q in %s", k, orRoot(path))
		}
		if err := matchSpelling(obj[k], sub, path+"."+k); err != nil {
			return err
		}
	}
	return nil
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
