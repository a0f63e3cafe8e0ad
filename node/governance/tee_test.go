package governance

import (
	"errors"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/fleet"
)

// teeNamespace: a admins ns with a policy accepting mock quotes of MRTD{0xaa};
// b is a Member with MANAGE_MEMBERS; r is a candidate replica.
func teeNamespace(t *testing.T) (a, b, r *testNode, ns NamespaceID, rKeys MemberKeys) {
	a, b, r = newNode(t), newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bKeys := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	rKeys = mustT[MemberKeys](t)(r.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bKeys, RoleMember, ManageMembers))
	mustT[[][]byte](t)(a.e.SetPolicy(bg, ns, &attest.Policy{
		AllowedMrtd: []string{attest.MRTD{0xaa}.String()}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true,
	}))
	b.syncFrom(t, a, ns)
	r.syncFrom(t, a, ns)
	return
}

func admission(keys MemberKeys, quote byte) *fleet.Admission {
	return &fleet.Admission{Member: keys.Signing, Agreement: [32]byte(keys.Agreement), QuoteHash: attest.QuoteHash{quote},
		MRTD: attest.MRTD{0xaa}, TcbStatus: attest.TcbMock, Mock: true}
}

func TestTeeAdmission(t *testing.T) {
	a, b, r, ns, rKeys := teeNamespace(t)
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 1)))
	a.syncFrom(t, b, ns)
	r.syncFrom(t, b, ns)
	for name, n := range map[string]*testNode{"a": a, "b": b, "r": r} {
		if got := roleOf(t, n.e, ns, ns.Root(), rKeys.Signing); got != RoleReadOnlyTee {
			t.Fatalf("%s: replica role %v", name, got)
		}
	}
	st := mustT[*TeeStatus](t)(r.e.TeeStatus(ns))
	if !st.Admitted || !st.Member || !st.HasRootKey {
		t.Fatalf("replica status %+v", st)
	}
	// ReadOnlyTee never authors: refused locally before signing.
	if _, err := r.e.AddMember(bg, ns, ns.Root(), MemberKeys{Signing: PublicKey{9}}, RoleMember, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("replica authored: %v", err)
	}
	// Subgroups do not inherit ReadOnlyTee.
	_, wires, err := a.e.CreateGroup(bg, ns, ns.Root())
	ok(t, err)
	_ = wires
	for _, g := range mustT[[]GroupInfo](t)(a.e.Groups(ns)) {
		if g.ID == ns.Root() {
			continue
		}
		if got := roleOf(t, a.e, ns, g.ID, rKeys.Signing); got != 0 {
			t.Fatalf("ReadOnlyTee inherited into subgroup as %v", got)
		}
	}
	v := mustT[*TeeView](t)(a.e.TeeView(ns))
	if !v.IsMember(rKeys.Signing) || !v.QuoteUsed(attest.QuoteHash{1}) || !v.CanManage || v.Policy == nil {
		t.Fatalf("view %+v", v)
	}
}

func TestTeeAdmissionRefusals(t *testing.T) {
	a, b, r, ns, rKeys := teeNamespace(t)
	// r is admitted; another candidate o is the subject of the refusals.
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 1)))
	r.syncFrom(t, b, ns)
	o := newNode(t)
	oKeys := mustT[MemberKeys](t)(o.e.JoinNamespace(ns))
	cases := map[string]struct {
		node *testNode
		adm  *fleet.Admission
		want error
	}{
		"wrong mrtd":             {b, func() *fleet.Admission { x := admission(oKeys, 2); x.MRTD = attest.MRTD{0xbb}; return x }(), ErrNotAuthorized},
		"a ReadOnlyTee verifier": {r, admission(oKeys, 3), ErrReadOnly},
		"mock flag mismatch":     {b, func() *fleet.Admission { x := admission(oKeys, 4); x.Mock = false; return x }(), ErrMalformed},
		"already a member":       {b, admission(rKeys, 6), ErrInvalid},
		"quote already used":     {b, admission(oKeys, 1), ErrInvalid},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := tc.node.e.AdmitTeeMember(bg, ns, tc.adm); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	_ = a
}

// TestTeeRacingVerifiers: a and b admit the same announce concurrently; all
// nodes converge to one membership, the quote recorded once.
func TestTeeRacingVerifiers(t *testing.T) {
	a, b, r, ns, rKeys := teeNamespace(t)
	mustT[[][]byte](t)(a.e.AdmitTeeMember(bg, ns, admission(rKeys, 7)))
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 7)))
	a.syncFrom(t, b, ns)
	b.syncFrom(t, a, ns)
	r.syncFrom(t, a, ns)
	if d1, d2, d3 := digest(t, a.e, ns), digest(t, b.e, ns), digest(t, r.e, ns); d1 != d2 || d2 != d3 {
		t.Fatalf("nodes differ:\n%s\n%s\n%s", d1, d2, d3)
	}
	n := 0
	for _, m := range mustT[[]MemberInfo](t)(a.e.Members(ns, ns.Root())) {
		if m.Member == rKeys.Signing {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d memberships", n)
	}
}

// TestTeeQuoteNeverReadmits: after eviction the same quote hash cannot admit
// again, even with a fresh identity.
func TestTeeQuoteNeverReadmits(t *testing.T) {
	a, b, _, ns, rKeys := teeNamespace(t)
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 5)))
	a.syncFrom(t, b, ns)
	mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), rKeys.Signing))
	b.syncFrom(t, a, ns)
	if v := mustT[*TeeView](t)(b.e.TeeView(ns)); v.IsMember(rKeys.Signing) || !v.QuoteUsed(attest.QuoteHash{5}) {
		t.Fatal("removal lost the quote record or kept the member")
	}
	other := newNode(t)
	oKeys := mustT[MemberKeys](t)(other.e.JoinNamespace(ns))
	if _, err := b.e.AdmitTeeMember(bg, ns, admission(oKeys, 5)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("replayed quote admitted: %v", err)
	}
}

// TestTeeForgedByReplicaRefusedRemotely: a ReadOnlyTee replica that skips
// its own local check and signs an admission anyway is refused by peers.
func TestTeeForgedByReplicaRefusedRemotely(t *testing.T) {
	a, b, r, ns, rKeys := teeNamespace(t)
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 1)))
	a.syncFrom(t, b, ns)
	r.syncFrom(t, b, ns)
	before := digest(t, a.e, ns)

	sp := mustT[*space](t)(r.e.space(ns))
	sp.mu.Lock()
	body := &opBody{Namespace: ns, Parents: sp.heads(), Signer: rKeys.Signing, Nonce: sp.d.maxNonce[rKeys.Signing] + 1,
		Root: &RootOp{MemberJoinedViaTeeAttestation: &MemberJoinedViaTeeAttestation{
			Member: MemberKeys{Signing: PublicKey{0x77}}, QuoteHash: attest.QuoteHash{9}, MRTD: attest.MRTD{0xaa},
			TcbStatus: string(attest.TcbMock), Mock: true, Role: RoleReadOnlyTee}}}
	op, err := signOp(body, sp.id.signing)
	sp.mu.Unlock()
	ok(t, err)
	res := a.apply(t, ns, op.wire)
	var re *RefusedError
	if res.Refused != 1 || !errors.As(res.FirstRefusal, &re) || re.Reason != ReasonReadOnly {
		t.Fatalf("forged admission by a replica: %+v", res)
	}
	if after := digest(t, a.e, ns); after != before {
		t.Fatal("refused op changed the state")
	}
}

// TestTeeReplicasUnderChangedPolicy: a policy tightened after admission
// removes no one by itself; Replicas names the replica it no longer covers
// and why, and still lists it after an admin removed it.
func TestTeeReplicasUnderChangedPolicy(t *testing.T) {
	a, b, _, ns, rKeys := teeNamespace(t)
	mustT[[][]byte](t)(b.e.AdmitTeeMember(bg, ns, admission(rKeys, 1)))
	a.syncFrom(t, b, ns)
	reps := mustT[[]Replica](t)(a.e.Replicas(ns))
	if len(reps) != 1 || !reps[0].Member || reps[0].PolicyErr != nil || reps[0].Admission.Member != rKeys.Signing {
		t.Fatalf("after admission: %+v", reps)
	}

	mustT[[][]byte](t)(a.e.SetPolicy(bg, ns, &attest.Policy{
		AllowedMrtd: []string{attest.MRTD{0xbb}.String()}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true,
	}))
	b.syncFrom(t, a, ns)
	for name, n := range map[string]*testNode{"a": a, "b": b} {
		reps := mustT[[]Replica](t)(n.e.Replicas(ns))
		if len(reps) != 1 || !reps[0].Member {
			t.Fatalf("%s: the policy change removed the replica: %+v", name, reps)
		}
		if got := fleet.Reasons(reps[0].PolicyErr); len(got) != 1 || got[0] != fleet.Reason(attest.ReasonMrtdNotAllowed) {
			t.Fatalf("%s: reasons %v (%v), want mrtd_not_allowed", name, got, reps[0].PolicyErr)
		}
	}

	mustT[[][]byte](t)(a.e.RemoveMember(bg, ns, ns.Root(), rKeys.Signing))
	reps = mustT[[]Replica](t)(a.e.Replicas(ns))
	if len(reps) != 1 || reps[0].Member {
		t.Fatalf("after removal: %+v", reps)
	}
}
