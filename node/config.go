package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetbox/fleetbox/internal/atomicfile"
	"github.com/fleetbox/fleetbox/internal/strictjson"
	"github.com/fleetbox/fleetbox/node/governance"
)

// Files in a node's home directory.
const (
	ConfigFile     = "config.json"
	IdentityFile   = "node.key"      // PKCS#8 PEM Ed25519 key, 0600
	AdminTokenFile = "admin.token"   // bearer token of the admin API, 0600
	DevKeyFile     = "dev-store.key" // only with InsecureDevKey, 0600
	StoreFile      = "store.db"
	// AdminAddrFile holds the admin API address the running node bound,
	// which differs from the configured one when that has port 0. ctl
	// reads it first; the node removes it on shutdown.
	AdminAddrFile = "admin.addr"
	// CredentialStoreKey is the systemd credential that carries the store
	// key: $CREDENTIALS_DIRECTORY/store-key (systemd.exec(5), LoadCredential=).
	CredentialStoreKey = "store-key"
)

// DefaultAdminAddr is the admin API's loopback address.
const DefaultAdminAddr = "127.0.0.1:7457"

// FileConfig is the config file, JSON with camelCase keys. Flags of
// `fleetbox node run` override it.
type FileConfig struct {
	// ListenAddrs are libp2p multiaddrs (TCP and QUIC).
	ListenAddrs []string `json:"listenAddrs"`
	// Bootstrap are peers to dial: multiaddrs ending in /p2p/<peer id>.
	Bootstrap []string `json:"bootstrap,omitempty"`
	// AdminAddr is host:port of the admin API; it must be a loopback address.
	AdminAddr string `json:"adminAddr"`
	// HeartbeatInterval is how often DAG heads are gossiped, e.g. "30s".
	HeartbeatInterval Duration `json:"heartbeatInterval"`
	// StoreKeyFile, if set, holds the store key (32 raw bytes or 64 hex).
	StoreKeyFile string `json:"storeKeyFile,omitempty"`
	// FleetJoin lists namespaces (hex ids) to fleet-join at start.
	FleetJoin []string `json:"fleetJoin,omitempty"`
}

// Duration is a time.Duration written as text ("30s") in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// DefaultFileConfig is what `fleetbox node init` writes.
func DefaultFileConfig() FileConfig {
	return FileConfig{
		ListenAddrs:       []string{"/ip4/0.0.0.0/tcp/4501", "/ip4/0.0.0.0/udp/4501/quic-v1"},
		AdminAddr:         DefaultAdminAddr,
		HeartbeatInterval: Duration(30 * time.Second),
	}
}

// LoadFileConfig reads home/config.json strictly (unknown, duplicate and
// miscased keys refused).
func LoadFileConfig(home string) (FileConfig, error) {
	path := filepath.Join(home, ConfigFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return FileConfig{}, fmt.Errorf("reading config: %w", err)
	}
	var c FileConfig
	if err := strictjson.Unmarshal(b, &c); err != nil {
		return FileConfig{}, fmt.Errorf("parsing %s: %w", path, err)
	}
	return c, nil
}

// SaveFileConfig replaces home/config.json (mode 0600) atomically: the
// appliance rewrites the operational settings of each boot into it.
func SaveFileConfig(home string, fc FileConfig) error {
	b, err := json.MarshalIndent(fc, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(home, ConfigFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	return nil
}

// Config configures a Node.
type Config struct {
	// Home is the node's directory (identity, token, config, store).
	Home string
	FileConfig
	// StoreKey, if set, is used instead of any file or credential: a key the
	// caller fetched (from the KMS, with kms/client.Fetch) or a test key.
	StoreKey *[32]byte
	// StoreKeySource says where StoreKey came from ("kms http://…"), for
	// the logs and the status route; never the key.
	StoreKeySource string
	// InsecureDevKey allows a locally generated store key when no key file or
	// credential is given. Never in production: the key sits beside the data.
	InsecureDevKey bool
	// NoSync skips fdatasync in the store (tests and benchmarks only).
	NoSync bool
	// Pending bounds each namespace's queue of ops waiting for parents;
	// zero fields mean governance's defaults.
	Pending governance.PendingLimits
	// Fleet configures fleet-join and the checking of other replicas.
	Fleet FleetConfig
	// Version is reported by the status route.
	Version string
	Logger  *slog.Logger
}

// ErrNotInitialized means the home directory has no identity yet.
var ErrNotInitialized = errors.New("node home is not initialized (run `fleetbox node init --home DIR`)")

// CheckAdminAddr refuses an admin API address that is not loopback: the
// API holds the node's keys' power behind one bearer token.
func CheckAdminAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("node: admin address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("node: admin address %q is not a loopback address", addr)
	}
	return nil
}

func (c *Config) check() error {
	if c.Home == "" {
		return errors.New("node: config needs a home directory")
	}
	if c.AdminAddr == "" {
		c.AdminAddr = DefaultAdminAddr
	}
	if err := CheckAdminAddr(c.AdminAddr); err != nil {
		return err
	}
	if c.HeartbeatInterval < 0 {
		return errors.New("node: negative heartbeat interval")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
