package kms_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/kms/audit"
)

// An older kms.db put back under a KMS: with a witness on another volume
// the KMS refuses to start, and a node's receipt proves the lost grant to
// anyone with the KMS's public key.
func TestRestoredStateIsCaught(t *testing.T) {
	state := t.TempDir()
	witness := filepath.Join(t.TempDir(), "audit-witness.json")
	h := newHarness(t, harnessOpts{stateDir: state, witness: witness})
	n := newNode(t, h, 1, goodMRTD)
	c := newClient(t, h, n, true)
	if _, err := c.GetKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.stop()
	db := filepath.Join(state, kms.StateDBFile)
	old, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}

	h = newHarness(t, harnessOpts{stateDir: state, witness: witness})
	key, err := newClient(t, h, n, true).GetKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	receipt, _ := json.Marshal(key.Receipt)
	if key.Receipt.AuditSeq != 2 {
		t.Fatalf("receipt %+v", key.Receipt)
	}
	pub := h.srv.PublicKey()
	h.stop()
	if err := os.WriteFile(db, old, 0o600); err != nil {
		t.Fatal(err)
	}

	// The KMS refuses to serve below its witness.
	ca, _, coll := testCA(t)
	_, err = kms.NewServer(kms.Config{
		StateDir: state, RootSecret: h.secret, AuditWitness: witness,
		Verifier: attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch)),
	})
	if !errors.Is(err, audit.ErrRollback) {
		t.Fatalf("NewServer on a restored kms.db: %v, want ErrRollback", err)
	}
	// The receipt proves it without the witness.
	r, err := api.ParseReceipt(receipt, pub)
	if err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	v := &audit.ChainVerifier{}
	v.Expect(r.AuditSeq, "receipt", func(audit.Hash, audit.Record) error { return nil })
	if _, err := v.VerifyPages(func(after uint64) (*audit.Page, error) { return audit.ReadPage(bdb, after, 10) }, pub); !errors.Is(err, audit.ErrRollback) {
		t.Fatalf("verify with the receipt: %v, want ErrRollback", err)
	}
	// A receipt whose fields were changed does not verify.
	r.AuditSeq = 1
	forged, _ := json.Marshal(r)
	if _, err := api.ParseReceipt(forged, pub); err == nil {
		t.Fatal("a changed receipt verified")
	}
}
