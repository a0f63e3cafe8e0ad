package governance

import "testing"

func TestRedeliverAfterConcurrentAddAndRemove(t *testing.T) {
	a, b, c, x := newNode(t), newNode(t), newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	ck := mustT[MemberKeys](t)(c.e.JoinNamespace(ns))
	xk := mustT[MemberKeys](t)(x.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bk, RoleAdmin, 0))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), ck, RoleMember, 0))
	b.syncFrom(t, a, ns)
	// Concurrently: a removes c (rotating the key), b adds x (with the old key).
	mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), ck.Signing))
	mustT[[][]byte](t)(b.e.AddMember(bg, ns, ns.Root(), xk, RoleMember, 0))
	a.syncFrom(t, b, ns)
	// An op sealed under the rotated key, which x cannot read.
	mustT[[][]byte](t)(a.e.SetMemberCapabilities(bg, ns, ns.Root(), bk.Signing, CanCreateContext))
	b.syncFrom(t, a, ns)
	x.syncFrom(t, a, ns)
	if info := mustT[*NamespaceInfo](t)(x.e.Namespace(ns)); info.Complete {
		t.Fatal("x should lack the rotated key")
	}
	gaps := mustT[[]KeyGap](t)(a.e.KeyGaps(ns))
	if len(gaps) != 1 || gaps[0].Member != xk.Signing {
		t.Fatalf("gaps = %+v, want x", gaps)
	}
	if w := mustT[[][]byte](t)(b.e.RedeliverKeys(bg, ns)); len(w) != 0 {
		t.Fatalf("b redelivered %d ops although a created the key", len(w))
	}
	w := mustT[[][]byte](t)(a.e.RedeliverKeys(bg, ns))
	if len(w) != 1 {
		t.Fatalf("a redelivered %d ops, want 1", len(w))
	}
	x.apply(t, ns, w...)
	b.apply(t, ns, w...)
	if d1, d2 := digest(t, a.e, ns), digest(t, x.e, ns); d1 != d2 {
		t.Fatalf("x differs after redelivery:\n%s\nvs\n%s", d1, d2)
	}
	if gaps := mustT[[]KeyGap](t)(a.e.KeyGaps(ns)); len(gaps) != 0 {
		t.Fatalf("gaps left: %+v", gaps)
	}
	if w := mustT[[][]byte](t)(a.e.RedeliverKeys(bg, ns)); len(w) != 0 {
		t.Fatalf("second redelivery produced %d ops", len(w))
	}
}

func TestRemovalRotatesSubgroupKeys(t *testing.T) {
	a, b, c := newNode(t), newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	ck := mustT[MemberKeys](t)(c.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bk, RoleMember, 0))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), ck, RoleMember, 0))
	g, _, err := a.e.CreateGroup(bg, ns, ns.Root())
	ok(t, err)
	sub, _, err := a.e.CreateGroup(bg, ns, g)
	ok(t, err)
	b.syncFrom(t, a, ns)
	// b read the subgroups through inheritance; removing it from the root
	// rotates every group's key.
	w := mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), bk.Signing))
	if len(w) != 2 { // MemberRemoved + one KeyDelivery (to c) with three keys
		t.Fatalf("RemoveMember returned %d ops", len(w))
	}
	after := mustT[[][]byte](t)(a.e.SetMemberCapabilities(bg, ns, ns.Root(), ck.Signing, CanCreateContext))
	added := mustT[[][]byte](t)(a.e.AddMember(bg, ns, sub, MemberKeys{Signing: PublicKey{5}, Agreement: ck.Agreement}, RoleMember, 0))
	sealed := map[OpID]bool{
		mustT[*decodedOp](t)(decodeOp(after[0])).id: true,
		mustT[*decodedOp](t)(decodeOp(added[0])).id: true,
	}
	b.syncFrom(t, a, ns)
	c.syncFrom(t, a, ns)
	if d1, d2 := digest(t, a.e, ns), digest(t, c.e, ns); d1 != d2 {
		t.Fatalf("c differs:\n%s\nvs\n%s", d1, d2)
	}
	seen := 0
	for _, r := range mustT[[]OpRecord](t)(b.e.OpLog(ns)) {
		if sealed[r.ID] {
			seen++
			if r.Effect != "skeleton" {
				t.Fatalf("removed member reads %s sealed after its removal (effect %s)", r.Kind, r.Effect)
			}
		}
	}
	if seen != 2 {
		t.Fatalf("b holds %d of the 2 sealed ops", seen)
	}
	for _, grp := range []GroupID{ns.Root(), g, sub} {
		if ms := members(t, c.e, ns, grp); len(ms) == 0 {
			t.Fatalf("group %s empty on c", grp)
		}
		if roleOf(t, c.e, ns, grp, bk.Signing) != 0 {
			t.Fatalf("b still has a role in %s", grp)
		}
	}
	if gaps := mustT[[]KeyGap](t)(a.e.KeyGaps(ns)); len(gaps) != 0 {
		t.Fatalf("gaps after rotation: %+v", gaps)
	}
}
