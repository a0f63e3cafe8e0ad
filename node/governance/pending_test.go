package governance

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"testing"
	"time"
)

// orphan signs a cleartext op of ns with sk whose parent does not exist:
// what anyone who can reach the topic can make, at no cost.
func orphan(t testing.TB, ns NamespaceID, sk ed25519.PrivateKey, nonce uint64, pad int) []byte {
	t.Helper()
	var signer PublicKey
	copy(signer[:], sk.Public().(ed25519.PublicKey))
	parent := OpID(sha256.Sum256(append(signer[:], byte(nonce), byte(nonce>>8), byte(nonce>>16))))
	g := GroupID(sha256.Sum256(parent[:]))
	body := &opBody{Namespace: ns, Parents: []OpID{parent}, Signer: signer, Nonce: nonce,
		Root: &RootOp{GroupCreated: &GroupCreated{Group: g, Parent: ns.Root(), KeyID: KeyID{1}}}}
	if pad > 0 {
		// A KeyDelivery of pad/96 keys: 64 bytes of reference and 32 of box
		// each.
		var refs []KeyRef
		for i := range max(1, min(pad/96, MaxKeyRefs)) {
			refs = append(refs, KeyRef{Group: ns.Root(), KeyID: KeyID{byte(i), byte(i >> 8)}})
		}
		body.Root = &RootOp{KeyDelivery: &KeyDelivery{Recipient: signer, Keys: refs, Box: make([]byte, len(refs)*32+16)}}
	}
	op, err := signOp(body, sk)
	ok(t, err)
	if _, err := Validate(ns, op.wire); err != nil {
		t.Fatalf("orphan op does not pass the stateless checks: %v", err)
	}
	return op.wire
}

func signerKey(i int) ed25519.PrivateKey {
	var seed [32]byte
	seed[0], seed[1] = byte(i), byte(i>>8)
	return ed25519.NewKeyFromSeed(seed[:])
}

func reasonOf(err error) Reason {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// The pending queue is bounded per signer, per sending peer, for outsiders
// together, in bytes, and in age; its refusals are local (not the op's
// fault). Before, anyone could fill all 16,384 slots with free orphan ops,
// kept decoded, and the queue said only pending_full.
func TestPendingQueueLimits(t *testing.T) {
	setup := func(t *testing.T, mod func(*Config)) (*testNode, NamespaceID) {
		a := newNode(t)
		ns, _, err := a.e.CreateNamespace(bg)
		ok(t, err)
		cfg := Config{Store: a.st, Pending: PendingLimits{MaxPending: 400, MaxPendingBytes: 1 << 20, MaxPendingPerSigner: 10, MaxPendingPerOrigin: 40}}
		if mod != nil {
			mod(&cfg)
		}
		e, err := New(cfg)
		ok(t, err)
		a.e = e
		return a, ns
	}
	t.Run("per signer", func(t *testing.T) {
		a, ns := setup(t, nil)
		sk := signerKey(1)
		var wires [][]byte
		for i := range 15 {
			wires = append(wires, orphan(t, ns, sk, uint64(i+1), 0))
		}
		res := a.apply(t, ns, wires...)
		if res.Pending != 10 || res.Refused != 5 || res.LocalRefused != 5 || reasonOf(res.FirstRefusal) != ReasonPendingQuota {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("per origin", func(t *testing.T) {
		a, ns := setup(t, nil)
		var wires [][]byte
		for i := range 50 {
			wires = append(wires, orphan(t, ns, signerKey(i), 1, 0))
		}
		res, err := a.e.Apply(WithOrigin(context.Background(), "peerX"), ns, wires)
		ok(t, err)
		if res.Pending != 40 || res.LocalRefused != 10 || reasonOf(res.FirstRefusal) != ReasonPendingQuota {
			t.Fatalf("%+v", res)
		}
		// Another peer still has its quota.
		res, err = a.e.Apply(WithOrigin(context.Background(), "peerY"), ns, [][]byte{orphan(t, ns, signerKey(100), 1, 0)})
		ok(t, err)
		if res.Pending != 1 {
			t.Fatalf("another origin: %+v", res)
		}
	})
	t.Run("outsiders share a quarter; members keep room", func(t *testing.T) {
		a, ns := setup(t, func(c *Config) { c.Pending.MaxPendingPerSigner = 1000; c.Pending.MaxPendingPerOrigin = 1000 })
		var wires [][]byte
		for i := range 150 {
			wires = append(wires, orphan(t, ns, signerKey(i), 1, 0))
		}
		res := a.apply(t, ns, wires...)
		if res.Pending != 100 || res.LocalRefused != 50 || reasonOf(res.FirstRefusal) != ReasonPendingFull {
			t.Fatalf("outsiders: %+v", res)
		}
		// The namespace's creator is a member: its orphan still waits.
		res = a.apply(t, ns, orphan(t, ns, a.e.spaces[ns].id.signing, 99, 0))
		if res.Pending != 1 {
			t.Fatalf("member: %+v", res)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		a, ns := setup(t, func(c *Config) { c.Pending.MaxPendingPerOrigin = 1000 })
		var wires [][]byte
		for i := range 20 {
			wires = append(wires, orphan(t, ns, signerKey(i), 1, 30000)) // about 30 KB each
		}
		res := a.apply(t, ns, wires...)
		ops, bytes, err := a.e.PendingUse(ns)
		ok(t, err)
		if bytes > (1<<20)/outsiderShare || ops != res.Pending || res.Pending >= 10 || res.LocalRefused == 0 {
			t.Fatalf("%+v; %d ops, %d bytes pending", res, ops, bytes)
		}
	})
	t.Run("age", func(t *testing.T) {
		now := time.Unix(1e9, 0)
		a, ns := setup(t, func(c *Config) { c.Now = func() time.Time { return now } })
		a.apply(t, ns, orphan(t, ns, signerKey(1), 1, 0), orphan(t, ns, signerKey(2), 1, 0))
		now = now.Add(DefaultMaxPendingAge - time.Second)
		a.apply(t, ns, orphan(t, ns, signerKey(3), 1, 0))
		now = now.Add(2 * time.Second)
		a.apply(t, ns) // any call sweeps
		if ops, _, _ := a.e.PendingUse(ns); ops != 1 {
			t.Fatalf("%d pending after the first two aged out, want 1", ops)
		}
		// Their signers' quota came back.
		if res := a.apply(t, ns, orphan(t, ns, signerKey(1), 2, 0)); res.Pending != 1 {
			t.Fatalf("%+v", res)
		}
	})
}

// A pending op is kept as its wire bytes and applies in full once its
// parents come.
func TestPendingOpAppliesLater(t *testing.T) {
	a := newNode(t)
	ns, _, err := a.e.CreateNamespace(bg)
	ok(t, err)
	b := newNode(t)
	k := mustT[MemberKeys](t)(b.e.JoinNamespace(ns))
	wires := mustT[[][]byte](t)(a.e.AddMember(bg, ns, ns.Root(), k, RoleMember, 0))
	res := b.apply(t, ns, wires...)
	if res.Pending != len(wires) {
		t.Fatalf("%+v", res)
	}
	b.syncFrom(t, a, ns)
	if ops, by, _ := b.e.PendingUse(ns); ops != 0 || by != 0 {
		t.Fatalf("%d ops, %d bytes still pending", ops, by)
	}
}
