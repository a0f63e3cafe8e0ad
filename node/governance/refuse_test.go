package governance

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// craft signs an op as n's namespace identity with parents = n's heads and
// the next nonce; mutate may change anything before signing.
func craft(t testing.TB, n *testNode, ns NamespaceID, mutate func(b *opBody)) []byte {
	t.Helper()
	sp, err := n.e.space(ns)
	ok(t, err)
	sp.mu.Lock()
	me := sp.id.public().Signing
	b := &opBody{Namespace: ns, Parents: sp.heads(), Signer: me, Nonce: sp.d.maxNonce[me] + 1}
	priv := sp.id.signing
	sp.mu.Unlock()
	b.Root = &RootOp{GroupCreated: &GroupCreated{Group: groupID(ns, me, b.Nonce), Parent: ns.Root(), KeyID: KeyID{1}}}
	if mutate != nil {
		mutate(b)
	}
	// Sign without signOp's shape check, so malformed ops can be made.
	bb := mustEncode(b)
	msg := append([]byte(signDomain), bb...)
	return mustEncode(&signedOpWire{Body: bb, Sig: ed25519.Sign(priv, msg)})
}

func TestRefusals(t *testing.T) {
	a, ro, outsider := newNode(t), newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	rk := mustT[MemberKeys](t)(ro.e.JoinNamespace(ns))
	mustT[MemberKeys](t)(outsider.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), rk, RoleReadOnly, AllCapabilities))
	ro.syncFrom(t, a, ns)
	outsider.syncFrom(t, a, ns)
	// A valid op from a, applied everywhere, to replay and to reuse a nonce.
	valid := mustT[[][]byte](t)(a.e.SetMemberCapabilities(bg, ns, ns.Root(), rk.Signing, CanCreateContext))[0]

	forged := bytes.Clone(craft(t, a, ns, nil))
	forged[len(forged)-1] ^= 1

	nonCanonical := func() []byte {
		w := craft(t, a, ns, nil)
		var sw signedOpWire
		ok(t, decodeCanonical(w, &sw))
		// Map keys out of order: {2: sig, 1: body}.
		var buf bytes.Buffer
		buf.WriteByte(0xa2)
		buf.WriteByte(0x02)
		buf.Write(mustEncode(sw.Sig))
		buf.WriteByte(0x01)
		buf.Write(mustEncode(sw.Body))
		return buf.Bytes()
	}()
	longForm := func() []byte {
		w := craft(t, a, ns, nil)
		// Key 1 as a one-byte-argument uint (0x18 0x01) instead of 0x01.
		return append([]byte{0xa2, 0x18}, w[1:]...)
	}()
	dupKey := func() []byte {
		var sw signedOpWire
		ok(t, decodeCanonical(craft(t, a, ns, nil), &sw))
		var buf bytes.Buffer
		buf.WriteByte(0xa3)
		buf.WriteByte(0x01)
		buf.Write(mustEncode(sw.Body))
		buf.WriteByte(0x01)
		buf.Write(mustEncode(sw.Body))
		buf.WriteByte(0x02)
		buf.Write(mustEncode(sw.Sig))
		return buf.Bytes()
	}()
	tagged := append([]byte{0xc0}, craft(t, a, ns, nil)...)
	indefinite := func() []byte {
		w := craft(t, a, ns, nil)
		return append(append([]byte{0xbf}, w[1:]...), 0xff)
	}()

	tests := map[string]struct {
		wire   []byte
		reason Reason
		err    error
	}{
		"forged signature": {forged, ReasonSignature, ErrSignature},
		"reused nonce": {craft(t, a, ns, func(b *opBody) {
			prev := mustT[*decodedOp](t)(decodeOp(valid))
			b.Nonce = prev.body.Nonce
			b.Root.GroupCreated.Group = groupID(ns, b.Signer, b.Nonce)
		}), ReasonNonce, ErrNonce},
		"lower nonce": {craft(t, a, ns, func(b *opBody) {
			b.Nonce = 1
			b.Root.GroupCreated.Group = groupID(ns, b.Signer, b.Nonce)
		}), ReasonNonce, ErrNonce},
		"non-member signer":     {craft(t, outsider, ns, nil), ReasonNotMember, ErrNotMember},
		"read-only signer":      {craft(t, ro, ns, nil), ReasonReadOnly, ErrReadOnly},
		"wrong group id":        {craft(t, a, ns, func(b *opBody) { b.Root.GroupCreated.Group = GroupID{1} }), ReasonInvalid, ErrInvalid},
		"unknown parent group":  {craft(t, a, ns, func(b *opBody) { b.Root.GroupCreated.Parent = GroupID{1} }), ReasonInvalid, ErrInvalid},
		"other namespace":       {craft(t, a, ns, func(b *opBody) { b.Namespace = NamespaceID{1} }), ReasonNamespace, ErrMalformed},
		"oversize":              {make([]byte, MaxOpSize+1), ReasonOversize, ErrOversize},
		"garbage":               {[]byte("not cbor at all"), ReasonMalformed, ErrMalformed},
		"empty":                 {nil, ReasonMalformed, ErrMalformed},
		"non-canonical order":   {nonCanonical, ReasonMalformed, ErrMalformed},
		"non-canonical integer": {longForm, ReasonMalformed, ErrMalformed},
		"duplicate map key":     {dupKey, ReasonMalformed, ErrMalformed},
		"tag":                   {tagged, ReasonMalformed, ErrMalformed},
		"indefinite length":     {indefinite, ReasonMalformed, ErrMalformed},
		"two variants": {craft(t, a, ns, func(b *opBody) {
			b.Group = &SealedGroupOp{Ciphertext: []byte{1}}
		}), ReasonMalformed, ErrMalformed},
		"genesis with parents": {craft(t, a, ns, func(b *opBody) {
			b.Root = &RootOp{NamespaceCreated: &NamespaceCreated{}}
		}), ReasonMalformed, ErrMalformed},
		"parentless non-genesis": {craft(t, a, ns, func(b *opBody) { b.Parents = nil }), ReasonMalformed, ErrMalformed},
		"second genesis": {craft(t, a, ns, func(b *opBody) {
			b.Parents = nil
			b.Root = &RootOp{NamespaceCreated: &NamespaceCreated{}}
		}), ReasonInvalid, ErrInvalid},
	}
	for _, n := range []*testNode{a, ro} {
		n.apply(t, ns, valid)
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := digest(t, a.e, ns)
			count := testutil.ToFloat64(a.e.m.refused.WithLabelValues(string(tc.reason)))
			res := a.apply(t, ns, tc.wire)
			if res.Refused != 1 || res.Applied != 0 {
				t.Fatalf("result %+v", res)
			}
			var re *RefusedError
			if !errors.As(res.FirstRefusal, &re) || re.Reason != tc.reason || !errors.Is(res.FirstRefusal, tc.err) {
				t.Fatalf("refusal %v, want reason %s and %v", res.FirstRefusal, tc.reason, tc.err)
			}
			if after := digest(t, a.e, ns); after != before {
				t.Fatalf("state changed:\n%s\nvs\n%s", before, after)
			}
			if got := testutil.ToFloat64(a.e.m.refused.WithLabelValues(string(tc.reason))); got != count+1 {
				t.Fatalf("refused{%s} went %v -> %v", tc.reason, count, got)
			}
		})
	}
	t.Run("replayed op", func(t *testing.T) {
		before := digest(t, a.e, ns)
		res := a.apply(t, ns, valid, valid)
		if res.Duplicate != 2 || res.Applied != 0 || res.Refused != 0 {
			t.Fatalf("replay: %+v", res)
		}
		if after := digest(t, a.e, ns); after != before {
			t.Fatal("replay changed state")
		}
	})
	t.Run("descendant of a refused op", func(t *testing.T) {
		bad := craft(t, outsider, ns, nil)
		a.apply(t, ns, bad)
		child := craft(t, outsider, ns, func(b *opBody) {
			b.Parents = []OpID{mustT[*decodedOp](t)(decodeOp(bad)).id}
			b.Nonce++
			b.Root.GroupCreated.Group = groupID(ns, b.Signer, b.Nonce)
		})
		res := a.apply(t, ns, child)
		var re *RefusedError
		if res.Refused != 1 || !errors.As(res.FirstRefusal, &re) || re.Reason != ReasonParent {
			t.Fatalf("child of refused op: %+v", res)
		}
	})
	t.Run("validate", func(t *testing.T) {
		if _, err := Validate(ns, valid); err != nil {
			t.Fatalf("Validate(valid) = %v", err)
		}
		if _, err := Validate(ns, forged); !errors.Is(err, ErrSignature) {
			t.Fatalf("Validate(forged) = %v", err)
		}
		if _, err := Validate(NamespaceID{1}, valid); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Validate(other namespace) = %v", err)
		}
	})
	t.Run("sealed op under a foreign key", func(t *testing.T) {
		// A member seals a group op under a key the group never had.
		before := digest(t, a.e, ns)
		var k groupKey
		k[0] = 42
		w := craft(t, a, ns, func(b *opBody) {
			b.Root = nil
			b.Group = &SealedGroupOp{Group: ns.Root()}
			ok(t, sealGroupOp(b, &k, &GroupOp{MemberRoleSet: &MemberRoleSet{Member: rk.Signing, Role: RoleAdmin}}, bytesReader(7)))
		})
		a.e.spaces[ns].d.keys[k.id()] = k // even a node holding it refuses
		res := a.apply(t, ns, w)
		delete(a.e.spaces[ns].d.keys, k.id())
		if res.Refused != 1 || !errors.Is(res.FirstRefusal, ErrInvalid) {
			t.Fatalf("foreign key: %+v", res)
		}
		if after := digest(t, a.e, ns); after != before {
			t.Fatal("state changed")
		}
	})
}

type bytesReader byte

func (b bytesReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// TestNonceOfInertOpIsSpent: an op that lost a conflict (no effect in the
// total order) still uses up its signer's nonce.
func TestNonceOfInertOpIsSpent(t *testing.T) {
	a, b := newNode(t), newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	bk := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), bk, RoleAdmin, 0))
	b.syncFrom(t, a, ns)
	// Concurrently: a demotes b; b authors two ops, the second one higher
	// than the demotion, so it sorts after it and has no effect.
	mustT[[][]byte](t)(a.e.SetMemberRole(bg, ns, ns.Root(), bk.Signing, RoleReadOnly))
	mustT[[][]byte](t)(b.e.SetMemberCapabilities(bg, ns, ns.Root(), bk.Signing, 1))
	x := mustT[[][]byte](t)(b.e.SetMemberCapabilities(bg, ns, ns.Root(), bk.Signing, 2))[0]
	a.syncFrom(t, b, ns)
	xid := mustT[*decodedOp](t)(decodeOp(x)).id
	if eff := a.e.spaces[ns].d.nodes[xid].effect; eff == nil || eff.Reason != ReasonReadOnly {
		t.Fatalf("b's second op: effect %v, want read_only", eff)
	}
	mustT[[][]byte](t)(a.e.SetMemberRole(bg, ns, ns.Root(), bk.Signing, RoleAdmin))
	b.syncFrom(t, a, ns)
	reuse := craft(t, b, ns, func(body *opBody) {
		body.Nonce = mustT[*decodedOp](t)(decodeOp(x)).body.Nonce
		body.Root.GroupCreated.Group = groupID(ns, body.Signer, body.Nonce)
	})
	before := digest(t, a.e, ns)
	res := a.apply(t, ns, reuse)
	if res.Refused != 1 || !errors.Is(res.FirstRefusal, ErrNonce) {
		t.Fatalf("nonce of an inert op reused: %+v", res)
	}
	if digest(t, a.e, ns) != before {
		t.Fatal("state changed")
	}
}
