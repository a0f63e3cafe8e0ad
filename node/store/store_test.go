package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func testKey(b byte) *Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return &k
}

func openTest(t *testing.T, path string, key *Key) *Store {
	t.Helper()
	s, err := Open(path, key, Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustPut(t *testing.T, s *Store, col Column, key, val string) {
	t.Helper()
	if err := s.Update(func(tx *Tx) error { return tx.Put(col, []byte(key), []byte(val)) }); err != nil {
		t.Fatalf("Put %s/%s: %v", col, key, err)
	}
}

func get(s *Store, col Column, key string) ([]byte, error) {
	var out []byte
	err := s.View(func(tx *Tx) error {
		v, err := tx.Get(col, []byte(key))
		out = v
		return err
	})
	return out, err
}

// rawSwap rewrites bbolt rows directly, as an attacker with the file would.
func rawEdit(t *testing.T, path string, fn func(btx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTripAndPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	s := openTest(t, path, testKey(1))
	mustPut(t, s, Config, "a", "alpha")
	mustPut(t, s, Keys, "a", "")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, testKey(1))
	v, err := get(s, Config, "a")
	if err != nil || string(v) != "alpha" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	v, err = get(s, Keys, "a")
	if err != nil || v == nil || len(v) != 0 {
		t.Fatalf("empty value: %q, %v", v, err)
	}
	if _, err := get(s, Config, "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing row: %v", err)
	}
	if _, err := get(s, Column("Nope"), "a"); !errors.Is(err, ErrUnknownColumn) {
		t.Fatalf("unknown column: %v", err)
	}
}

func TestWrongKeyChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	s := openTest(t, path, testKey(1))
	mustPut(t, s, Config, "a", "alpha")
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, testKey(2), Options{Timeout: time.Second}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open with the wrong key: %v, want ErrWrongKey", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("opening with the wrong key changed the file")
	}
	s = openTest(t, path, testKey(1))
	if v, err := get(s, Config, "a"); err != nil || string(v) != "alpha" {
		t.Fatalf("after wrong-key attempt: %q, %v", v, err)
	}
}

func TestLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	openTest(t, path, testKey(1))
	if _, err := Open(path, testKey(1), Options{Timeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

func TestTamperedRowsRefused(t *testing.T) {
	tests := map[string]func(btx *bolt.Tx) error{
		"swapped rows": func(btx *bolt.Tx) error {
			b := btx.Bucket([]byte(Config))
			a, c := bytes.Clone(b.Get([]byte("a"))), bytes.Clone(b.Get([]byte("b")))
			if err := b.Put([]byte("a"), c); err != nil {
				return err
			}
			return b.Put([]byte("b"), a)
		},
		"moved to another column": func(btx *bolt.Tx) error {
			v := bytes.Clone(btx.Bucket([]byte(Config)).Get([]byte("b")))
			return btx.Bucket([]byte(Generic)).Put([]byte("a"), v)
		},
		"flipped ciphertext bit": func(btx *bolt.Tx) error {
			v := bytes.Clone(btx.Bucket([]byte(Config)).Get([]byte("a")))
			v[len(v)-1] ^= 1
			return btx.Bucket([]byte(Config)).Put([]byte("a"), v)
		},
		"truncated": func(btx *bolt.Tx) error {
			return btx.Bucket([]byte(Config)).Put([]byte("a"), []byte{sealVersion, 1, 2})
		},
		"unknown version": func(btx *bolt.Tx) error {
			v := bytes.Clone(btx.Bucket([]byte(Config)).Get([]byte("a")))
			v[0] = 9
			return btx.Bucket([]byte(Config)).Put([]byte("a"), v)
		},
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "node.db")
			s := openTest(t, path, testKey(1))
			mustPut(t, s, Config, "a", "alpha")
			mustPut(t, s, Config, "b", "bravo")
			mustPut(t, s, Generic, "a", "generic")
			s.Close()
			rawEdit(t, path, edit)
			s = openTest(t, path, testKey(1))
			col := Config
			if name == "moved to another column" {
				col = Generic
			}
			if _, err := get(s, col, "a"); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Get of tampered row: %v, want ErrCorrupt", err)
			}
			err := s.View(func(tx *Tx) error {
				return tx.ForEach(col, nil, func(k, v []byte) error { return nil })
			})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("ForEach over tampered row: %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestTransactionAtomicity(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "node.db"), testKey(1))
	boom := errors.New("boom")
	err := s.Update(func(tx *Tx) error {
		if err := tx.Put(OpLog, []byte("x"), []byte("1")); err != nil {
			return err
		}
		if err := tx.Put(Keys, []byte("x"), []byte("2")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if _, err := get(s, OpLog, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("write of a failed transaction survived: %v", err)
	}
}

func TestPrefixOps(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "node.db"), testKey(1))
	for _, k := range []string{"ns1/a", "ns1/b", "ns2/a", "ns10"} {
		mustPut(t, s, OpLog, k, "v-"+k)
	}
	var got []string
	err := s.View(func(tx *Tx) error {
		return tx.ForEach(OpLog, []byte("ns1/"), func(k, v []byte) error {
			got = append(got, string(k)+"="+string(v))
			return nil
		})
	})
	if err != nil || len(got) != 2 || got[0] != "ns1/a=v-ns1/a" || got[1] != "ns1/b=v-ns1/b" {
		t.Fatalf("ForEach = %v, %v", got, err)
	}
	var n int
	err = s.Update(func(tx *Tx) error {
		var err error
		n, err = tx.DeletePrefix(OpLog, []byte("ns1"))
		return err
	})
	if err != nil || n != 3 {
		t.Fatalf("DeletePrefix = %d, %v; want 3", n, err)
	}
	if v, err := get(s, OpLog, "ns2/a"); err != nil || string(v) != "v-ns2/a" {
		t.Fatalf("row outside the prefix: %q, %v", v, err)
	}
}

func TestValuesOutliveTransaction(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "node.db"), testKey(1))
	mustPut(t, s, Keys, "k", "secret-value")
	v, err := get(s, Keys, "k")
	if err != nil {
		t.Fatal(err)
	}
	// Churn the file so that bbolt remaps and reuses pages.
	for i := range 200 {
		mustPut(t, s, Generic, string(rune('a'+i%26))+string(rune(i)), string(bytes.Repeat([]byte{'x'}, 4000)))
	}
	if string(v) != "secret-value" {
		t.Fatalf("value changed after the transaction: %q", v)
	}
}

func TestCompactRemovesDeletedBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	s := openTest(t, path, testKey(1))
	secretKey := "group-key-row-7f3a9c"
	mustPut(t, s, Keys, secretKey, "super secret group key material")
	mustPut(t, s, Keys, "kept", "kept value")
	// The row key is cleartext; the value is sealed. Record both forms.
	var sealed []byte
	s.View(func(tx *Tx) error {
		sealed = bytes.Clone(tx.btx.Bucket([]byte(Keys)).Get([]byte(secretKey)))
		return nil
	})
	if err := s.Update(func(tx *Tx) error { return tx.Delete(Keys, []byte(secretKey)) }); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if !bytes.Contains(raw, sealed) && !bytes.Contains(raw, []byte(secretKey)) {
		t.Log("bbolt already reused the deleted page; the test still checks Compact")
	}
	if err := s.Compact(context.Background()); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	raw, _ = os.ReadFile(path)
	if bytes.Contains(raw, sealed[1+nonceSize:]) {
		t.Fatal("deleted sealed value still in the file after Compact")
	}
	if bytes.Contains(raw, []byte(secretKey)) {
		t.Fatal("deleted row key still in the file after Compact")
	}
	if v, err := get(s, Keys, "kept"); err != nil || string(v) != "kept value" {
		t.Fatalf("live row after Compact: %q, %v", v, err)
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	// The compacted file reopens with the same key.
	s.Close()
	s = openTest(t, path, testKey(1))
	if v, err := get(s, Keys, "kept"); err != nil || string(v) != "kept value" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
}

func TestCompactCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	s := openTest(t, path, testKey(1))
	mustPut(t, s, Config, "a", "alpha")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Compact(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Compact with a cancelled context: %v", err)
	}
	if v, err := get(s, Config, "a"); err != nil || string(v) != "alpha" {
		t.Fatalf("after cancelled Compact: %q, %v", v, err)
	}
}

func TestClosed(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "node.db"), testKey(1))
	s.Close()
	if err := s.View(func(*Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("View after Close: %v", err)
	}
}
