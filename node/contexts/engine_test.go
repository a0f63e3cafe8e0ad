package contexts

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fleetbox/fleetbox/node/contexts/apptest"
	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/store"
)

var bg = context.Background()

// member is one node's governance and contexts, in process, without a
// network: tests carry ops between members by hand, in any order.
type member struct {
	sync bool // fdatasync on every commit, as a real node
	path string
	st   *store.Store
	gov  *governance.Engine
	ctx  *Engine
	undo int
}

func newMember(t testing.TB, undo int) *member {
	t.Helper()
	m := &member{path: filepath.Join(t.TempDir(), "store.db"), undo: undo}
	m.open(t)
	return m
}

func (m *member) open(t testing.TB) {
	t.Helper()
	st, err := store.Open(m.path, &store.Key{1}, store.Options{Timeout: time.Second, NoSync: !m.sync})
	if err != nil {
		t.Fatal(err)
	}
	gov, err := governance.New(governance.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	// A small memory and a generous time limit: the memory bomb must meet
	// the first even on a slow machine (-race).
	ce, err := New(Config{Store: st, Governance: gov, CacheDir: apptest.CacheDir(), UndoWindow: m.undo,
		Limits: wasmhost.Limits{MemoryPages: 256, CallTimeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	m.st, m.gov, m.ctx = st, gov, ce
	t.Cleanup(func() { ce.host.Close(bg); st.Close() })
}

func (m *member) restart(t testing.TB) {
	t.Helper()
	m.ctx.host.Close(bg)
	m.st.Close()
	m.open(t)
}

// deliver applies wires to m and its contexts.
func (m *member) deliver(t testing.TB, ns NamespaceID, wires ...[]byte) {
	t.Helper()
	res, err := m.gov.Apply(bg, ns, wires)
	if err != nil {
		t.Fatal(err)
	}
	if res.Refused > 0 {
		t.Fatalf("refused: %v", res.FirstRefusal)
	}
	if err := m.ctx.Sync(ns); err != nil {
		t.Fatal(err)
	}
}

// syncFrom gives m every op src has.
func (m *member) syncFrom(t testing.TB, src *member, ns NamespaceID) {
	t.Helper()
	heads, _, err := m.gov.Heads(ns)
	if err != nil {
		t.Fatal(err)
	}
	var wires [][]byte
	if err := src.gov.OpsMissing(ns, heads, func(w []byte) error { wires = append(wires, w); return nil }); err != nil {
		t.Fatal(err)
	}
	m.deliver(t, ns, wires...)
}

func root(t testing.TB, m *member, ns NamespaceID, c ContextID) string {
	t.Helper()
	r, _, ok := m.ctx.Root(ns, c)
	if !ok {
		return "absent"
	}
	return hex.EncodeToString(r[:])
}

// fleet makes a namespace of n members (all Admins of the root group) and
// a kv context in it, known to all.
func fleet(t testing.TB, n, undo int) ([]*member, NamespaceID, ContextID) {
	t.Helper()
	ms := make([]*member, n)
	for i := range ms {
		ms[i] = newMember(t, undo)
	}
	ns, _, err := ms[0].gov.CreateNamespace(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[1:] {
		keys, err := m.gov.JoinNamespace(ns)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ms[0].gov.AddMember(bg, ns, ns.Root(), keys, governance.RoleAdmin, 0); err != nil {
			t.Fatal(err)
		}
	}
	app, err := ms[0].ctx.Install(bg, apptest.Build(t, apptest.KV))
	if err != nil {
		t.Fatal(err)
	}
	res, err := ms[0].ctx.Create(bg, ns, ns.Root(), app.ID, []byte(`{"entries":{"seed":"1"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[1:] {
		if _, err := m.ctx.Install(bg, apptest.Build(t, apptest.KV)); err != nil {
			t.Fatal(err)
		}
		m.syncFrom(t, ms[0], ns)
	}
	return ms, ns, res.Context
}

func set(t testing.TB, m *member, ns NamespaceID, c ContextID, k, v string) [][]byte {
	t.Helper()
	res, err := m.ctx.Call(bg, ns, c, "set", fmt.Appendf(nil, `{"key":%q,"value":%q}`, k, v))
	if err != nil {
		t.Fatal(err)
	}
	return res.Wires
}

// TestConvergenceAnyOrder: three members call concurrently (each on its
// own state, writing shared and own keys); every member then receives the
// others' ops in a different random order. All end with the same state
// root, and a member restarted from its store has it too.
func TestConvergenceAnyOrder(t *testing.T) {
	for name, undo := range map[string]int{"undo": 0, "rebuild": 1} {
		t.Run(name, func(t *testing.T) {
			ms, ns, c := fleet(t, 3, undo)
			var all [][][]byte
			for round := range 6 {
				var batch [][][]byte
				for i, m := range ms {
					batch = append(batch, set(t, m, ns, c, "shared", fmt.Sprintf("%d-%d", i, round)))
					batch = append(batch, set(t, m, ns, c, fmt.Sprintf("own-%d-%d", i, round), "x"))
				}
				all = append(all, batch...)
				if round%2 == 1 { // let some of the history settle between rounds
					for _, m := range ms {
						rng := rand.New(rand.NewPCG(uint64(round), uint64(len(all))))
						perm := rng.Perm(len(all))
						for _, p := range perm {
							m.deliver(t, ns, all[p]...)
						}
					}
				}
			}
			var reorders, rebuilds float64
			for _, m := range ms {
				reorders += testutil.ToFloat64(m.ctx.m.reorders)
				rebuilds += testutil.ToFloat64(m.ctx.m.rebuilds)
			}
			// Op ids are random, so which path a reordering takes varies;
			// each mode must take its own at least once.
			if (undo == 0 && (reorders == 0 || rebuilds > 0)) || (undo == 1 && rebuilds == 0) {
				t.Fatalf("the test did not exercise its path: %v reorders, %v rebuilds", reorders, rebuilds)
			}
			want := root(t, ms[0], ns, c)
			for i, m := range ms {
				if got := root(t, m, ns, c); got != want {
					t.Fatalf("member %d root %s, member 0 %s", i, got, want)
				}
			}
			// Replayed ops change nothing: governance knows them by id.
			_, before, _ := ms[2].ctx.Root(ns, c)
			for _, w := range all {
				res, err := ms[2].gov.Apply(bg, ns, w)
				if err != nil || res.Applied != 0 || res.Duplicate != len(w) {
					t.Fatalf("replayed ops: %+v %v", res, err)
				}
			}
			if err := ms[2].ctx.Sync(ns); err != nil {
				t.Fatal(err)
			}
			if _, after, _ := ms[2].ctx.Root(ns, c); after != before || root(t, ms[2], ns, c) != want {
				t.Fatal("replayed ops changed the context")
			}
			ms[1].restart(t)
			if err := ms[1].ctx.Sync(ns); err != nil {
				t.Fatal(err)
			}
			if got := root(t, ms[1], ns, c); got != want {
				t.Fatalf("restarted member root %s, want %s", got, want)
			}
			// The shared key holds the value of the call that sorts last.
			res, err := ms[2].ctx.Query(bg, ns, c, "get", []byte(`{"key":"shared"}`))
			if err != nil {
				t.Fatal(err)
			}
			res0, _ := ms[0].ctx.Query(bg, ns, c, "get", []byte(`{"key":"shared"}`))
			if res.OutputText != res0.OutputText {
				t.Fatalf("queries differ: %s vs %s", res.OutputText, res0.OutputText)
			}
		})
	}
}

func TestReadOnlyAndRefusals(t *testing.T) {
	ms, ns, c := fleet(t, 2, 0)
	a, b := ms[0], ms[1]
	bk, _ := b.gov.Identity(ns)
	if _, err := a.gov.SetMemberRole(bg, ns, ns.Root(), bk.Signing, governance.RoleReadOnly); err != nil {
		t.Fatal(err)
	}
	b.syncFrom(t, a, ns)
	if _, err := b.ctx.Call(bg, ns, c, "set", []byte(`{"key":"a","value":"b"}`)); !errors.Is(err, governance.ErrReadOnly) {
		t.Fatalf("read-only member's call: %v", err)
	}
	if res, err := b.ctx.Query(bg, ns, c, "get", []byte(`{"key":"seed"}`)); err != nil || res.OutputText != `{"value":"1","found":true}` {
		t.Fatalf("read-only member's query: %+v %v", res, err)
	}
	// A refused call records nothing.
	heads, _, _ := a.gov.Heads(ns)
	if _, err := a.ctx.Call(bg, ns, c, "set", []byte(`not json`)); !errors.Is(err, wasmhost.ErrRefused) {
		t.Fatalf("bad input: %v", err)
	}
	if after, _, _ := a.gov.Heads(ns); len(after) != len(heads) || after[0] != heads[0] {
		t.Fatal("a refused call recorded an op")
	}
}

// TestHostileContexts: hostile methods fail with their own errors and the
// node keeps serving another context.
func TestHostileContexts(t *testing.T) {
	ms, ns, kv := fleet(t, 1, 0)
	a := ms[0]
	app, err := a.ctx.Install(bg, apptest.Build(t, apptest.Hostile))
	if err != nil {
		t.Fatal(err)
	}
	h, err := a.ctx.Create(bg, ns, ns.Root(), app.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	for method, want := range map[string]error{"trap": wasmhost.ErrTrap, "huge": wasmhost.ErrOutputTooLarge, "bomb": wasmhost.ErrMemoryLimit} {
		if _, err := a.ctx.Call(bg, ns, h.Context, method, nil); !errors.Is(err, want) {
			t.Fatalf("%s: %v, want %v", method, err, want)
		}
		set(t, a, ns, kv, "still", "serving")
	}
	for _, bad := range [][]byte{[]byte("not wasm"), apptest.Build(t, apptest.BadImport)} {
		if _, err := a.ctx.Install(bg, bad); err == nil {
			t.Fatal("installed a bad module")
		}
	}
}

// TestGroupCommit: concurrent calls on one node are recorded in batches,
// each call seeing the writes of those before it: 100 concurrent transfers
// out of one account leave exactly what sequential ones would, and a peer
// applying the ops holds the same state.
func TestGroupCommit(t *testing.T) {
	ms, ns, _ := fleet(t, 2, 0)
	a, b := ms[0], ms[1]
	app, err := a.ctx.Install(bg, apptest.Build(t, apptest.Ledger))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ctx.Install(bg, apptest.Build(t, apptest.Ledger)); err != nil {
		t.Fatal(err)
	}
	res, err := a.ctx.Create(bg, ns, ns.Root(), app.ID, []byte(`{"balances":{"alice":1000}}`))
	if err != nil {
		t.Fatal(err)
	}
	c := res.Context
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			_, err := a.ctx.Call(bg, ns, c, "transfer", fmt.Appendf(nil, `{"from":"alice","to":"bob%d","amount":1}`, i%7))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := a.ctx.Query(bg, ns, c, "balance", []byte(`{"account":"alice"}`))
	if err != nil || out.OutputText != `{"balance":900}` {
		t.Fatalf("alice after 100 concurrent transfers: %+v %v", out, err)
	}
	// Refusals inside a batch record nothing: overdrafts.
	if _, err := a.ctx.Call(bg, ns, c, "transfer", []byte(`{"from":"bob0","to":"alice","amount":1000}`)); !errors.Is(err, wasmhost.ErrRefused) {
		t.Fatalf("overdraft: %v", err)
	}
	b.syncFrom(t, a, ns)
	if ra, rb := root(t, a, ns, c), root(t, b, ns, c); ra != rb {
		t.Fatalf("roots differ: %s vs %s", ra, rb)
	}
}

// TestUpgradeAndDelete: an upgrade keeps the state under the new
// application, a delete empties it; a peer applies both the same way, and
// a deleted context takes no calls.
func TestUpgradeAndDelete(t *testing.T) {
	ms, ns, c := fleet(t, 2, 0)
	a, b := ms[0], ms[1]
	set(t, a, ns, c, "k", "v")
	hostile, err := a.ctx.Install(bg, apptest.Build(t, apptest.Hostile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ctx.Upgrade(bg, ns, c, hostile.ID); err != nil {
		t.Fatal(err)
	}
	b.syncFrom(t, a, ns)
	if sa, sb := root(t, a, ns, c), root(t, b, ns, c); sa != sb {
		t.Fatalf("after upgrade: %s vs %s", sa, sb)
	}
	st, err := b.ctx.Show(ns, c)
	if err != nil || st.Application != hostile.ID || st.Keys != 2 {
		t.Fatalf("after upgrade, on the peer: %+v %v", st, err)
	}
	// The new application runs against the kept state (b fetches nothing:
	// it has no fetcher, so it needs the app installed).
	if res, err := a.ctx.Call(bg, ns, c, "write", []byte("x")); err != nil || res.Writes != 1 {
		t.Fatalf("call after upgrade: %+v %v", res, err)
	}
	if _, err := a.ctx.Delete(bg, ns, c); err != nil {
		t.Fatal(err)
	}
	b.syncFrom(t, a, ns)
	for _, m := range ms {
		st, err := m.ctx.Show(ns, c)
		if err != nil || !st.Deleted || st.Keys != 0 {
			t.Fatalf("after delete: %+v %v", st, err)
		}
		if _, err := m.ctx.Query(bg, ns, c, "counter", nil); !errors.Is(err, governance.ErrUnknownContext) {
			t.Fatalf("query of a deleted context: %v", err)
		}
	}
	a.restart(t)
	if err := a.ctx.Sync(ns); err != nil {
		t.Fatal(err)
	}
	if st, _ := a.ctx.Show(ns, c); !st.Deleted || st.Keys != 0 || st.Root != root(t, b, ns, c) {
		t.Fatalf("after restart: %+v", st)
	}
}
