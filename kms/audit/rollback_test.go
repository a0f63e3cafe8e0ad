package audit_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetbox/fleetbox/kms/audit"
)

func appendN(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	for range n {
		if _, err := l.Append(context.Background(), audit.Event{Decision: audit.Granted, PeerID: "p"}); err != nil {
			t.Fatal(err)
		}
	}
}

// editRecord rewrites record seq with another decision (a valid record,
// a broken chain).
func editRecord(t *testing.T, db *bolt.DB, seq uint64) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("records"))
		k := binary.BigEndian.AppendUint64(nil, seq)
		var r audit.Record
		if err := json.Unmarshal(b.Get(k), &r); err != nil {
			return err
		}
		r.Decision = audit.Denied
		js, _ := json.Marshal(r)
		return b.Put(k, js)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Start-up verifies the records written since the last start-up (from its
// checkpoint), including the checkpoint record itself.
func TestStartupVerifiesSinceCheckpoint(t *testing.T) {
	for name, seq := range map[string]uint64{"record after the checkpoint": 5, "the checkpoint record": 3, "last record": 6} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t, filepath.Join(t.TempDir(), "a.db"))
			defer db.Close()
			l, stop := running(t, db, audit.Config{})
			appendN(t, l, 3)
			stop()
			l, stop = running(t, db, audit.Config{}) // checkpoint at 3
			appendN(t, l, 3)
			stop()
			editRecord(t, db, seq)
			if _, err := audit.Open(audit.Config{DB: db, Signer: signer}); !errors.Is(err, audit.ErrChain) {
				t.Fatalf("open after record %d changed: %v, want ErrChain", seq, err)
			}
		})
	}
}

// copyFile copies a closed bbolt file (an operator's backup).
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// flipCurrentMeta damages the meta page of the newest transaction: bbolt
// then opens the previous one, silently, one commit back.
func flipCurrentMeta(t *testing.T, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := int(binary.LittleEndian.Uint32(raw[16+8:])) // meta.pageSize
	const txidOff = 16 + 4 + 4 + 4 + 4 + 16 + 8 + 8   // page header, magic, version, pageSize, flags, root, freelist, pgid
	tx0 := binary.LittleEndian.Uint64(raw[txidOff:])
	tx1 := binary.LittleEndian.Uint64(raw[ps+txidOff:])
	off := 0
	if tx1 > tx0 {
		off = ps
	}
	raw[off+16+12] ^= 0xff // a byte of meta.flags: the checksum no longer holds
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A log that lost its last records looks valid from inside; the witness on
// another volume, and any signed head a client kept, prove the loss.
func TestWitnessCatchesRollback(t *testing.T) {
	pub := signer.Public().(ed25519.PublicKey)
	for name, rollback := range map[string]func(t *testing.T, path, backup string){
		"older kms.db restored": func(t *testing.T, path, backup string) { copyFile(t, backup, path) },
		"current meta page flipped": func(t *testing.T, path, _ string) {
			flipCurrentMeta(t, path)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path, backup := filepath.Join(dir, "kms.db"), filepath.Join(dir, "backup.db")
			witness := filepath.Join(t.TempDir(), "witness.json") // another "volume"
			db := openDB(t, path)
			l, stop := running(t, db, audit.Config{Witness: witness})
			appendN(t, l, 3)
			stop()
			db.Close()
			copyFile(t, path, backup)
			db = openDB(t, path)
			l, stop = running(t, db, audit.Config{Witness: witness})
			appendN(t, l, 1)
			stop()
			head := l.Head()
			db.Close()

			rollback(t, path, backup)
			db = openDB(t, path)
			defer db.Close()
			// Inside, the shorter log is consistent: without the witness it
			// opens, and its own head verifies.
			if _, err := audit.Open(audit.Config{DB: db, Signer: signer}); err != nil {
				t.Fatalf("the rolled-back log does not even open: %v", err)
			}
			if _, err := audit.Open(audit.Config{DB: db, Signer: signer, Witness: witness}); !errors.Is(err, audit.ErrRollback) {
				t.Fatalf("open with the witness: %v, want ErrRollback", err)
			}
			// A client that kept a signed head proves it too.
			h, err := audit.VerifyHead(head, pub)
			if err != nil {
				t.Fatal(err)
			}
			v := &audit.ChainVerifier{}
			v.ExpectHead(h, "a saved head")
			if _, err := v.VerifyPages(func(after uint64) (*audit.Page, error) { return audit.ReadPage(db, after, 2) }, pub); !errors.Is(err, audit.ErrRollback) {
				t.Fatalf("verify with the saved head: %v, want ErrRollback", err)
			}
		})
	}
}

// An intact log passes with its witness and every head it signed.
func TestWitnessAndHeadsOfAnIntactLog(t *testing.T) {
	pub := signer.Public().(ed25519.PublicKey)
	db := openDB(t, filepath.Join(t.TempDir(), "a.db"))
	defer db.Close()
	witness := filepath.Join(t.TempDir(), "w.json")
	l, stop := running(t, db, audit.Config{Witness: witness})
	var heads []audit.SignedHead
	for range 4 {
		appendN(t, l, 1)
		heads = append(heads, l.Head())
	}
	stop()
	w, err := audit.ReadWitness(witness, pub)
	if err != nil || w.Seq != 4 {
		t.Fatalf("witness: %+v %v", w, err)
	}
	if _, err := audit.Open(audit.Config{DB: db, Signer: signer, Witness: witness}); err != nil {
		t.Fatal(err)
	}
	v := &audit.ChainVerifier{}
	for _, sh := range heads {
		h, _ := audit.VerifyHead(sh, pub)
		v.ExpectHead(h, "head")
	}
	if _, err := v.VerifyPages(func(after uint64) (*audit.Page, error) { return audit.ReadPage(db, after, 3) }, pub); err != nil {
		t.Fatal(err)
	}
}
