package governance

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/store"
	"github.com/prometheus/client_golang/prometheus"
)

type testNode struct {
	path string
	key  *store.Key
	st   *store.Store
	e    *Engine
	reg  *prometheus.Registry
}

func newNode(t testing.TB) *testNode {
	t.Helper()
	n := &testNode{path: filepath.Join(t.TempDir(), "node.db"), key: &store.Key{7}}
	n.open(t)
	return n
}

func (n *testNode) open(t testing.TB) { n.openWith(t, true) }

// openSync opens with fdatasync on, as a real node runs.
func (n *testNode) openSync(t testing.TB) { n.openWith(t, false) }

func (n *testNode) openWith(t testing.TB, noSync bool) {
	t.Helper()
	st, err := store.Open(n.path, n.key, store.Options{Timeout: time.Second, NoSync: noSync})
	if err != nil {
		t.Fatal(err)
	}
	n.st = st
	n.reg = prometheus.NewRegistry()
	e, err := New(Config{Store: st, Registerer: n.reg})
	if err != nil {
		t.Fatal(err)
	}
	n.e = e
	t.Cleanup(func() { st.Close() })
}

func (n *testNode) restart(t testing.TB) {
	t.Helper()
	n.st.Close()
	n.open(t)
}

// syncFrom gives n every op src has that n lacks, as a sync would.
func (n *testNode) syncFrom(t testing.TB, src *testNode, ns NamespaceID) ApplyResult {
	t.Helper()
	heads, _, err := n.e.Heads(ns)
	if err != nil {
		t.Fatal(err)
	}
	var wires [][]byte
	if err := src.e.OpsMissing(ns, heads, func(w []byte) error { wires = append(wires, w); return nil }); err != nil {
		t.Fatal(err)
	}
	res, err := n.e.Apply(context.Background(), ns, wires)
	if err != nil {
		t.Fatal(err)
	}
	if res.Refused > 0 {
		t.Fatalf("sync refused %d ops: %v", res.Refused, res.FirstRefusal)
	}
	return res
}

func (n *testNode) apply(t testing.TB, ns NamespaceID, wires ...[]byte) ApplyResult {
	t.Helper()
	res, err := n.e.Apply(context.Background(), ns, wires)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func mustT[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// digest is a canonical text form of a namespace's replayed state and DAG
// (heads and each op's effect), for comparing nodes.
func digest(t testing.TB, e *Engine, ns NamespaceID) string {
	t.Helper()
	sp, err := e.space(ns)
	if err != nil {
		t.Fatal(err)
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	checkInvariants(t, sp.d)
	return stateDigest(sp.d.tip) + dagDigest(sp.d)
}

// checkInvariants compares the incrementally maintained order, positions,
// snapshots, effects and tip with a replay from scratch.
func checkInvariants(t testing.TB, d *dag) {
	t.Helper()
	if len(d.order) != len(d.nodes) {
		t.Fatalf("order has %d ops, DAG %d", len(d.order), len(d.nodes))
	}
	st := newState(d.ns)
	si := 0
	for i, n := range d.order {
		if n.pos != i {
			t.Fatalf("op at %d has pos %d", i, n.pos)
		}
		if i > 0 && !before(d.order[i-1], n) {
			t.Fatalf("order not sorted at %d", i)
		}
		if si < len(d.snaps) && d.snaps[si].pos == i {
			if a, b := stateDigest(d.snaps[si].st), stateDigest(st); a != b {
				t.Fatalf("snapshot at %d differs from replay:\n%s\nvs\n%s", i, a, b)
			}
			si++
		}
		eff := replay(st, n)
		if (eff == nil) != (n.effect == nil) {
			t.Fatalf("op %d effect %v, replay says %v", i, n.effect, eff)
		}
	}
	if a, b := stateDigest(d.tip), stateDigest(st); a != b {
		t.Fatalf("tip differs from replay:\n%s\nvs\n%s", a, b)
	}
}

func stateDigest(st *state) string {
	var b strings.Builder
	var gids []GroupID
	for id := range st.groups {
		gids = append(gids, id)
	}
	sortGroups(gids)
	for _, id := range gids {
		g := st.groups[id]
		fmt.Fprintf(&b, "group %x parent %x root %v keys %x\n", id[:4], g.parent[:4], g.root, g.keyIDs)
		var ms []string
		for pk, r := range g.members {
			ms = append(ms, fmt.Sprintf("  %x %s %d %x\n", pk[:4], r.Role, r.Caps, r.Keys.Agreement[:4]))
		}
		sort.Strings(ms)
		b.WriteString(strings.Join(ms, ""))
	}
	var ns []string
	for pk, v := range st.nonces {
		ns = append(ns, fmt.Sprintf("nonce %x %d\n", pk[:4], v))
	}
	sort.Strings(ns)
	b.WriteString(strings.Join(ns, ""))
	fmt.Fprintf(&b, "policy %q incomplete %v\n", st.policy, st.incomplete)
	return b.String()
}

func dagDigest(d *dag) string {
	var b strings.Builder
	var heads []OpID
	for id := range d.heads {
		heads = append(heads, id)
	}
	slices.SortFunc(heads, func(x, y OpID) int { return bytes.Compare(x[:], y[:]) })
	for _, h := range heads {
		fmt.Fprintf(&b, "head %x\n", h[:6])
	}
	for _, n := range d.order {
		eff := "ok"
		if n.effect != nil {
			eff = string(n.effect.Reason)
		}
		fmt.Fprintf(&b, "op %x %s\n", n.op.id[:6], eff)
	}
	return b.String()
}

// members returns "key:role" strings for g, sorted.
func members(t testing.TB, e *Engine, ns NamespaceID, g GroupID) []string {
	t.Helper()
	ms, err := e.Members(ns, g)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%x:%s", m.Member[:4], m.Role))
	}
	return out
}

func roleOf(t testing.TB, e *Engine, ns NamespaceID, g GroupID, pk PublicKey) Role {
	t.Helper()
	ms, err := e.Members(ns, g)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Member == pk {
			return m.Role
		}
	}
	return 0
}
