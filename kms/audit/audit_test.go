package audit_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/fleetbox/fleetbox/kms/audit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openDB(t testing.TB, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

var signer = ed25519.NewKeyFromSeed(make([]byte, 32))

// running opens a log in db and runs its writer until the test ends.
func running(t testing.TB, db *bolt.DB, cfg audit.Config) (*audit.Log, func()) {
	t.Helper()
	cfg.DB = db
	if cfg.Signer == nil {
		cfg.Signer = signer
	}
	l, err := audit.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return l, stop
}

func verifyAll(t testing.TB, db *bolt.DB, pub ed25519.PublicKey) (*audit.ChainVerifier, audit.Head, error) {
	t.Helper()
	return audit.VerifyPages(func(after uint64) (*audit.Page, error) { return audit.ReadPage(db, after, 7) }, pub)
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "a.db"))
	defer db.Close()
	var commits, records atomic.Int64
	l, _ := running(t, db, audit.Config{OnCommit: func(n int, _ time.Duration) { commits.Add(1); records.Add(int64(n)) }})
	const writers, each = 16, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[uint64]bool{}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				d := audit.Granted
				if i%3 == 0 {
					d = audit.Denied
				}
				seq, err := l.Append(context.Background(), audit.Event{Time: time.Unix(int64(w), 0).UTC(), PeerID: "p", Decision: d})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[seq] {
					t.Errorf("seq %d handed out twice", seq)
				}
				seen[seq] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != writers*each || records.Load() != writers*each {
		t.Fatalf("%d seqs, %d records committed", len(seen), records.Load())
	}
	t.Logf("%d records in %d commits", records.Load(), commits.Load())
	v, h, err := verifyAll(t, db, signer.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq != writers*each || v.Granted+v.Denied != writers*each {
		t.Fatalf("head %d, %d+%d", h.Seq, v.Granted, v.Denied)
	}
	if l.Head().Seq != h.Seq {
		t.Fatal("in-memory head differs from the stored one")
	}
}

func TestAppendAfterStop(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "a.db"))
	defer db.Close()
	l, stop := running(t, db, audit.Config{})
	stop()
	if _, err := l.Append(context.Background(), audit.Event{Decision: audit.Granted}); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("append after stop: %v", err)
	}
	// Without a writer, a cancelled context ends the wait.
	l2, err := audit.Open(audit.Config{DB: db, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := l2.Append(ctx, audit.Event{Decision: audit.Granted}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("append without a writer: %v", err)
	}
}

func TestTamperingIsDetected(t *testing.T) {
	pub := signer.Public().(ed25519.PublicKey)
	cases := map[string]func(tx *bolt.Tx) error{
		"record edited": func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("records"))
			k := binary.BigEndian.AppendUint64(nil, 2)
			var r audit.Record
			json.Unmarshal(b.Get(k), &r)
			r.Decision = audit.Granted
			r.Reason = ""
			js, _ := json.Marshal(r)
			return b.Put(k, js)
		},
		"record deleted": func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("records")).Delete(binary.BigEndian.AppendUint64(nil, 2))
		},
		"last record deleted": func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("records")).Delete(binary.BigEndian.AppendUint64(nil, 3))
		},
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a.db")
			db := openDB(t, path)
			l, stop := running(t, db, audit.Config{})
			for _, d := range []string{audit.Granted, audit.Denied, audit.Granted} {
				if _, err := l.Append(context.Background(), audit.Event{Decision: d, Reason: "x"}); err != nil {
					t.Fatal(err)
				}
			}
			stop()
			if _, _, err := verifyAll(t, db, pub); err != nil {
				t.Fatalf("untouched log: %v", err)
			}
			if err := db.Update(tamper); err != nil {
				t.Fatal(err)
			}
			_, _, verr := verifyAll(t, db, pub)
			_, oerr := audit.Open(audit.Config{DB: db, Signer: signer})
			db.Close()
			if !errors.Is(verr, audit.ErrChain) {
				t.Errorf("verify: %v", verr)
			}
			// Start-up walks the chain, so a record changed or missing in
			// the middle stops it too (it used to check the last one only).
			if !errors.Is(oerr, audit.ErrChain) {
				t.Errorf("open: %v", oerr)
			}
		})
	}
	t.Run("another signing key", func(t *testing.T) {
		db := openDB(t, filepath.Join(t.TempDir(), "a.db"))
		defer db.Close()
		if _, err := audit.Open(audit.Config{DB: db, Signer: signer}); err != nil {
			t.Fatal(err)
		}
		k2 := ed25519.NewKeyFromSeed(append([]byte{1}, make([]byte, 31)...))
		if _, err := audit.Open(audit.Config{DB: db, Signer: k2}); !errors.Is(err, audit.ErrKeyMismatch) {
			t.Fatalf("%v", err)
		}
		if _, _, err := verifyAll(t, db, k2.Public().(ed25519.PublicKey)); !errors.Is(err, audit.ErrHead) {
			t.Fatalf("head under another key: %v", err)
		}
	})
}

// FuzzChainVerifier feeds arbitrary records and heads to the verifier: it
// must never panic, and must never accept a chain that does not end at a
// head signed by the key.
func FuzzChainVerifier(f *testing.F) {
	db := openDB(f, filepath.Join(f.TempDir(), "a.db"))
	defer db.Close()
	l, err := audit.Open(audit.Config{DB: db, Signer: signer})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	l.Append(context.Background(), audit.Event{Decision: audit.Granted, PeerID: "12D3KooW", MRTD: "00"})
	l.Append(context.Background(), audit.Event{Decision: audit.Denied, Reason: "invalid_challenge"})
	cancel()
	<-done
	p, _ := audit.ReadPage(db, 0, 10)
	pageJSON, _ := json.Marshal(p)
	f.Add(pageJSON)
	f.Add([]byte(`{"entries":[{"seq":1,"record":{"seq":1,"prev":"","decision":"granted"}}],"head":{"seq":1}}`))
	pub := signer.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, data []byte) {
		var pg audit.Page
		if json.Unmarshal(data, &pg) != nil {
			return
		}
		var v audit.ChainVerifier
		if v.Add(pg.Entries) != nil {
			return
		}
		h, err := v.Finish(pg.Head, pub)
		if err != nil {
			return
		}
		// Accepted: it must be the real log's head (no forgery is possible
		// without the key), or the empty log.
		if h.Seq != 0 && h.Seq != 2 {
			t.Fatalf("accepted a chain ending at %d", h.Seq)
		}
	})
}

// A record whose keys repeat or change case says two things; encoding/json
// counted the last "decision" (a denial read as a grant).
func TestChainVerifierRefusesAmbiguousRecords(t *testing.T) {
	zero := strings.Repeat("0", 64)
	for name, rec := range map[string]string{
		"decision twice":  `{"seq":1,"prev":"` + zero + `","time":"2026-01-01T00:00:00Z","decision":"denied","decision":"granted"}`,
		"Decision":        `{"seq":1,"prev":"` + zero + `","time":"2026-01-01T00:00:00Z","Decision":"granted"}`,
		"trailing object": `{"seq":1,"prev":"` + zero + `","time":"2026-01-01T00:00:00Z","decision":"granted"}{}`,
	} {
		var v audit.ChainVerifier
		if err := v.Add([]audit.Entry{{Seq: 1, Record: []byte(rec)}}); err == nil {
			t.Errorf("%s: accepted (granted %d, denied %d)", name, v.Granted, v.Denied)
		}
	}
}

// after=MaxUint64 used to wrap to 0 and return the log from record 1.
func TestReadPageAfterLastSeq(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "a.db"))
	defer db.Close()
	l, stop := running(t, db, audit.Config{})
	for range 3 {
		if _, err := l.Append(context.Background(), audit.Event{Decision: audit.Granted}); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	for _, after := range []uint64{3, 4, math.MaxUint64 - 1, math.MaxUint64} {
		p, err := audit.ReadPage(db, after, 10)
		if err != nil || len(p.Entries) != 0 || p.More {
			t.Errorf("after=%d: %d entries, more=%v, %v; want none", after, len(p.Entries), p.More, err)
		}
	}
}

// A damaged page makes bbolt panic; the log reports ErrCorrupt instead, at
// open and when read.
func TestCorruptPageIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	db := openDB(t, path)
	l, stop := running(t, db, audit.Config{})
	for range 200 {
		if _, err := l.Append(context.Background(), audit.Event{Decision: audit.Denied, Reason: strings.Repeat("r", 100)}); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	db.Close()
	// Give every leaf and branch page after the two meta pages a page type
	// bbolt does not know (the flags field, offset 8 of the page header).
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	n := 0
	for off := 2 * ps; off+ps <= len(raw); off += ps {
		if f := binary.LittleEndian.Uint16(raw[off+8:]); f == 0x01 || f == 0x02 {
			binary.LittleEndian.PutUint16(raw[off+8:], 0x40)
			n++
		}
	}
	if n == 0 {
		t.Fatal("no leaf or branch page found")
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, path)
	defer db.Close()
	if _, err := audit.Open(audit.Config{DB: db, Signer: signer}); !errors.Is(err, audit.ErrCorrupt) {
		t.Errorf("Open: %v, want ErrCorrupt", err)
	}
	if _, err := audit.ReadPage(db, 0, 10); !errors.Is(err, audit.ErrCorrupt) {
		t.Errorf("ReadPage: %v, want ErrCorrupt", err)
	}
}
