// Package store is the node's encrypted key-value store: one bbolt file, one
// bucket per column, every value sealed with an AEAD.
//
// Sealing: the 32-byte store key (from the KMS, a credential file or a dev
// key) is never used directly. HKDF-SHA256 (RFC 5869) derives an
// XChaCha20-Poly1305 key from it with the label "fleetbox/store/v1/aead".
// Each value is stored as version(1) || nonce(24) || ciphertext+tag(16); the
// nonce is random (XChaCha's 192-bit nonce makes random nonces safe for any
// realistic number of writes). The AAD is "fleetbox/store/v1/row" || len(column)
// || column || row key, so a sealed value moved to another row or column, or
// two values swapped, fails to open with ErrCorrupt.
//
// Row keys are NOT encrypted: they order rows for prefix scans. Never put a
// secret in a row key.
//
// Key check: the Meta column holds a sealed known value. Open with a different
// key fails with ErrWrongKey before anything is written.
//
// Transactions: Update runs a function in one read-write bbolt transaction, so
// writes that belong together commit together (two fdatasyncs per commit);
// View runs a read-only one. Values returned by Tx.Get and passed to ForEach
// callbacks are freshly allocated plaintext, never bbolt's mmap, so they stay
// valid after the transaction; callers holding secrets should Wipe them when
// done.
//
// Deleted data: bbolt keeps the bytes of deleted rows in free pages until they
// are reused. Compact rewrites the live rows into a new file and renames it
// over the old one, so deleted rows (including their cleartext row keys) leave
// the file. The fleet-replica self-purge relies on it. Blocks the old file
// occupied are freed, not overwritten: what remains on the device is sealed
// values under the store key and row keys, on a volume the appliance keeps
// encrypted.
package store

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of the store key.
const KeySize = 32

// Key is the store key. It is a secret: compare with Equal, never log it.
type Key [KeySize]byte

// Equal compares two keys in constant time.
func (k *Key) Equal(o *Key) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// Wipe zeroes the key.
func (k *Key) Wipe() { Wipe(k[:]) }

// Wipe zeroes b. Use it on secrets read from the store once they are no
// longer needed.
func Wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// Column names a bucket. The set is fixed: the reference system's columns,
// listed in Columns below.
type Column string

// The columns. Packages own key prefixes inside a column; see the package that
// writes a column for its layout.
const (
	Meta        Column = "Meta"
	Config      Column = "Config"
	Identity    Column = "Identity"
	Group       Column = "Group"
	OpLog       Column = "OpLog"
	Keys        Column = "Keys"
	State       Column = "State"
	Delta       Column = "Delta"
	Blobs       Column = "Blobs"
	Application Column = "Application"
	Alias       Column = "Alias"
	Generic     Column = "Generic"
)

// Columns lists every column in a fixed order.
var Columns = []Column{Meta, Config, Identity, Group, OpLog, Keys, State, Delta, Blobs, Application, Alias, Generic}

func (c Column) valid() bool {
	for _, k := range Columns {
		if k == c {
			return true
		}
	}
	return false
}

// Errors callers branch on.
var (
	// ErrWrongKey means the store was created with a different key. Nothing
	// was written.
	ErrWrongKey = errors.New("store: wrong store key")
	// ErrNotFound means the row does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrCorrupt means a sealed value failed to open: it was altered, moved to
	// another row or column, or truncated.
	ErrCorrupt = errors.New("store: sealed value does not authenticate")
	// ErrLocked means another process holds the file lock past Options.Timeout.
	ErrLocked = errors.New("store: database file is locked by another process")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("store: closed")
	// ErrUnknownColumn means a Column value outside Columns.
	ErrUnknownColumn = errors.New("store: unknown column")
)

const (
	sealVersion = 1
	nonceSize   = chacha20poly1305.NonceSizeX
	overhead    = 1 + nonceSize + chacha20poly1305.Overhead
	aeadLabel   = "fleetbox/store/v1/aead"
	aadLabel    = "fleetbox/store/v1/row"
	// MaxKeySize bounds row keys (bbolt's own limit is 32 KiB).
	MaxKeySize = 1024
)

// Meta rows written by this package. Other packages must not use the "store/"
// prefix in Meta.
var (
	metaKeyCheck = []byte("store/keycheck")
	metaFormat   = []byte("store/format")
	keyCheckText = []byte("fleetbox store key check v1")
)

// formatVersion is the on-disk layout version.
const formatVersion = 1

// Options configure Open. The zero value is usable.
type Options struct {
	// Timeout bounds the wait for bbolt's file lock. Zero means 5 s (bbolt's
	// own zero would wait forever).
	Timeout time.Duration
	// NoSync skips fdatasync on commit. Only for tests and benchmarks: a
	// crash can lose committed data.
	NoSync bool
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
}

// Store is an open store. Its methods are safe for concurrent use.
type Store struct {
	path   string
	opts   Options
	aead   cipher.AEAD
	logger *slog.Logger

	// mu guards db. Transactions hold it shared; Compact and Close hold it
	// exclusively while they swap or drop the file.
	mu sync.RWMutex
	db *bolt.DB
}

// Open opens or creates the store at path with key. A new file gets every
// column and a key-check record. An existing file whose key check does not
// open with key fails with ErrWrongKey and is left as it was.
func Open(path string, key *Key, opts Options) (*Store, error) {
	if key == nil {
		return nil, errors.New("store: nil key")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path, opts: opts, aead: aead, logger: logger}
	db, err := s.openDB(path)
	if err != nil {
		return nil, err
	}
	if err := s.checkOrInit(db); err != nil {
		db.Close()
		return nil, err
	}
	s.db = db
	return s, nil
}

func newAEAD(key *Key) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key[:], nil, aeadLabel, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("store: deriving the sealing key: %w", err)
	}
	defer Wipe(k)
	aead, err := chacha20poly1305.NewX(k)
	if err != nil {
		return nil, fmt.Errorf("store: sealing key: %w", err)
	}
	return aead, nil
}

func (s *Store) openDB(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: s.opts.Timeout, NoSync: s.opts.NoSync})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("opening store %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	return db, nil
}

// checkOrInit verifies the key check, or initialises an empty file. A wrong
// key is detected inside a read-only transaction, so nothing is written.
func (s *Store) checkOrInit(db *bolt.DB) error {
	var fresh bool
	err := db.View(func(btx *bolt.Tx) error {
		b := btx.Bucket([]byte(Meta))
		if b == nil {
			fresh = true
			return nil
		}
		sealed := b.Get(metaKeyCheck)
		if sealed == nil {
			return fmt.Errorf("opening store: Meta has no key check: %w", ErrCorrupt)
		}
		pt, err := s.open(Meta, metaKeyCheck, sealed)
		if err != nil || subtle.ConstantTimeCompare(pt, keyCheckText) != 1 {
			return ErrWrongKey
		}
		return nil
	})
	if err != nil || !fresh {
		return err
	}
	return db.Update(func(btx *bolt.Tx) error {
		for _, c := range Columns {
			if _, err := btx.CreateBucketIfNotExists([]byte(c)); err != nil {
				return fmt.Errorf("creating column %s: %w", c, err)
			}
		}
		b := btx.Bucket([]byte(Meta))
		if err := b.Put(metaKeyCheck, s.seal(Meta, metaKeyCheck, keyCheckText)); err != nil {
			return err
		}
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], formatVersion)
		return b.Put(metaFormat, s.seal(Meta, metaFormat, v[:]))
	})
}

// Path returns the database file path.
func (s *Store) Path() string { return s.path }

// Close closes the database file. Further calls fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// Update runs fn in one read-write transaction. If fn returns an error
// nothing it wrote is kept. fn must not keep tx after it returns.
func (s *Store) Update(fn func(tx *Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	return s.db.Update(func(btx *bolt.Tx) error { return fn(&Tx{s: s, btx: btx}) })
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(tx *Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	return s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{s: s, btx: btx}) })
}

func aad(col Column, key []byte) []byte {
	a := make([]byte, 0, len(aadLabel)+1+len(col)+len(key))
	a = append(a, aadLabel...)
	a = append(a, byte(len(col)))
	a = append(a, col...)
	return append(a, key...)
}

func (s *Store) seal(col Column, key, val []byte) []byte {
	out := make([]byte, 1+nonceSize, overhead+len(val))
	out[0] = sealVersion
	rand.Read(out[1 : 1+nonceSize])
	return s.aead.Seal(out, out[1:1+nonceSize], val, aad(col, key))
}

// open returns freshly allocated plaintext; sealed may be bbolt memory.
func (s *Store) open(col Column, key, sealed []byte) ([]byte, error) {
	if len(sealed) < overhead || sealed[0] != sealVersion {
		return nil, ErrCorrupt
	}
	pt, err := s.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], aad(col, key))
	if err != nil {
		return nil, ErrCorrupt
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// Tx is one transaction. It is valid only inside the Update or View function
// that received it, and must not be used from another goroutine.
type Tx struct {
	s   *Store
	btx *bolt.Tx
}

func (tx *Tx) bucket(col Column) (*bolt.Bucket, error) {
	if !col.valid() {
		return nil, fmt.Errorf("%w: %q", ErrUnknownColumn, string(col))
	}
	b := tx.btx.Bucket([]byte(col))
	if b == nil {
		return nil, fmt.Errorf("column %s missing: %w", col, ErrCorrupt)
	}
	return b, nil
}

// Get returns the plaintext of a row, or ErrNotFound. The slice is a fresh
// copy, valid after the transaction ends.
func (tx *Tx) Get(col Column, key []byte) ([]byte, error) {
	b, err := tx.bucket(col)
	if err != nil {
		return nil, err
	}
	sealed := b.Get(key)
	if sealed == nil {
		return nil, ErrNotFound
	}
	pt, err := tx.s.open(col, key, sealed)
	if err != nil {
		return nil, fmt.Errorf("reading %s/%x: %w", col, key, err)
	}
	return pt, nil
}

// Put seals val and writes it at key. It fails in a View transaction.
func (tx *Tx) Put(col Column, key, val []byte) error {
	if len(key) == 0 || len(key) > MaxKeySize {
		return fmt.Errorf("store: row key of %d bytes (want 1..%d)", len(key), MaxKeySize)
	}
	b, err := tx.bucket(col)
	if err != nil {
		return err
	}
	if err := b.Put(key, tx.s.seal(col, key, val)); err != nil {
		return fmt.Errorf("writing %s/%x: %w", col, key, err)
	}
	return nil
}

// Delete removes a row; a missing row is not an error.
func (tx *Tx) Delete(col Column, key []byte) error {
	b, err := tx.bucket(col)
	if err != nil {
		return err
	}
	if err := b.Delete(key); err != nil {
		return fmt.Errorf("deleting %s/%x: %w", col, key, err)
	}
	return nil
}

// ForEach calls fn, in key order, for every row whose key starts with prefix
// (every row if prefix is empty). key and val are fresh copies. An error from
// fn stops the scan and is returned. fn must not write to the same column.
func (tx *Tx) ForEach(col Column, prefix []byte, fn func(key, val []byte) error) error {
	b, err := tx.bucket(col)
	if err != nil {
		return err
	}
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		key := bytes.Clone(k)
		pt, err := tx.s.open(col, key, v)
		if err != nil {
			return fmt.Errorf("reading %s/%x: %w", col, key, err)
		}
		if err := fn(key, pt); err != nil {
			return err
		}
	}
	return nil
}

// DeletePrefix deletes every row whose key starts with prefix and returns how
// many it deleted. An empty prefix empties the column.
func (tx *Tx) DeletePrefix(col Column, prefix []byte) (int, error) {
	b, err := tx.bucket(col)
	if err != nil {
		return 0, err
	}
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, fmt.Errorf("deleting %s/%x: %w", col, k, err)
		}
	}
	return len(keys), nil
}

// compactTxBytes bounds the data copied per transaction during Compact.
const compactTxBytes = 16 << 20

// Compact rewrites the live rows into a new file beside the store, fsyncs it,
// renames it over the store file and fsyncs the directory, so the bytes of
// deleted rows are gone from the file (bbolt otherwise keeps them in free
// pages). Sealed values are copied as they are: the AAD binds column and row
// key, which do not change. Transactions wait while Compact runs. If ctx ends
// or anything fails before the rename, the old file stays in place untouched.
func (s *Store) Compact(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return ErrClosed
	}
	tmp := s.path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("compacting store: removing stale %s: %w", tmp, err)
	}
	if err := s.copyLive(ctx, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compacting store: %w", err)
	}
	if err := s.db.Close(); err != nil {
		os.Remove(tmp)
		s.db = nil
		return fmt.Errorf("compacting store: closing the old file: %w", err)
	}
	s.db = nil
	renameErr := os.Rename(tmp, s.path)
	if renameErr == nil {
		renameErr = syncDir(filepath.Dir(s.path))
	}
	db, err := s.openDB(s.path)
	if err != nil {
		return fmt.Errorf("compacting store: reopening: %w", errors.Join(renameErr, err))
	}
	s.db = db
	if renameErr != nil {
		os.Remove(tmp)
		return fmt.Errorf("compacting store: replacing the file: %w", renameErr)
	}
	s.logger.Info("store compacted", "path", s.path)
	return nil
}

func (s *Store) copyLive(ctx context.Context, tmp string) error {
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: s.opts.Timeout})
	if err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	defer dst.Close()
	err = s.db.View(func(src *bolt.Tx) error {
		for _, col := range Columns {
			sb := src.Bucket([]byte(col))
			if sb == nil {
				continue
			}
			c := sb.Cursor()
			k, v := c.First()
			for {
				var size int
				err := dst.Update(func(dtx *bolt.Tx) error {
					db, err := dtx.CreateBucketIfNotExists([]byte(col))
					if err != nil {
						return err
					}
					db.FillPercent = 1.0 // keys arrive in order
					for ; k != nil && size < compactTxBytes; k, v = c.Next() {
						if v == nil {
							continue // nested bucket: none are created here
						}
						if err := db.Put(bytes.Clone(k), bytes.Clone(v)); err != nil {
							return err
						}
						size += len(k) + len(v)
					}
					return nil
				})
				if err != nil {
					return err
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				if k == nil {
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Commits fdatasync the data; sync once more so the file is complete on
	// disk before it replaces the old one.
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
