package governance

import (
	"crypto/rand"
	mrand "math/rand/v2"
	"slices"
	"testing"
)

// observer returns an engine that takes part in ns with every group key in
// keys, so it can read every op: it models a member that received all
// deliveries.
func observer(t testing.TB, ns NamespaceID, keys map[KeyID]groupKey) *Engine {
	t.Helper()
	n := newNode(t)
	id, err := newIdentity(rand.Reader)
	ok(t, err)
	sp := &space{id: id, d: newDAG(ns), pending: map[OpID]*pendingOp{}, waiting: map[OpID][]OpID{}, refused: map[OpID]Reason{}}
	for _, k := range keys {
		sp.d.keys[k.id()] = k
	}
	n.e.spaces[ns] = sp
	return n.e
}

func allKeys(t testing.TB, ns NamespaceID, nodes ...*testNode) map[KeyID]groupKey {
	out := map[KeyID]groupKey{}
	for _, n := range nodes {
		sp, err := n.e.space(ns)
		ok(t, err)
		for id, k := range sp.d.keys {
			out[id] = k
		}
	}
	return out
}

func allWires(t testing.TB, ns NamespaceID, nodes ...*testNode) [][]byte {
	seen := map[OpID]bool{}
	var out [][]byte
	for _, n := range nodes {
		ok(t, n.e.OpsMissing(ns, nil, func(w []byte) error {
			id := opIDOf(append([]byte(signDomain), mustT[*decodedOp](t)(decodeOp(w)).wireBody()...))
			if !seen[id] {
				seen[id] = true
				out = append(out, w)
			}
			return nil
		}))
	}
	return out
}

func (op *decodedOp) wireBody() []byte {
	var w signedOpWire
	if err := decodeCanonical(op.wire, &w); err != nil {
		panic(err)
	}
	return w.Body
}

// checkPermutations applies wires to fresh observers in many random orders
// and random batch sizes and requires identical state, heads and effects.
func checkPermutations(t *testing.T, ns NamespaceID, wires [][]byte, keys map[KeyID]groupKey, rounds int, rng *mrand.Rand) string {
	t.Helper()
	var want string
	for r := range rounds {
		e := observer(t, ns, keys)
		perm := rng.Perm(len(wires))
		for i := 0; i < len(perm); {
			size := 1 + rng.IntN(8)
			var batch [][]byte
			for ; size > 0 && i < len(perm); size, i = size-1, i+1 {
				batch = append(batch, wires[perm[i]])
			}
			res, err := e.Apply(bg, ns, batch)
			ok(t, err)
			if res.Refused > 0 {
				t.Fatalf("round %d: refused %v", r, res.FirstRefusal)
			}
		}
		got := digest(t, e, ns)
		if r == 0 {
			want = got
			continue
		}
		if got != want {
			t.Fatalf("round %d diverged:\n%s\nvs\n%s", r, want, got)
		}
	}
	return want
}

func TestConcurrentConflicts(t *testing.T) {
	saved := snapEvery
	snapEvery = 3
	t.Cleanup(func() { snapEvery = saved })
	a, b, c, d := newNode(t), newNode(t), newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	ck := mustT[MemberKeys](t)(c.e.JoinNamespace(ns))
	dk := mustT[MemberKeys](t)(d.e.JoinNamespace(ns))
	ek := MemberKeys{Signing: PublicKey{0xee}, Agreement: AgreementKey{9}}
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bk, RoleAdmin, 0))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), ck, RoleAdmin, 0))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), dk, RoleMember, 0))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), ek, RoleMember, 0))
	for _, n := range []*testNode{b, c, d} {
		n.syncFrom(t, a, ns)
	}
	// Concurrently, without syncing: A and B remove each other; C promotes
	// E while A removes E; B and C change D's capabilities differently.
	mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), bk.Signing))
	mustT[[][]byte](t)(b.e.RemoveMember(bg, ns, ns.Root(), mustT[MemberKeys](t)(a.e.Identity(ns)).Signing))
	mustT[[][]byte](t)(c.e.SetMemberRole(bg, ns, ns.Root(), ek.Signing, RoleAdmin))
	mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), ek.Signing))
	mustT[[][]byte](t)(b.e.SetMemberCapabilities(bg, ns, ns.Root(), dk.Signing, CanCreateContext))
	mustT[[][]byte](t)(c.e.SetMemberCapabilities(bg, ns, ns.Root(), dk.Signing, CanManageMetadata))

	wires := allWires(t, ns, a, b, c)
	keys := allKeys(t, ns, a, b, c)
	rng := mrand.New(mrand.NewPCG(1, 2))
	want := checkPermutations(t, ns, wires, keys, 40, rng)

	// Every node converges to the same DAG; nodes holding every key to the
	// same state.
	for range 2 {
		for _, x := range []*testNode{a, b, c, d} {
			for _, y := range []*testNode{a, b, c, d} {
				if x != y {
					x.syncFrom(t, y, ns)
				}
			}
		}
	}
	obs := observer(t, ns, keys)
	_, err = obs.Apply(bg, ns, wires)
	ok(t, err)
	h0, _, _ := obs.Heads(ns)
	for name, n := range map[string]*testNode{"a": a, "b": b, "c": c, "d": d} {
		h, _, _ := n.e.Heads(ns)
		if !slices.Equal(h, h0) {
			t.Fatalf("%s heads %v, observer %v", name, h, h0)
		}
		if info := mustT[*NamespaceInfo](t)(n.e.Namespace(ns)); info.Complete {
			if got := digest(t, n.e, ns); got != want {
				t.Fatalf("%s (complete) differs:\n%s\nvs\n%s", name, want, got)
			}
		}
	}
	// Exactly one of A and B survives; E is removed whatever the order.
	ak := mustT[MemberKeys](t)(a.e.Identity(ns))
	ra, rb := roleOf(t, obs, ns, ns.Root(), ak.Signing), roleOf(t, obs, ns, ns.Root(), bk.Signing)
	if (ra == RoleAdmin) == (rb == RoleAdmin) {
		t.Fatalf("mutual removal left A=%v B=%v; want exactly one admin of the two", ra, rb)
	}
	if re := roleOf(t, obs, ns, ns.Root(), ek.Signing); re != 0 && ra == RoleAdmin {
		t.Fatalf("E survived A's removal as %v", re)
	}
}

// TestRandomHistoriesConverge builds random histories from three admins
// with random partial syncs, then checks many arrival orders.
func TestRandomHistoriesConverge(t *testing.T) {
	// Snapshots every few ops, so causal states and out-of-order inserts
	// start from snapshots often.
	saved := snapEvery
	snapEvery = 5
	t.Cleanup(func() { snapEvery = saved })
	for seed := range uint64(3) {
		rng := mrand.New(mrand.NewPCG(seed, 99))
		nodes := []*testNode{newNode(t), newNode(t), newNode(t)}
		ns, _, err := nodes[0].e.CreateNamespace(bg)
		ok(t, err)
		var ids []MemberKeys
		ids = append(ids, mustT[MemberKeys](t)(nodes[0].e.Identity(ns)))
		for _, n := range nodes[1:] {
			k := mustT[MemberKeys](t)(n.e.JoinNamespace(ns))
			ids = append(ids, k)
			mustT[[][]byte](t)(nodes[0].e.AddMember(bg, ns, ns.Root(), k, RoleAdmin, 0))
		}
		for _, n := range nodes[1:] {
			n.syncFrom(t, nodes[0], ns)
		}
		var extra []MemberKeys
		groups := []GroupID{ns.Root()}
		for step := range 100 {
			n := nodes[rng.IntN(len(nodes))]
			g := groups[rng.IntN(len(groups))]
			switch rng.IntN(7) {
			case 0, 1:
				k := MemberKeys{Signing: PublicKey{byte(step), 1, byte(seed)}, Agreement: AgreementKey{byte(step), 2}}
				extra = append(extra, k)
				n.e.AddMember(bg, ns, g, k, Role(1+rng.IntN(3)), Capabilities(rng.IntN(512)))
			case 2:
				pool := append(append([]MemberKeys{}, ids...), extra...)
				n.e.SetMemberRole(bg, ns, g, pool[rng.IntN(len(pool))].Signing, Role(1+rng.IntN(3)))
			case 3:
				pool := append(append([]MemberKeys{}, ids...), extra...)
				n.e.SetMemberCapabilities(bg, ns, g, pool[rng.IntN(len(pool))].Signing, Capabilities(rng.IntN(512)))
			case 4:
				if len(extra) > 0 {
					n.e.RemoveMember(bg, ns, g, extra[rng.IntN(len(extra))].Signing)
				}
			case 5:
				if gid, _, err := n.e.CreateGroup(bg, ns, g); err == nil {
					groups = append(groups, gid)
				}
			case 6:
				x, y := nodes[rng.IntN(3)], nodes[rng.IntN(3)]
				if x != y {
					x.syncFrom(t, y, ns)
				}
			}
		}
		wires := allWires(t, ns, nodes...)
		keys := allKeys(t, ns, nodes...)
		want := checkPermutations(t, ns, wires, keys, 15, rng)
		for range 2 {
			for _, x := range nodes {
				for _, y := range nodes {
					if x != y {
						x.syncFrom(t, y, ns)
					}
				}
			}
		}
		for i, n := range nodes {
			if got := digest(t, n.e, ns); got != want {
				t.Fatalf("seed %d: node %d differs after full sync:\n%s\nvs\n%s", seed, i, want, got)
			}
		}
		inert := 0
		log := mustT[[]OpRecord](t)(nodes[0].e.OpLog(ns))
		for _, r := range log {
			if r.Effect != "applied" {
				inert++
			}
		}
		t.Logf("seed %d: %d ops, %d groups, %d ops without effect after conflicts", seed, len(wires), len(groups), inert)
	}
}
