package governance

import (
	"crypto/rand"
	"errors"
	"sync"
	"testing"
)

func TestKeyDeliveryCrypto(t *testing.T) {
	ns := NamespaceID{1}
	sender := mustT[*identity](t)(newIdentity(rand.Reader))
	recipient := mustT[*identity](t)(newIdentity(rand.Reader))
	eve := mustT[*identity](t)(newIdentity(rand.Reader))
	k1 := mustT[groupKey](t)(newGroupKey(rand.Reader))
	k2 := mustT[groupKey](t)(newGroupKey(rand.Reader))
	refs := []KeyRef{{Group: GroupID{1}, KeyID: k1.id()}, {Group: GroupID{2}, KeyID: k2.id()}}
	kd := mustT[*KeyDelivery](t)(wrapKeys(ns, sender, recipient.public(), refs, []groupKey{k1, k2}, rand.Reader))
	from := sender.public().Signing

	got, err := unwrapKeys(ns, from, kd, recipient)
	ok(t, err)
	if len(got) != 2 || got[0] != k1 || got[1] != k2 {
		t.Fatal("unwrapped keys differ")
	}
	tests := map[string]func() (*KeyDelivery, NamespaceID, PublicKey, *identity){
		"other recipient": func() (*KeyDelivery, NamespaceID, PublicKey, *identity) { return kd, ns, from, eve },
		"other namespace": func() (*KeyDelivery, NamespaceID, PublicKey, *identity) {
			return kd, NamespaceID{2}, from, recipient
		},
		"other sender": func() (*KeyDelivery, NamespaceID, PublicKey, *identity) {
			return kd, ns, eve.public().Signing, recipient
		},
		"tampered box": func() (*KeyDelivery, NamespaceID, PublicKey, *identity) {
			c := *kd
			c.Box = append([]byte{}, kd.Box...)
			c.Box[0] ^= 1
			return &c, ns, from, recipient
		},
		"swapped key refs": func() (*KeyDelivery, NamespaceID, PublicKey, *identity) {
			c := *kd
			c.Keys = []KeyRef{refs[1], refs[0]}
			return &c, ns, from, recipient
		},
		"sender agreement key replaced": func() (*KeyDelivery, NamespaceID, PublicKey, *identity) {
			c := *kd
			c.SenderAgreement = eve.public().Agreement
			return &c, ns, from, recipient
		},
	}
	for name, mk := range tests {
		t.Run(name, func(t *testing.T) {
			kd, ns, from, me := mk()
			if _, err := unwrapKeys(ns, from, kd, me); err == nil {
				t.Fatal("opened")
			}
		})
	}
	// A key announced under the wrong id is refused even if the box opens.
	bad := mustT[*KeyDelivery](t)(wrapKeys(ns, sender, recipient.public(), []KeyRef{{KeyID: k2.id()}}, []groupKey{k1}, rand.Reader))
	if _, err := unwrapKeys(ns, from, bad, recipient); err == nil {
		t.Fatal("accepted a key that does not match its key id")
	}
}

func TestGroupOpSealing(t *testing.T) {
	k := mustT[groupKey](t)(newGroupKey(rand.Reader))
	b := &opBody{Namespace: NamespaceID{1}, Parents: []OpID{{2}}, Signer: PublicKey{3}, Nonce: 4,
		Group: &SealedGroupOp{Group: GroupID{5}}}
	op := &GroupOp{MemberRoleSet: &MemberRoleSet{Member: PublicKey{6}, Role: RoleAdmin}}
	ok(t, sealGroupOp(b, &k, op, rand.Reader))
	got := mustT[*GroupOp](t)(openGroupOp(b, &k))
	if got.MemberRoleSet == nil || got.MemberRoleSet.Role != RoleAdmin {
		t.Fatal("round trip")
	}
	// The header is the AAD: moving the ciphertext to another op fails.
	moved := *b
	moved.Nonce = 5
	if _, err := openGroupOp(&moved, &k); !errors.Is(err, ErrMalformed) {
		t.Fatalf("ciphertext moved to another op: %v", err)
	}
	other := mustT[groupKey](t)(newGroupKey(rand.Reader))
	if _, err := openGroupOp(b, &other); err == nil {
		t.Fatal("opened under another key")
	}
}

// TestConcurrentUse drives one engine from several goroutines (run with
// -race): authoring, applying another node's ops, and queries.
func TestConcurrentUse(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ns, genesis, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	w := mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bk, RoleAdmin, 0))
	b.apply(t, ns, append(genesis, w...)...)
	var bOps [][]byte
	for i := range 20 {
		bOps = append(bOps, mustT[[][]byte](t)(b.e.SetMemberCapabilities(bg, ns, ns.Root(), bk.Signing, Capabilities(i)))...)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 20 {
			if _, err := a.e.AddMember(bg, ns, ns.Root(), MemberKeys{Signing: PublicKey{byte(i), 9}, Agreement: bk.Agreement}, RoleMember, 0); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Go(func() {
		for _, op := range bOps {
			if _, err := a.e.Apply(bg, ns, [][]byte{op}); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Go(func() {
		for range 50 {
			a.e.Namespace(ns)
			a.e.Members(ns, ns.Root())
			a.e.Locator(ns, 16)
			a.e.OpsMissing(ns, nil, func([]byte) error { return nil })
		}
	})
	wg.Wait()
	b.syncFrom(t, a, ns)
	if d1, d2 := digest(t, a.e, ns), digest(t, b.e, ns); d1 != d2 {
		t.Fatalf("diverged after concurrent use:\n%s\nvs\n%s", d1, d2)
	}
}

func TestLowOrderAgreementKey(t *testing.T) {
	a := newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	// The all-zero point has order 1 (RFC 7748 section 6.1).
	if _, err := a.e.AddMember(bg, ns, ns.Root(), MemberKeys{Signing: PublicKey{1}}, RoleMember, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("AddMember with a low-order agreement key: %v", err)
	}
}
