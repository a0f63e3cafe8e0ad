package governance

import (
	"crypto/rand"
	"errors"
	"testing"
)

// forgeGroupOp signs and seals op as n's identity, bypassing the local
// checks an honest node makes (a replica's forged call).
func forgeGroupOp(t testing.TB, n *testNode, ns NamespaceID, g GroupID, op *GroupOp) []byte {
	t.Helper()
	sp := n.e.spaces[ns]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	me := sp.id.public()
	b := &opBody{Namespace: ns, Parents: sp.heads(), Signer: me.Signing, Nonce: sp.d.maxNonce[me.Signing] + 1,
		Group: &SealedGroupOp{Group: g}}
	ids := sp.d.tip.groups[g].keyIDs
	k, have := sp.d.keys[ids[len(ids)-1]]
	if !have {
		t.Fatal("forger lacks the group key")
	}
	ok(t, sealGroupOp(b, &k, op, rand.Reader))
	w, err := signOp(b, sp.id.signing)
	ok(t, err)
	return w.wire
}

func TestContextOps(t *testing.T) {
	a, m, ro := newNode(t), newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	mk := mustT[MemberKeys](t)(m.e.JoinNamespace(ns))
	rk := mustT[MemberKeys](t)(ro.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), mk, RoleMember, 0))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), rk, RoleReadOnly, AllCapabilities))
	m.syncFrom(t, a, ns)
	ro.syncFrom(t, a, ns)
	app := ApplicationID{9}

	// A Member without CAN_CREATE_CONTEXT may not create a context.
	if _, _, err := m.e.CreateContext(bg, ns, ns.Root(), app, nil, nil, nil); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("member without CAN_CREATE_CONTEXT: %v", err)
	}
	c, _, err := a.e.CreateContext(bg, ns, ns.Root(), app, []byte("{}"), []ContextWrite{{Key: []byte("k"), Value: []byte("v")}}, nil)
	ok(t, err)
	m.syncFrom(t, a, ns)
	ro.syncFrom(t, a, ns)

	// Calls: the member may, the read-only member may not, locally or forged.
	_, _, err = m.e.Call(bg, ns, &ContextCall{Context: c, Method: "set", Writes: []ContextWrite{{Key: []byte("a"), Value: []byte("1")}}}, nil)
	ok(t, err)
	if _, _, err := ro.e.Call(bg, ns, &ContextCall{Context: c, Method: "set"}, nil); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only member's call: %v", err)
	}
	if _, err := ro.e.Context(ns, c, true); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Context(write) on a read-only member: %v", err)
	}
	if acc, err := ro.e.Context(ns, c, false); err != nil || acc.Role != RoleReadOnly {
		t.Fatalf("Context(read) on a read-only member: %+v %v", acc, err)
	}
	forged := forgeGroupOp(t, ro, ns, ns.Root(), &GroupOp{ContextCall: &ContextCall{Context: c, Method: "set",
		Writes: []ContextWrite{{Key: []byte("a"), Value: []byte("forged")}}}})
	for name, n := range map[string]*testNode{"admin": a, "member": m} {
		if res := n.apply(t, ns, forged); res.Refused != 1 || !errors.Is(res.FirstRefusal, ErrReadOnly) {
			t.Fatalf("%s accepted a call forged by a read-only member: %+v", name, res)
		}
	}
	// Upgrades and deletes need MANAGE_APPLICATION.
	if _, err := m.e.UpgradeContext(bg, ns, c, ApplicationID{10}); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("upgrade without MANAGE_APPLICATION: %v", err)
	}
	if _, err := m.e.DeleteContext(bg, ns, c); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("delete without MANAGE_APPLICATION: %v", err)
	}
	a.syncFrom(t, m, ns)
	mustT[[][]byte](t)(a.e.UpgradeContext(bg, ns, c, ApplicationID{10}))
	if used := mustT[[]ApplicationID](t)(a.e.ApplicationsUsed(ns)); len(used) != 2 {
		t.Fatalf("applications used: %v", used)
	}
	if !a.e.MayFetchApplication(ns, rk.Signing, app) || a.e.MayFetchApplication(ns, PublicKey{1}, app) || a.e.MayFetchApplication(ns, rk.Signing, ApplicationID{11}) {
		t.Fatal("MayFetchApplication: members of a group using the app, only")
	}
	mustT[[][]byte](t)(a.e.DeleteContext(bg, ns, c))
	if _, _, err := a.e.Call(bg, ns, &ContextCall{Context: c, Method: "set"}, nil); !errors.Is(err, ErrUnknownContext) {
		t.Fatalf("call on a deleted context: %v", err)
	}
	_, entries, changed, err := a.e.ContextChanges(ns)
	ok(t, err)
	if !changed || len(entries) != 4 || entries[0].Created == nil || entries[1].Call == nil || entries[2].Upgraded == nil || entries[3].Deleted == nil {
		t.Fatalf("context changes: %d entries", len(entries))
	}
	if _, _, changed, _ := a.e.ContextChanges(ns); changed {
		t.Fatal("ContextChanges reported changes twice")
	}
}

// TestContextChangesReorder: an op that sorts before context ops already
// read marks the change from its position.
func TestContextChangesReorder(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bk, RoleAdmin, AllCapabilities))
	c, _, err := a.e.CreateContext(bg, ns, ns.Root(), ApplicationID{1}, nil, nil, nil)
	ok(t, err)
	b.syncFrom(t, a, ns)
	call := func(n *testNode, v string) []byte {
		w, _, err := n.e.Call(bg, ns, &ContextCall{Context: c, Method: "set", Writes: []ContextWrite{{Key: []byte("k"), Value: []byte(v)}}}, nil)
		ok(t, err)
		return w[0]
	}
	wa, wb := call(a, "a"), call(b, "b") // concurrent: same height
	_, _, _, err = a.e.ContextChanges(ns)
	ok(t, err)
	_, _, _, err = b.e.ContextChanges(ns)
	ok(t, err)
	a.apply(t, ns, wb)
	b.apply(t, ns, wa)
	fa, ea, _, _ := a.e.ContextChanges(ns)
	fb, eb, _, _ := b.e.ContextChanges(ns)
	// Both now hold both calls: the node whose call sorts first sees one
	// new entry, the other sees both from the first (its own is re-listed).
	if fa.Compare(fb) > 0 {
		fa, fb = fb, fa
		ea, eb = eb, ea
	}
	if len(ea) != 2 || len(eb) != 1 || ea[0].Key.Compare(ea[1].Key) >= 0 {
		t.Fatalf("changes: %d from %v and %d from %v", len(ea), fa, len(eb), fb)
	}
}

// TestContextCallForgedByReplica: a ReadOnlyTee replica holds the group key
// but its signed, sealed ContextCall is refused by every peer, and it is
// refused locally before signing.
func TestContextCallForgedByReplica(t *testing.T) {
	a, b, r, ns, rKeys := teeNamespace(t)
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 1)))
	c, _, err := a.e.CreateContext(bg, ns, ns.Root(), ApplicationID{1}, nil, nil, nil)
	ok(t, err)
	a.syncFrom(t, b, ns)
	b.syncFrom(t, a, ns)
	r.syncFrom(t, a, ns)
	if acc, err := r.e.Context(ns, c, false); err != nil || acc.Role != RoleReadOnlyTee {
		t.Fatalf("replica's standing: %+v %v", acc, err)
	}
	if _, _, err := r.e.Call(bg, ns, &ContextCall{Context: c, Method: "set"}, nil); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("replica's local call: %v", err)
	}
	forged := forgeGroupOp(t, r, ns, ns.Root(), &GroupOp{ContextCall: &ContextCall{Context: c, Method: "set",
		Writes: []ContextWrite{{Key: []byte("k"), Value: []byte("forged")}}}})
	for name, n := range map[string]*testNode{"a": a, "b": b} {
		before := digest(t, n.e, ns)
		res := n.apply(t, ns, forged)
		var re *RefusedError
		if res.Refused != 1 || !errors.As(res.FirstRefusal, &re) || re.Reason != ReasonReadOnly {
			t.Fatalf("%s accepted a call forged by the replica: %+v", name, res)
		}
		if digest(t, n.e, ns) != before {
			t.Fatalf("%s: the refused op changed the state", name)
		}
	}
}

// TestContextOpShapes: malformed and oversize context ops are refused by
// check(), before any state is consulted.
func TestContextOpShapes(t *testing.T) {
	w := func(k, v string) ContextWrite { return ContextWrite{Key: []byte(k), Value: []byte(v)} }
	many := make([]ContextWrite, MaxContextWrites+1)
	for i := range many {
		many[i] = ContextWrite{Key: []byte{byte(i >> 8), byte(i)}}
	}
	big := make([]byte, MaxContextValue)
	for name, tc := range map[string]struct {
		op *GroupOp
		ok bool
	}{
		"call":                  {&GroupOp{ContextCall: &ContextCall{Method: "set", Writes: []ContextWrite{w("a", "1"), w("b", "")}}}, true},
		"empty method":          {&GroupOp{ContextCall: &ContextCall{Method: ""}}, false},
		"method with a space":   {&GroupOp{ContextCall: &ContextCall{Method: "se t"}}, false},
		"method too long":       {&GroupOp{ContextCall: &ContextCall{Method: string(make([]byte, MaxContextMethod+1))}}, false},
		"input too large":       {&GroupOp{ContextCall: &ContextCall{Method: "m", Input: make([]byte, MaxContextInput+1)}}, false},
		"writes unsorted":       {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{w("b", "1"), w("a", "1")}}}, false},
		"writes repeated":       {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{w("a", "1"), w("a", "2")}}}, false},
		"empty key":             {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{w("", "1")}}}, false},
		"key too large":         {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{w(string(make([]byte, MaxContextKey+1)), "")}}}, false},
		"value too large":       {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{{Key: []byte("k"), Value: make([]byte, MaxContextValue+1)}}}}, false},
		"writes too large":      {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{{Key: []byte("a"), Value: big}, {Key: []byte("b"), Value: big}, {Key: []byte("c"), Value: big}}}}, false},
		"too many writes":       {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: many}}, false},
		"removal with a value":  {&GroupOp{ContextCall: &ContextCall{Method: "m", Writes: []ContextWrite{{Key: []byte("k"), Value: []byte("v"), Delete: true}}}}, false},
		"create without app":    {&GroupOp{ContextCreated: &ContextCreated{Context: ContextID{1}}}, false},
		"upgrade without app":   {&GroupOp{ContextApplicationUpgraded: &ContextApplicationUpgraded{Context: ContextID{1}}}, false},
		"two variants":          {&GroupOp{ContextDeleted: &ContextDeleted{}, ContextCall: &ContextCall{Method: "m"}}, false},
		"context and member op": {&GroupOp{ContextDeleted: &ContextDeleted{}, MemberRoleSet: &MemberRoleSet{Role: RoleAdmin}}, false},
	} {
		t.Run(name, func(t *testing.T) {
			if err := tc.op.check(); (err == nil) != tc.ok {
				t.Fatalf("check: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
