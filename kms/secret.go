package kms

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/fleetbox/fleetbox/kms/api"
)

// RootSecretSize is the size of a root secret the file provider creates.
const RootSecretSize = 32

// ErrSecretPermissions means a secret file can be read by group or others.
var ErrSecretPermissions = errors.New("secret file is readable by group or others; chmod 0600 it")

// RootSecret is the KMS's root secret: every storage key is derived from it.
// Its value never leaves this package: it prints as "RootSecret(redacted)"
// under every fmt verb and in slog.
type RootSecret struct {
	b []byte
}

// NewRootSecret wraps key material (at least 32 bytes) as a root secret. It
// keeps its own copy.
func NewRootSecret(b []byte) (*RootSecret, error) {
	if len(b) < RootSecretSize {
		return nil, fmt.Errorf("root secret is %d bytes, want at least %d", len(b), RootSecretSize)
	}
	return &RootSecret{b: append([]byte(nil), b...)}, nil
}

// Format implements fmt.Formatter: the value is never printed.
func (RootSecret) Format(f fmt.State, _ rune) { io.WriteString(f, "RootSecret(redacted)") }

// LogValue implements slog.LogValuer.
func (RootSecret) LogValue() slog.Value { return slog.StringValue("RootSecret(redacted)") }

// Equal compares two root secrets in constant time.
func (r *RootSecret) Equal(o *RootSecret) bool {
	return subtle.ConstantTimeCompare(r.b, o.b) == 1
}

// StorageKey is a derived storage key. Like RootSecret it never prints.
type StorageKey [api.KeySize]byte

// Format implements fmt.Formatter.
func (StorageKey) Format(f fmt.State, _ rune) { io.WriteString(f, "StorageKey(redacted)") }

// MarshalText keeps the key out of JSON and other text encodings.
func (StorageKey) MarshalText() ([]byte, error) { return []byte("StorageKey(redacted)"), nil }

// LogValue implements slog.LogValuer.
func (StorageKey) LogValue() slog.Value { return slog.StringValue("StorageKey(redacted)") }

// KeyInfo is the HKDF info for a storage key: per peer, or per instance when
// instanceID is set. A base58 peer ID never contains '/', so the two forms
// cannot collide.
func KeyInfo(profile, peerID, instanceID string) string {
	if instanceID != "" {
		return "fleetbox/storage/" + profile + "/instance/" + instanceID
	}
	return "fleetbox/storage/" + profile + "/" + peerID
}

// DeriveKey derives a storage key: HKDF-SHA256(root secret, salt = none,
// info = KeyInfo(profile, peerID, instanceID)), 32 bytes (RFC 5869).
func (r *RootSecret) DeriveKey(profile, peerID, instanceID string) (*StorageKey, error) {
	b, err := hkdf.Key(sha256.New, r.b, nil, KeyInfo(profile, peerID, instanceID), api.KeySize)
	if err != nil {
		return nil, fmt.Errorf("deriving storage key: %w", err)
	}
	k := new(StorageKey)
	copy(k[:], b)
	clear(b)
	return k, nil
}

// ErrBadSealKey means sealTo is not a usable X25519 public key.
var ErrBadSealKey = errors.New("sealTo is not a usable X25519 public key")

// Seal encrypts the key to an X25519 public key with HPKE (RFC 9180,
// api.SealSuite, base mode, info = api.SealInfo(profile, peerID)). The result
// is enc || ciphertext, 32 + 32 + 16 bytes.
func (k *StorageKey) Seal(sealTo []byte, profile, peerID string) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(sealTo)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSealKey, err)
	}
	hp, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSealKey, err)
	}
	ct, err := hpke.Seal(hp, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), api.SealInfo(profile, peerID), k[:])
	if err != nil {
		// A low-order point gives an all-zero shared secret, which X25519 refuses.
		return nil, fmt.Errorf("%w: %v", ErrBadSealKey, err)
	}
	return ct, nil
}

// LoadFileRootSecret reads the root secret from path, creating 32 random
// bytes there (mode 0600) on first use. It refuses a file that group or
// others can read, and one of another size.
func LoadFileRootSecret(path string) (*RootSecret, error) {
	if err := createSecretFile(path, func() ([]byte, error) {
		b := make([]byte, RootSecretSize)
		_, err := rand.Read(b)
		return b, err
	}); err != nil {
		return nil, fmt.Errorf("creating root secret: %w", err)
	}
	b, err := readSecretFile(path, RootSecretSize)
	if err != nil {
		return nil, fmt.Errorf("reading root secret: %w", err)
	}
	if len(b) != RootSecretSize {
		clear(b)
		return nil, fmt.Errorf("reading root secret: %s is %d bytes, want %d", path, len(b), RootSecretSize)
	}
	defer clear(b)
	return NewRootSecret(b)
}

// createSecretFile writes gen()'s bytes to path with mode 0600 if path does
// not exist, durably (file and directory fsynced).
func createSecretFile(path string, gen func() ([]byte, error)) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	b, err := gen()
	if err != nil {
		return err
	}
	defer clear(b)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	// Link rather than rename: if another process created path meanwhile,
	// keep theirs.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		os.Remove(tmp)
		return err
	}
	os.Remove(tmp)
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readSecretFile reads a regular file of at most limit bytes that only its
// owner can read.
func readSecretFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s (mode %#o): %w", path, st.Mode().Perm(), ErrSecretPermissions)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		clear(b)
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// LoadSigningKey reads the KMS's Ed25519 signing key (PEM PKCS#8) from path,
// creating one (mode 0600) on first use. The key signs the audit head and is
// bound into the KMS's own quote by /attest.
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	err := createSecretFile(path, func() ([]byte, error) {
		_, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(sk)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	})
	if err != nil {
		return nil, fmt.Errorf("creating signing key: %w", err)
	}
	b, err := readSecretFile(path, 4<<10)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	defer clear(b)
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("reading signing key: %s is not a PEM PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading signing key %s: %w", path, err)
	}
	sk, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("reading signing key: %s holds a %T, want Ed25519", path, k)
	}
	return sk, nil
}
