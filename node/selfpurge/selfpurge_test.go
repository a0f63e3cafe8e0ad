package selfpurge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fleetbox/fleetbox/node/store"
)

// prefixRows lays a namespace out as rows keyed by its id in several
// columns, the way the node does, and decides from a "member" row.
type prefixRows struct {
	decision Decision
	err      error
}

func (prefixRows) Delete(tx *store.Tx, t Target) (int, error) {
	prefix := t.Namespace[:]
	if !t.Whole() {
		prefix = append(append([]byte{}, t.Namespace[:]...), t.Group[:]...)
	}
	total := 0
	for _, col := range []store.Column{store.OpLog, store.Keys, store.Identity, store.State} {
		n, err := tx.DeletePrefix(col, prefix)
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

func (r prefixRows) Decide(*store.Tx, Marker) (Decision, error) { return r.decision, r.err }

var (
	nsA    = [32]byte{0xa1}
	nsB    = [32]byte{0xb2}
	secret = []byte("GROUP-KEY-SECRET-0123456789abcdef")
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	key := store.Key{7}
	s, err := store.Open(filepath.Join(t.TempDir(), "node.db"), &key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fill writes rows for two namespaces; nsA's group key row key carries a
// recognisable marker (row keys are cleartext), its value the secret.
func fill(t *testing.T, s *store.Store) {
	t.Helper()
	err := s.Update(func(tx *store.Tx) error {
		for _, ns := range [][32]byte{nsA, nsB} {
			for i := range 200 {
				k := append(append([]byte{}, ns[:]...), byte(i), byte(i>>8))
				if err := tx.Put(store.OpLog, k, bytes.Repeat([]byte{byte(i)}, 100)); err != nil {
					return err
				}
			}
			k := append(append([]byte{}, ns[:]...), []byte(fmt.Sprintf("groupkey-%x-ROWKEY", ns[0]))...)
			if err := tx.Put(store.Keys, k, secret); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func count(t *testing.T, s *store.Store, col store.Column, prefix []byte) int {
	n := 0
	if err := s.View(func(tx *store.Tx) error {
		return tx.ForEach(col, prefix, func(_, _ []byte) error { n++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPurgeDeletesAndCompacts(t *testing.T) {
	s := openStore(t)
	fill(t, s)
	var unsubscribed [32]byte
	reg := prometheus.NewRegistry()
	p := New(Config{Store: s, Rows: prefixRows{}, Unsubscribe: func(ns [32]byte) { unsubscribed = ns }, Registerer: reg})
	if err := p.Purge(context.Background(), Target{Namespace: nsA}, [32]byte{1}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, store.OpLog, nsA[:]) + count(t, s, store.Keys, nsA[:]); n != 0 {
		t.Fatalf("%d rows of the purged namespace remain", n)
	}
	if n := count(t, s, store.OpLog, nsB[:]); n != 200 {
		t.Fatalf("other namespace lost rows: %d left", n)
	}
	if unsubscribed != nsA {
		t.Fatal("did not unsubscribe from the topic")
	}
	if m, _ := p.Pending(); len(m) != 0 {
		t.Fatalf("marker left behind: %v", m)
	}
	raw, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	// Row keys are cleartext: nsB's group-key row stays in the file, nsA's
	// must be gone from it, not just from the B+tree.
	if !bytes.Contains(raw, []byte("groupkey-b2-ROWKEY")) {
		t.Fatal("test is blind: the surviving row key is not visible in the file")
	}
	if bytes.Contains(raw, []byte("groupkey-a1-ROWKEY")) {
		t.Fatal("the purged namespace's group-key row is still in the database file")
	}
}

func TestReconcile(t *testing.T) {
	cases := map[string]struct {
		rows    prefixRows
		outcome string
		rowsA   int // nsA OpLog rows after the sweep
		markers int
		wantErr bool
	}{
		"still evicted: finish": {rows: prefixRows{decision: StillEvicted}, outcome: OutcomeCompleted, rowsA: 0},
		"re-admitted: clear":    {rows: prefixRows{decision: Readmitted}, outcome: OutcomeStaleCleared, rowsA: 200},
		"undecided: keep":       {rows: prefixRows{decision: Undecided}, outcome: OutcomeKept, rowsA: 200, markers: 1},
		"already purged: clear": {rows: prefixRows{decision: AlreadyPurged}, outcome: OutcomeStaleCleared, rowsA: 200},
		"unreadable: keep":      {rows: prefixRows{err: errors.New("state unreadable")}, outcome: OutcomeKept, rowsA: 200, markers: 1, wantErr: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s := openStore(t)
			fill(t, s)
			// A purge interrupted right after its marker was written.
			if err := s.Update(func(tx *store.Tx) error {
				return putMarker(tx, Marker{Target: Target{Namespace: nsA}, Member: [32]byte{1}})
			}); err != nil {
				t.Fatal(err)
			}
			p := New(Config{Store: s, Rows: tc.rows})
			rep, err := p.Reconcile(context.Background())
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v", err)
			}
			if got := testutil.ToFloat64(p.reconcile.WithLabelValues(tc.outcome)); got != 1 {
				t.Fatalf("outcome %s counted %v times (report %+v)", tc.outcome, got, rep)
			}
			if n := count(t, s, store.OpLog, nsA[:]); n != tc.rowsA {
				t.Fatalf("%d rows of nsA, want %d", n, tc.rowsA)
			}
			if m, _ := p.Pending(); len(m) != tc.markers {
				t.Fatalf("%d markers left, want %d", len(m), tc.markers)
			}
		})
	}
}

func TestSubgroupPurgeIsScoped(t *testing.T) {
	s := openStore(t)
	group := [32]byte{0x99}
	sub := append(append([]byte{}, nsA[:]...), group[:]...)
	if err := s.Update(func(tx *store.Tx) error {
		if err := tx.Put(store.Keys, append(sub, 'k'), secret); err != nil {
			return err
		}
		return tx.Put(store.Keys, append(append([]byte{}, nsA[:]...), 'r'), []byte("root key"))
	}); err != nil {
		t.Fatal(err)
	}
	called := false
	p := New(Config{Store: s, Rows: prefixRows{}, Unsubscribe: func([32]byte) { called = true }})
	if err := p.Purge(context.Background(), Target{Namespace: nsA, Group: group}, [32]byte{1}); err != nil {
		t.Fatal(err)
	}
	if count(t, s, store.Keys, sub) != 0 || count(t, s, store.Keys, nsA[:]) != 1 {
		t.Fatal("subgroup purge deleted the wrong rows")
	}
	if called {
		t.Fatal("a subgroup purge must not leave the namespace topic")
	}
}

// TestDeleteAloneLeavesBytes is the control for TestPurgeDeletesAndCompacts:
// without compaction, bbolt keeps the deleted row's bytes in free pages.
func TestDeleteAloneLeavesBytes(t *testing.T) {
	s := openStore(t)
	fill(t, s)
	if err := s.Update(func(tx *store.Tx) error { _, err := (prefixRows{}).Delete(tx, Target{Namespace: nsA}); return err }); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte("groupkey-a1-ROWKEY")) {
		t.Skip("bbolt reused the freed page; the control shows nothing this time")
	}
}
