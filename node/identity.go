package node

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/store"
)

// InitResult describes a home directory after Init.
type InitResult struct {
	PeerID  string
	Created []string
}

// Init creates a node home: an Ed25519 identity (also the libp2p identity),
// an admin token and a config file. Files that exist are kept, so Init is
// safe to run twice.
func Init(home string, fc FileConfig) (*InitResult, error) {
	// Refuse now what `node run` would refuse later.
	if fc.AdminAddr != "" {
		if err := CheckAdminAddr(fc.AdminAddr); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("creating home: %w", err)
	}
	res := &InitResult{}
	idPath := filepath.Join(home, IdentityFile)
	if _, err := os.Stat(idPath); errors.Is(err, fs.ErrNotExist) {
		_, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(sk)
		if err != nil {
			return nil, fmt.Errorf("encoding identity: %w", err)
		}
		if err := writeSecret(idPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			return nil, err
		}
		res.Created = append(res.Created, idPath)
	}
	if created, err := ensureAdminToken(home); err != nil {
		return nil, err
	} else if created {
		res.Created = append(res.Created, filepath.Join(home, AdminTokenFile))
	}
	cfgPath := filepath.Join(home, ConfigFile)
	if _, err := os.Stat(cfgPath); errors.Is(err, fs.ErrNotExist) {
		b, _ := json.MarshalIndent(fc, "", "  ")
		if err := os.WriteFile(cfgPath, append(b, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("writing config: %w", err)
		}
		res.Created = append(res.Created, cfgPath)
	}
	sk, err := LoadIdentity(home)
	if err != nil {
		return nil, err
	}
	id, err := peerIDOf(sk)
	if err != nil {
		return nil, err
	}
	res.PeerID = id
	return res, nil
}

// writeSecret creates path with mode 0600, refusing to overwrite.
func writeSecret(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// readSecret reads a secret file and refuses one that others can read.
func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %v; it must not be readable by group or others (chmod 600)", path, st.Mode().Perm())
	}
	return os.ReadFile(path)
}

// LoadIdentity reads the node's Ed25519 key from home.
func LoadIdentity(home string) (ed25519.PrivateKey, error) {
	path := filepath.Join(home, IdentityFile)
	b, err := readSecret(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotInitialized
	}
	if err != nil {
		return nil, fmt.Errorf("reading identity: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("identity %s: not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w", path, err)
	}
	sk, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("identity %s: not an Ed25519 key", path)
	}
	return sk, nil
}

func ensureAdminToken(home string) (bool, error) {
	path := filepath.Join(home, AdminTokenFile)
	if _, err := os.Stat(path); err == nil {
		return false, nil
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return false, err
	}
	return true, writeSecret(path, []byte(hex.EncodeToString(b[:])+"\n"))
}

// ReadAdminToken reads a bearer token file (the node's, or one given to ctl).
func ReadAdminToken(path string) (string, error) {
	b, err := readSecret(path)
	if err != nil {
		return "", fmt.Errorf("reading admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin token %s is empty", path)
	}
	return tok, nil
}

// parseStoreKey accepts 32 raw bytes or 64 hex characters (the KMS's form),
// with optional surrounding whitespace.
func parseStoreKey(b []byte) (*store.Key, error) {
	var k store.Key
	if len(b) == store.KeySize {
		copy(k[:], b)
		return &k, nil
	}
	s := strings.TrimSpace(string(b))
	if len(s) != 2*store.KeySize {
		return nil, fmt.Errorf("store key must be %d raw bytes or %d hex characters, got %d bytes", store.KeySize, 2*store.KeySize, len(b))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return nil, errors.New("store key is not valid hex")
	}
	return &k, nil
}

// storeKeySource says where the store key came from; it is logged, the key never.
type storeKeySource string

// loadStoreKey finds the store key: Config.StoreKey, then the key file, then
// the systemd credential, then (only with InsecureDevKey) a key generated
// beside the data with a loud warning.
func loadStoreKey(cfg *Config, log *slog.Logger) (*store.Key, storeKeySource, error) {
	if cfg.StoreKey != nil {
		k := store.Key(*cfg.StoreKey)
		src := storeKeySource(cfg.StoreKeySource)
		if src == "" {
			src = "config"
		}
		return &k, src, nil
	}
	if cfg.StoreKeyFile != "" {
		b, err := readSecret(cfg.StoreKeyFile)
		if err != nil {
			return nil, "", fmt.Errorf("reading store key file: %w", err)
		}
		defer store.Wipe(b)
		k, err := parseStoreKey(b)
		if err != nil {
			return nil, "", fmt.Errorf("store key file %s: %w", cfg.StoreKeyFile, err)
		}
		return k, storeKeySource("file " + cfg.StoreKeyFile), nil
	}
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		path := filepath.Join(dir, CredentialStoreKey)
		b, err := os.ReadFile(path) // systemd makes it private to the unit
		if err == nil {
			defer store.Wipe(b)
			k, err := parseStoreKey(b)
			if err != nil {
				return nil, "", fmt.Errorf("systemd credential %s: %w", path, err)
			}
			return k, "systemd credential " + CredentialStoreKey, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("reading systemd credential: %w", err)
		}
	}
	if !cfg.InsecureDevKey {
		return nil, "", errors.New("no store key: give --store-key-file, or the systemd credential " + CredentialStoreKey +
			" ($CREDENTIALS_DIRECTORY/" + CredentialStoreKey + "), or --insecure-dev-key for a local development key")
	}
	path := filepath.Join(cfg.Home, DevKeyFile)
	b, err := readSecret(path)
	if errors.Is(err, fs.ErrNotExist) {
		var k store.Key
		if _, err := rand.Read(k[:]); err != nil {
			return nil, "", err
		}
		if err := writeSecret(path, []byte(hex.EncodeToString(k[:])+"\n")); err != nil {
			return nil, "", err
		}
		b, err = readSecret(path)
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading development store key: %w", err)
	}
	defer store.Wipe(b)
	k, err := parseStoreKey(b)
	if err != nil {
		return nil, "", fmt.Errorf("development store key %s: %w", path, err)
	}
	log.Warn("INSECURE: using a development store key kept in plain text beside the data ("+path+"); "+
		"anyone who can read the home directory can read the store. Never use --insecure-dev-key in production.",
		"keyFile", path)
	return k, "insecure development key", nil
}

// PeerID is the libp2p peer id of a node identity.
func PeerID(sk ed25519.PrivateKey) (string, error) { return peerIDOf(sk) }

func peerIDOf(sk ed25519.PrivateKey) (string, error) {
	id, err := p2p.PeerIDFromKey(sk.Public().(ed25519.PublicKey))
	if err != nil {
		return "", fmt.Errorf("deriving peer id: %w", err)
	}
	return id.String(), nil
}
