package governance

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/store"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bg = context.Background()

func TestMembershipFlow(t *testing.T) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	ns, wires, err := a.e.CreateNamespace(bg)
	ok(t, err)
	if len(wires) != 1 {
		t.Fatalf("CreateNamespace returned %d ops", len(wires))
	}
	aKeys := mustT[MemberKeys](t)(a.e.Identity(ns))
	bKeys := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	cKeys := mustT[MemberKeys](t)(c.e.JoinNamespace(ns))

	// B syncs before it is a member: skeletons only once group ops exist.
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bKeys, RoleMember, ManageMembers))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), cKeys, RoleReadOnly, 0))
	b.syncFrom(t, a, ns)
	c.syncFrom(t, a, ns)
	for name, n := range map[string]*testNode{"b": b, "c": c} {
		if d1, d2 := digest(t, a.e, ns), digest(t, n.e, ns); d1 != d2 {
			t.Fatalf("%s differs from a:\n%s\nvs\n%s", name, d1, d2)
		}
	}
	if got := roleOf(t, b.e, ns, ns.Root(), bKeys.Signing); got != RoleMember {
		t.Fatalf("b sees itself as %v", got)
	}
	info := mustT[*NamespaceInfo](t)(c.e.Namespace(ns))
	if !info.Complete || info.Role != RoleReadOnly {
		t.Fatalf("c's view: complete=%v role=%v", info.Complete, info.Role)
	}

	// A subgroup: the key reaches inherited members.
	_, _, err = b.e.CreateGroup(bg, ns, ns.Root())
	if !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("b (Member without CAN_CREATE_SUBGROUP) created a group: %v", err)
	}
	g, wires, err := a.e.CreateGroup(bg, ns, ns.Root())
	ok(t, err)
	if len(wires) != 3 { // GroupCreated + KeyDelivery to b and c
		t.Fatalf("CreateGroup returned %d ops, want 3", len(wires))
	}
	b.apply(t, ns, wires...)
	c.apply(t, ns, wires...)
	if ms := members(t, c.e, ns, g); len(ms) != 3 {
		t.Fatalf("subgroup members on c: %v", ms)
	}
	// b has MANAGE_MEMBERS: it may change c's capabilities in the subgroup?
	// No: c's row is inherited, not direct, so the op is invalid.
	if _, err := b.e.SetMemberCapabilities(bg, ns, g, cKeys.Signing, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("caps on an inherited row: %v", err)
	}

	// c is ReadOnly: it cannot author anything.
	if _, err := c.e.AddMember(bg, ns, ns.Root(), aKeys, RoleMember, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("ReadOnly authoring: %v", err)
	}

	// Remove b: the rotated key goes to c, not b.
	w := mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), bKeys.Signing))
	if len(w) != 2 { // MemberRemoved + KeyDelivery to c
		t.Fatalf("RemoveMember returned %d ops, want 2", len(w))
	}
	after := mustT[[][]byte](t)(a.e.SetMemberCapabilities(bg, ns, ns.Root(), cKeys.Signing, CanCreateContext))
	b.syncFrom(t, a, ns)
	c.syncFrom(t, a, ns)
	if d1, d2 := digest(t, a.e, ns), digest(t, c.e, ns); d1 != d2 {
		t.Fatalf("c differs from a after removal:\n%s\nvs\n%s", d1, d2)
	}
	if got := roleOf(t, c.e, ns, ns.Root(), bKeys.Signing); got != 0 {
		t.Fatalf("b still a member on c: %v", got)
	}
	// b holds the DAG but cannot read what was sealed after its removal.
	hb, _, _ := b.e.Heads(ns)
	ha, _, _ := a.e.Heads(ns)
	if len(hb) != 1 || hb[0] != ha[0] {
		t.Fatalf("b's heads %v, a's %v", hb, ha)
	}
	sp := mustT[*space](t)(b.e.space(ns))
	op := mustT[*decodedOp](t)(decodeOp(after[0]))
	if _, held := sp.d.keys[op.body.Group.KeyID]; held {
		t.Fatal("removed member holds the rotated key")
	}
	for _, k := range sp.d.keys {
		if _, err := openGroupOp(&op.body, &k); err == nil {
			t.Fatal("removed member decrypted an op sealed after its removal")
		}
	}
	if info := mustT[*NamespaceInfo](t)(b.e.Namespace(ns)); info.Complete {
		t.Fatal("b claims a complete state without the rotated key")
	}
	if roleOf(t, c.e, ns, ns.Root(), cKeys.Signing) != RoleReadOnly {
		t.Fatal("c lost its role")
	}
	ms := mustT[[]MemberInfo](t)(c.e.Members(ns, ns.Root()))
	for _, m := range ms {
		if m.Member == cKeys.Signing && m.Capabilities != CanCreateContext {
			t.Fatalf("c's capabilities on c: %v", m.Capabilities)
		}
	}
}

func TestPolicy(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bKeys := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bKeys, RoleMember, AllCapabilities))
	b.syncFrom(t, a, ns)
	p := attest.DefaultPolicy()
	p.AcceptMock = true
	if _, err := b.e.SetPolicy(bg, ns, p); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("non-admin set the policy: %v", err)
	}
	if _, err := a.e.SetPolicy(bg, ns, &attest.Policy{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid policy accepted: %v", err)
	}
	mustT[[][]byte](t)(a.e.SetPolicy(bg, ns, p))
	b.syncFrom(t, a, ns)
	got := mustT[*attest.Policy](t)(b.e.Policy(ns))
	if got == nil || !got.AcceptMock {
		t.Fatalf("policy on b: %+v", got)
	}
}

func TestSkeletonThenKeyLater(t *testing.T) {
	a, d := newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	var others []MemberKeys
	for range 3 {
		o := newNode(t)
		k := mustT[MemberKeys](t)(o.e.JoinNamespace(ns))
		others = append(others, k)
		mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, 0))
	}
	mustT[[][]byte](t)(a.e.SetMemberRole(bg, ns, ns.Root(), others[0].Signing, RoleAdmin))
	dKeys := mustT[MemberKeys](t)(d.e.JoinNamespace(ns))
	d.syncFrom(t, a, ns)
	info := mustT[*NamespaceInfo](t)(d.e.Namespace(ns))
	if info.Complete || info.Ops == 0 {
		t.Fatalf("d before its key: complete=%v ops=%d", info.Complete, info.Ops)
	}
	log := mustT[[]OpRecord](t)(d.e.OpLog(ns))
	skeletons := 0
	for _, r := range log {
		if r.Effect == "skeleton" {
			skeletons++
		}
	}
	if skeletons != 4 {
		t.Fatalf("d holds %d skeletons, want 4", skeletons)
	}
	// Restart in between: skeletons and provisional flags persist.
	d.restart(t)
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), dKeys, RoleReadOnly, 0))
	d.syncFrom(t, a, ns)
	if d1, d2 := digest(t, a.e, ns), digest(t, d.e, ns); d1 != d2 {
		t.Fatalf("d differs from a after its key arrived:\n%s\nvs\n%s", d1, d2)
	}
	if roleOf(t, d.e, ns, ns.Root(), others[0].Signing) != RoleAdmin {
		t.Fatal("d did not apply the role change once it had the key")
	}
	d.restart(t)
	if d1, d2 := digest(t, a.e, ns), digest(t, d.e, ns); d1 != d2 {
		t.Fatalf("d differs from a after restart:\n%s\nvs\n%s", d1, d2)
	}
}

func TestRestartKeepsEverything(t *testing.T) {
	a := newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	o := newNode(t)
	k := mustT[MemberKeys](t)(o.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, CanCreateSubgroup))
	g, _, err := a.e.CreateGroup(bg, ns, ns.Root())
	ok(t, err)
	mustT[[][]byte](t)(a.e.SetPolicy(bg, ns, attest.DefaultPolicy()))
	before := digest(t, a.e, ns)
	id := mustT[MemberKeys](t)(a.e.Identity(ns))
	a.restart(t)
	if after := digest(t, a.e, ns); after != before {
		t.Fatalf("state changed across restart:\n%s\nvs\n%s", before, after)
	}
	if id2 := mustT[MemberKeys](t)(a.e.Identity(ns)); id2 != id {
		t.Fatal("namespace identity changed across restart")
	}
	// Still able to author (keys and nonce survived).
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, g, MemberKeys{Signing: PublicKey{9}, Agreement: k.Agreement}, RoleMember, 0))
	if nss := mustT[[]NamespaceID](t)(a.e.Namespaces()); len(nss) != 1 || nss[0] != ns {
		t.Fatalf("namespaces after restart: %v", nss)
	}
}

func TestPendingUntilParents(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ns, genesis, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bKeys := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	w1 := mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bKeys, RoleMember, 0))
	w2 := mustT[[][]byte](t)(a.e.SetMemberCapabilities(bg, ns, ns.Root(), bKeys.Signing, CanCreateContext))
	// Newest first: everything waits for the genesis op.
	res := b.apply(t, ns, w2[0], w1[1], w1[0])
	if res.Pending != 3 || res.Applied != 0 {
		t.Fatalf("before genesis: %+v", res)
	}
	g := mustT[*decodedOp](t)(decodeOp(genesis[0]))
	if len(res.Missing) != 1 || res.Missing[0] != g.id {
		t.Fatalf("missing = %v, want the genesis op", res.Missing)
	}
	if has, _ := b.e.Has(ns, mustT[*decodedOp](t)(decodeOp(w2[0])).id); !has {
		t.Fatal("Has(pending op) = false")
	}
	res = b.apply(t, ns, genesis[0])
	if res.Applied != 4 || len(res.Missing) != 0 {
		t.Fatalf("after genesis: %+v", res)
	}
	if d1, d2 := digest(t, a.e, ns), digest(t, b.e, ns); d1 != d2 {
		t.Fatalf("b differs from a:\n%s\nvs\n%s", d1, d2)
	}
}

func TestPendingBounded(t *testing.T) {
	a := newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	var wires [][]byte
	for range 5 {
		o := newNode(t)
		k := mustT[MemberKeys](t)(o.e.JoinNamespace(ns))
		wires = append(wires, mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, 0))...)
	}
	b := newNode(t)
	b.e.limits.MaxPending = 12 // b knows no member yet: their ops share a quarter, 3
	mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	res := b.apply(t, ns, wires...)
	if res.Pending != 3 || res.Refused != len(wires)-3 || res.LocalRefused != res.Refused {
		t.Fatalf("bounded pending: %+v", res)
	}
	var re *RefusedError
	if !errors.As(res.FirstRefusal, &re) || re.Reason != ReasonPendingFull {
		t.Fatalf("first refusal: %v", res.FirstRefusal)
	}
}

func TestUnknownNamespace(t *testing.T) {
	a := newNode(t)
	if _, err := a.e.Apply(bg, NamespaceID{1}, nil); !errors.Is(err, ErrUnknownNamespace) {
		t.Fatalf("Apply: %v", err)
	}
	if _, _, err := a.e.Heads(NamespaceID{1}); !errors.Is(err, ErrUnknownNamespace) {
		t.Fatalf("Heads: %v", err)
	}
}

func TestDeleteNamespaceRowsAndForget(t *testing.T) {
	a := newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	other, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	o := newNode(t)
	k := mustT[MemberKeys](t)(o.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, 0))
	var n int
	ok(t, a.st.Update(func(tx *store.Tx) error {
		var err error
		n, err = DeleteNamespaceRows(tx, ns)
		return err
	}))
	if n != 6 { // record, identity, root key, genesis, MemberAdded, KeyDelivery
		t.Fatalf("deleted %d rows, want 6", n)
	}
	a.e.Forget(ns)
	if _, _, err := a.e.Heads(ns); !errors.Is(err, ErrUnknownNamespace) {
		t.Fatalf("Heads after Forget: %v", err)
	}
	ok(t, a.st.Compact(bg))
	raw, err := os.ReadFile(a.path)
	ok(t, err)
	if bytes.Contains(raw, ns[:]) {
		t.Fatal("namespace id still in the file after delete and compact")
	}
	a.restart(t)
	if nss := mustT[[]NamespaceID](t)(a.e.Namespaces()); len(nss) != 1 || nss[0] != other {
		t.Fatalf("namespaces after purge and restart: %v", nss)
	}
}

func TestLoadDropsOrphans(t *testing.T) {
	a := newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	o := newNode(t)
	k := mustT[MemberKeys](t)(o.e.JoinNamespace(ns))
	w := mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, 0))
	added := mustT[*decodedOp](t)(decodeOp(w[0]))
	// Damage the store: the MemberAdded row disappears, its KeyDelivery
	// child stays.
	ok(t, a.st.Update(func(tx *store.Tx) error { return tx.Delete(store.OpLog, rowKey(prefOp, ns, added.id[:])) }))
	a.restart(t)
	if _, n, err := a.e.Heads(ns); err != nil || n != 1 {
		t.Fatalf("after load: %d ops, %v; want the genesis op only", n, err)
	}
	a.restart(t) // the orphan's row is gone too
	if _, n, _ := a.e.Heads(ns); n != 1 {
		t.Fatalf("second load: %d ops", n)
	}
	must := mustT[[][]byte](t)
	must(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, 0))
}
