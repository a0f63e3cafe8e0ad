package governance

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
)

// Domain-separation labels. Each derivation and hash has its own.
const (
	labelNamespaceID = "fleetbox/v1/namespace-id"
	labelGroupID     = "fleetbox/v1/group-id"
	labelKeyID       = "fleetbox/v1/group-key-id"
	labelGroupOpAAD  = "fleetbox/v1/group-op"
	labelKeyDelivery = "fleetbox/v1/key-delivery"
)

// groupKey is one group encryption key (a GroupKeyring entry).
type groupKey [32]byte

func (k *groupKey) id() KeyID {
	h := sha256.New()
	h.Write([]byte(labelKeyID))
	h.Write(k[:])
	return KeyID(h.Sum(nil))
}

func newGroupKey(r io.Reader) (groupKey, error) {
	var k groupKey
	if _, err := io.ReadFull(r, k[:]); err != nil {
		return k, fmt.Errorf("generating a group key: %w", err)
	}
	return k, nil
}

// identity is a NamespaceIdentity: Ed25519 for signing, X25519 for key
// delivery. Both are secrets; only Public leaves this package.
type identity struct {
	signing   ed25519.PrivateKey
	agreement *ecdh.PrivateKey
}

// identityRecord is how an identity is stored (Identity column).
type identityRecord struct {
	Seed      []byte `cbor:"1,keyasint"` // Ed25519 seed
	Agreement []byte `cbor:"2,keyasint"` // X25519 private key
}

func newIdentity(r io.Reader) (*identity, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(r, seed); err != nil {
		return nil, fmt.Errorf("generating a namespace identity: %w", err)
	}
	x := make([]byte, 32)
	if _, err := io.ReadFull(r, x); err != nil {
		return nil, fmt.Errorf("generating a namespace identity: %w", err)
	}
	return identityFromRecord(&identityRecord{Seed: seed, Agreement: x})
}

func identityFromRecord(rec *identityRecord) (*identity, error) {
	if len(rec.Seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("namespace identity: bad seed length")
	}
	x, err := ecdh.X25519().NewPrivateKey(rec.Agreement)
	if err != nil {
		return nil, fmt.Errorf("namespace identity: %w", err)
	}
	return &identity{signing: ed25519.NewKeyFromSeed(rec.Seed), agreement: x}, nil
}

func (id *identity) record() *identityRecord {
	return &identityRecord{Seed: id.signing.Seed(), Agreement: id.agreement.Bytes()}
}

func (id *identity) public() MemberKeys {
	var m MemberKeys
	copy(m.Signing[:], id.signing.Public().(ed25519.PublicKey))
	copy(m.Agreement[:], id.agreement.PublicKey().Bytes())
	return m
}

func namespaceID(creator PublicKey, salt [32]byte) NamespaceID {
	h := sha256.New()
	h.Write([]byte(labelNamespaceID))
	h.Write(creator[:])
	h.Write(salt[:])
	return NamespaceID(h.Sum(nil))
}

func groupID(ns NamespaceID, signer PublicKey, nonce uint64) GroupID {
	return GroupID(opDerivedID(labelGroupID, ns, signer, nonce))
}

// opDerivedID is SHA-256(label || namespace || signer || nonce): the id of
// something an op creates (a group, a context), unique per signer and op.
func opDerivedID(label string, ns NamespaceID, signer PublicKey, nonce uint64) [32]byte {
	h := sha256.New()
	h.Write([]byte(label))
	h.Write(ns[:])
	h.Write(signer[:])
	h.Write(binary.BigEndian.AppendUint64(nil, nonce))
	var id [32]byte
	h.Sum(id[:0])
	return id
}

// groupOpHeader is the AAD of a sealed group op: everything in the op body
// but the ciphertext, so a ciphertext cannot be lifted into another op.
type groupOpHeader struct {
	Label     string      `cbor:"1,keyasint"`
	Namespace NamespaceID `cbor:"2,keyasint"`
	Parents   []OpID      `cbor:"3,keyasint"`
	Signer    PublicKey   `cbor:"4,keyasint"`
	Nonce     uint64      `cbor:"5,keyasint"`
	Group     GroupID     `cbor:"6,keyasint"`
	KeyID     KeyID       `cbor:"7,keyasint"`
}

func groupOpAAD(b *opBody) []byte {
	return mustEncode(&groupOpHeader{Label: labelGroupOpAAD, Namespace: b.Namespace, Parents: b.Parents,
		Signer: b.Signer, Nonce: b.Nonce, Group: b.Group.Group, KeyID: b.Group.KeyID})
}

// sealGroupOp fills b.Group.Ciphertext. b.Parents must already be sorted.
func sealGroupOp(b *opBody, key *groupKey, op *GroupOp, r io.Reader) error {
	if _, err := io.ReadFull(r, b.Group.Nonce[:]); err != nil {
		return fmt.Errorf("sealing group op: %w", err)
	}
	aead, _ := chacha20poly1305.NewX(key[:])
	b.Group.KeyID = key.id()
	b.Group.Ciphertext = aead.Seal(nil, b.Group.Nonce[:], mustEncode(op), groupOpAAD(b))
	return nil
}

// openGroupOp decrypts and strictly decodes a sealed group op.
func openGroupOp(b *opBody, key *groupKey) (*GroupOp, error) {
	aead, _ := chacha20poly1305.NewX(key[:])
	pt, err := aead.Open(nil, b.Group.Nonce[:], b.Group.Ciphertext, groupOpAAD(b))
	if err != nil {
		return nil, fmt.Errorf("%w: group op does not decrypt under key %s", ErrMalformed, b.Group.KeyID)
	}
	var op GroupOp
	if err := decodeCanonical(pt, &op); err != nil {
		return nil, fmt.Errorf("decoding group op: %w", err)
	}
	if err := op.check(); err != nil {
		return nil, err
	}
	return &op, nil
}

type keyDeliveryHeader struct {
	Label     string      `cbor:"1,keyasint"`
	Namespace NamespaceID `cbor:"2,keyasint"`
	Sender    PublicKey   `cbor:"3,keyasint"`
	Recipient PublicKey   `cbor:"4,keyasint"`
	Keys      []KeyRef    `cbor:"5,keyasint"`
}

// deliveryKey derives the wrapping key: HKDF-SHA256 (RFC 5869) over the
// X25519 shared secret, info binding the label, namespace and both parties'
// signing and agreement keys.
func deliveryKey(shared []byte, ns NamespaceID, sender, recipient PublicKey, senderAg, recipientAg AgreementKey) ([]byte, error) {
	info := make([]byte, 0, len(labelKeyDelivery)+32*5)
	info = append(info, labelKeyDelivery...)
	info = append(info, ns[:]...)
	info = append(info, sender[:]...)
	info = append(info, recipient[:]...)
	info = append(info, senderAg[:]...)
	info = append(info, recipientAg[:]...)
	return hkdf.Key(sha256.New, shared, nil, string(info), chacha20poly1305.KeySize)
}

// usableAgreementKey reports whether an X25519 key can receive a
// KeyDelivery: low-order points (RFC 7748 section 6.1) give an all-zero
// shared secret, which crypto/ecdh refuses.
func usableAgreementKey(me *identity, k AgreementKey) error {
	peer, err := ecdh.X25519().NewPublicKey(k[:])
	if err == nil {
		var shared []byte
		shared, err = me.agreement.ECDH(peer)
		wipe(shared)
	}
	if err != nil {
		return fmt.Errorf("%w: agreement key %s cannot receive group keys: %v", ErrInvalid, k, err)
	}
	return nil
}

// wrapKeys builds a KeyDelivery of keys for recipient.
func wrapKeys(ns NamespaceID, sender *identity, recipient MemberKeys, refs []KeyRef, keys []groupKey, r io.Reader) (*KeyDelivery, error) {
	peer, err := ecdh.X25519().NewPublicKey(recipient.Agreement[:])
	if err != nil {
		return nil, fmt.Errorf("key delivery: recipient agreement key: %w", err)
	}
	shared, err := sender.agreement.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("key delivery: %w", err)
	}
	me := sender.public()
	k, err := deliveryKey(shared, ns, me.Signing, recipient.Signing, me.Agreement, recipient.Agreement)
	wipe(shared)
	if err != nil {
		return nil, err
	}
	defer wipe(k)
	kd := &KeyDelivery{Recipient: recipient.Signing, RecipientAgreement: recipient.Agreement,
		SenderAgreement: me.Agreement, Keys: refs}
	if _, err := io.ReadFull(r, kd.Nonce[:]); err != nil {
		return nil, fmt.Errorf("key delivery: %w", err)
	}
	pt := make([]byte, 0, 32*len(keys))
	for i := range keys {
		pt = append(pt, keys[i][:]...)
	}
	defer wipe(pt)
	aead, _ := chacha20poly1305.NewX(k)
	aad := mustEncode(&keyDeliveryHeader{Label: labelKeyDelivery, Namespace: ns, Sender: me.Signing, Recipient: recipient.Signing, Keys: refs})
	kd.Box = aead.Seal(nil, kd.Nonce[:], pt, aad)
	return kd, nil
}

// unwrapKeys opens a KeyDelivery addressed to me. Each key must hash to the
// KeyID it is announced under.
func unwrapKeys(ns NamespaceID, sender PublicKey, kd *KeyDelivery, me *identity) ([]groupKey, error) {
	mine := me.public()
	if kd.Recipient != mine.Signing || kd.RecipientAgreement != mine.Agreement {
		return nil, fmt.Errorf("key delivery: not addressed to this identity")
	}
	peer, err := ecdh.X25519().NewPublicKey(kd.SenderAgreement[:])
	if err != nil {
		return nil, fmt.Errorf("key delivery: sender agreement key: %w", err)
	}
	shared, err := me.agreement.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("key delivery: %w", err)
	}
	k, err := deliveryKey(shared, ns, sender, mine.Signing, kd.SenderAgreement, mine.Agreement)
	wipe(shared)
	if err != nil {
		return nil, err
	}
	defer wipe(k)
	aead, _ := chacha20poly1305.NewX(k)
	aad := mustEncode(&keyDeliveryHeader{Label: labelKeyDelivery, Namespace: ns, Sender: sender, Recipient: mine.Signing, Keys: kd.Keys})
	pt, err := aead.Open(nil, kd.Nonce[:], kd.Box, aad)
	if err != nil {
		return nil, fmt.Errorf("key delivery: box does not open")
	}
	defer wipe(pt)
	if len(pt) != 32*len(kd.Keys) {
		return nil, fmt.Errorf("key delivery: %d key bytes for %d keys", len(pt), len(kd.Keys))
	}
	out := make([]groupKey, len(kd.Keys))
	for i := range out {
		copy(out[i][:], pt[32*i:])
		if out[i].id() != kd.Keys[i].KeyID {
			return nil, fmt.Errorf("key delivery: key %d does not match its key id", i)
		}
	}
	return out, nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
