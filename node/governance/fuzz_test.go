package governance

import (
	"bytes"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
)

// realOps makes a small real history: every op kind this package authors.
func realOps(t testing.TB) (NamespaceID, [][]byte) {
	a, b := newNode(t), newNode(t)
	ns, wires, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	add := func(w [][]byte, err error) {
		ok(t, err)
		wires = append(wires, w...)
	}
	add(a.e.AddMember(bg, ns, ns.Root(), bk, RoleMember, ManageMembers))
	add(a.e.SetMemberRole(bg, ns, ns.Root(), bk.Signing, RoleAdmin))
	add(a.e.SetMemberCapabilities(bg, ns, ns.Root(), bk.Signing, AllCapabilities))
	_, w, err := a.e.CreateGroup(bg, ns, ns.Root())
	add(w, err)
	add(a.e.SetPolicy(bg, ns, attest.DefaultPolicy()))
	c, w, err := a.e.CreateContext(bg, ns, ns.Root(), ApplicationID{1}, []byte("{}"), []ContextWrite{{Key: []byte("k"), Value: []byte("v")}}, nil)
	add(w, err)
	w, _, err = a.e.Call(bg, ns, &ContextCall{Context: c, Method: "set", Input: []byte("{}"),
		Writes: []ContextWrite{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Delete: true}}}, nil)
	add(w, err)
	add(a.e.UpgradeContext(bg, ns, c, ApplicationID{2}))
	add(a.e.DeleteContext(bg, ns, c))
	add(a.e.RemoveMember(bg, ns, ns.Root(), bk.Signing))
	return ns, wires
}

func FuzzDecodeOp(f *testing.F) {
	ns, wires := realOps(f)
	for _, w := range wires {
		f.Add(w)
	}
	f.Fuzz(func(t *testing.T, wire []byte) {
		op, err := decodeOp(wire)
		if err != nil {
			return
		}
		if _, err := Validate(ns, wire); err != nil && op.body.Namespace == ns {
			t.Fatalf("decodeOp accepted what Validate refused: %v", err)
		}
		if !bytes.Equal(op.wire, wire) {
			t.Fatal("decoded op does not keep its wire bytes")
		}
		op.summary()
	})
}

func FuzzDecodeGroupOp(f *testing.F) {
	for _, g := range []*GroupOp{
		{MemberAdded: &MemberAdded{Member: MemberKeys{Signing: PublicKey{1}}, Role: RoleMember, Capabilities: ManageMembers}},
		{MemberRemoved: &MemberRemoved{Member: PublicKey{2}, NewKeyID: KeyID{3}}},
		{MemberRoleSet: &MemberRoleSet{Member: PublicKey{2}, Role: RoleAdmin}},
		{MemberCapabilitiesSet: &MemberCapabilitiesSet{Member: PublicKey{2}, Capabilities: 7}},
		{ContextCreated: &ContextCreated{Context: ContextID{1}, Application: ApplicationID{2}, Init: []byte("{}")}},
		{ContextApplicationUpgraded: &ContextApplicationUpgraded{Context: ContextID{1}, Application: ApplicationID{3}}},
		{ContextDeleted: &ContextDeleted{Context: ContextID{1}}},
		{ContextCall: &ContextCall{Context: ContextID{1}, Method: "set", Input: []byte("x"),
			Writes: []ContextWrite{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Delete: true}}}},
	} {
		f.Add(mustEncode(g))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var op GroupOp
		if err := decodeCanonical(b, &op); err != nil {
			return
		}
		if err := op.check(); err != nil {
			return
		}
		if !bytes.Equal(mustEncode(&op), b) {
			t.Fatal("accepted a non-canonical group op")
		}
		op.kind()
	})
}

// FuzzApply feeds arbitrary bytes to an engine holding a real history: it
// must never panic, and bytes that are not a valid op must leave the state
// as it was.
func FuzzApply(f *testing.F) {
	ns, wires := realOps(f)
	for _, w := range wires {
		f.Add(w)
	}
	n := newNode(f)
	mustT[MemberKeys](f)(n.e.JoinNamespace(ns))
	n.apply(f, ns, wires...)
	f.Fuzz(func(t *testing.T, wire []byte) {
		before := digest(t, n.e, ns)
		res, err := n.e.Apply(bg, ns, [][]byte{wire})
		if err != nil {
			t.Fatal(err)
		}
		if res.Applied == 0 && res.Pending == 0 {
			if after := digest(t, n.e, ns); after != before {
				t.Fatal("state changed by an op that was not applied")
			}
		}
	})
}
