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
