package governance

import (
	"fmt"

	"github.com/fleetbox/fleetbox/attest"
)

// RootOp is a cleartext op: namespace and group structure, key delivery and
// the admission policy. Exactly one field is set.
//
// Adding a root op: add a field with the next free key below, a check() case,
// a kind() case, and a case in applyRoot (apply.go). Reserved keys:
//
//	5: MemberJoinedViaTeeAttestation {member, quoteHash, mrtd, rtmr0..3,
//	   tcbStatus, role: ReadOnlyTee} (next issue). It is the only op that
//	   may grant RoleReadOnlyTee; applyRoot re-checks it against the
//	   namespace TeeAdmissionPolicy and records quoteHash namespace-wide.
type RootOp struct {
	NamespaceCreated      *NamespaceCreated      `cbor:"1,keyasint,omitempty"`
	GroupCreated          *GroupCreated          `cbor:"2,keyasint,omitempty"`
	KeyDelivery           *KeyDelivery           `cbor:"3,keyasint,omitempty"`
	TeeAdmissionPolicySet *TeeAdmissionPolicySet `cbor:"4,keyasint,omitempty"`
	// MemberJoinedViaTeeAttestation admits a fleet replica (tee.go).
	MemberJoinedViaTeeAttestation *MemberJoinedViaTeeAttestation `cbor:"5,keyasint,omitempty"`
}

// GroupOp is a membership or capability op. It travels sealed with the
// group key (SealedGroupOp); exactly one field is set.
//
// Adding a group op: add a field with the next free key, a check() case, a
// kind() case and a case in applyGroup (apply.go). Keys 16 and up are
// reserved for context ops (ContextRegistered, ...) in later issues.
type GroupOp struct {
	MemberAdded           *MemberAdded           `cbor:"1,keyasint,omitempty"`
	MemberRemoved         *MemberRemoved         `cbor:"2,keyasint,omitempty"`
	MemberRoleSet         *MemberRoleSet         `cbor:"3,keyasint,omitempty"`
	MemberCapabilitiesSet *MemberCapabilitiesSet `cbor:"4,keyasint,omitempty"`

	// Context ops (contexts.go).
	ContextCreated             *ContextCreated             `cbor:"16,keyasint,omitempty"`
	ContextApplicationUpgraded *ContextApplicationUpgraded `cbor:"17,keyasint,omitempty"`
	ContextDeleted             *ContextDeleted             `cbor:"18,keyasint,omitempty"`
	ContextCall                *ContextCall                `cbor:"19,keyasint,omitempty"`
}

// SealedGroupOp is a GroupOp encrypted with a group key: XChaCha20-Poly1305
// under the key KeyID names, AAD = the op header (namespace, parents,
// signer, nonce, group, key id). Nodes without the key keep the op as a
// skeleton and apply it once the key arrives.
type SealedGroupOp struct {
	Group      GroupID  `cbor:"1,keyasint"`
	KeyID      KeyID    `cbor:"2,keyasint"`
	Nonce      [24]byte `cbor:"3,keyasint"`
	Ciphertext []byte   `cbor:"4,keyasint"`
}

// NamespaceCreated is the genesis op. Its signer becomes the root group's
// first Admin. The namespace id is derived from the signer key and Salt.
type NamespaceCreated struct {
	Salt      [32]byte     `cbor:"1,keyasint"`
	Agreement AgreementKey `cbor:"2,keyasint"` // the creator's X25519 key
	KeyID     KeyID        `cbor:"3,keyasint"` // the root group's first key
}

// GroupCreated makes a subgroup of Parent. Group must equal
// SHA-256("fleetbox/v1/group-id" || namespace || signer || nonce), so ids
// never collide. Members of Parent are inherited (ReadOnlyTee excepted).
type GroupCreated struct {
	Group  GroupID `cbor:"1,keyasint"`
	Parent GroupID `cbor:"2,keyasint"`
	KeyID  KeyID   `cbor:"3,keyasint"` // the subgroup's first key
}

// KeyRef names one group key inside a KeyDelivery.
type KeyRef struct {
	Group GroupID `cbor:"1,keyasint"`
	KeyID KeyID   `cbor:"2,keyasint"`
}

// KeyDelivery wraps group keys for one recipient: X25519 ECDH between the
// sender's and recipient's namespace agreement keys, HKDF-SHA256 with the
// label "fleetbox/v1/key-delivery" and both identities, then
// XChaCha20-Poly1305 with AAD binding namespace, sender, recipient and Keys.
// The envelope is signed as part of the op.
type KeyDelivery struct {
	Recipient          PublicKey    `cbor:"1,keyasint"`
	RecipientAgreement AgreementKey `cbor:"2,keyasint"`
	SenderAgreement    AgreementKey `cbor:"3,keyasint"`
	Keys               []KeyRef     `cbor:"4,keyasint"`
	Nonce              [24]byte     `cbor:"5,keyasint"`
	Box                []byte       `cbor:"6,keyasint"`
}

// TeeAdmissionPolicySet sets the namespace's TeeAdmissionPolicy. Root group
// admins only. Policy is the attest.Policy JSON document, checked with
// attest.ParsePolicy (unknown fields refused, then Policy.Validate).
type TeeAdmissionPolicySet struct {
	Policy []byte `cbor:"1,keyasint"`
}

// MemberAdded adds a member to a group. Role may not be ReadOnlyTee.
type MemberAdded struct {
	Member       MemberKeys   `cbor:"1,keyasint"`
	Role         Role         `cbor:"2,keyasint"`
	Capabilities Capabilities `cbor:"3,keyasint"`
}

// MemberRemoved removes a member's direct row from a group and rotates the
// group key to NewKeyID, and the keys of the group's subgroups (which the
// member could read through inheritance) to SubgroupKeys; the remover
// delivers the new keys to every remaining member, never to the removed one.
type MemberRemoved struct {
	Member       PublicKey `cbor:"1,keyasint"`
	NewKeyID     KeyID     `cbor:"2,keyasint"`
	SubgroupKeys []KeyRef  `cbor:"3,keyasint,omitempty"`
}

// MemberRoleSet changes a member's role. Admins only; ReadOnlyTee can be
// neither granted nor changed by it.
type MemberRoleSet struct {
	Member PublicKey `cbor:"1,keyasint"`
	Role   Role      `cbor:"2,keyasint"`
}

// MemberCapabilitiesSet replaces a member's capability bits.
type MemberCapabilitiesSet struct {
	Member       PublicKey    `cbor:"1,keyasint"`
	Capabilities Capabilities `cbor:"2,keyasint"`
}

func (r *RootOp) count() int {
	n := 0
	if r.NamespaceCreated != nil {
		n++
	}
	if r.GroupCreated != nil {
		n++
	}
	if r.KeyDelivery != nil {
		n++
	}
	if r.TeeAdmissionPolicySet != nil {
		n++
	}
	if r.MemberJoinedViaTeeAttestation != nil {
		n++
	}
	return n
}

func (r *RootOp) kind() string {
	switch {
	case r.NamespaceCreated != nil:
		return "NamespaceCreated"
	case r.GroupCreated != nil:
		return "GroupCreated"
	case r.KeyDelivery != nil:
		return "KeyDelivery"
	case r.TeeAdmissionPolicySet != nil:
		return "TeeAdmissionPolicySet"
	case r.MemberJoinedViaTeeAttestation != nil:
		return "MemberJoinedViaTeeAttestation"
	}
	return "RootOp(?)"
}

func (r *RootOp) check() error {
	if r.count() != 1 {
		return fmt.Errorf("%w: root op must set exactly one variant", ErrMalformed)
	}
	switch {
	case r.KeyDelivery != nil:
		kd := r.KeyDelivery
		if len(kd.Keys) == 0 || len(kd.Keys) > MaxKeyRefs {
			return fmt.Errorf("%w: KeyDelivery with %d keys (want 1..%d)", ErrMalformed, len(kd.Keys), MaxKeyRefs)
		}
		if len(kd.Box) != len(kd.Keys)*32+16 {
			return fmt.Errorf("%w: KeyDelivery box size does not match its keys", ErrMalformed)
		}
	case r.TeeAdmissionPolicySet != nil:
		if _, err := attest.ParsePolicy(r.TeeAdmissionPolicySet.Policy); err != nil {
			return fmt.Errorf("%w: TeeAdmissionPolicySet: %v", ErrMalformed, err)
		}
	case r.MemberJoinedViaTeeAttestation != nil:
		return r.MemberJoinedViaTeeAttestation.check()
	}
	return nil
}

func (g *GroupOp) count() int {
	n := 0
	if g.MemberAdded != nil {
		n++
	}
	if g.MemberRemoved != nil {
		n++
	}
	if g.MemberRoleSet != nil {
		n++
	}
	if g.MemberCapabilitiesSet != nil {
		n++
	}
	return n + g.contextCount()
}

func (g *GroupOp) kind() string {
	switch {
	case g.MemberAdded != nil:
		return "MemberAdded"
	case g.MemberRemoved != nil:
		return "MemberRemoved"
	case g.MemberRoleSet != nil:
		return "MemberRoleSet"
	case g.MemberCapabilitiesSet != nil:
		return "MemberCapabilitiesSet"
	case g.contextCount() > 0:
		return g.contextKind()
	}
	return "GroupOp(?)"
}

func (g *GroupOp) check() error {
	if g.count() != 1 {
		return fmt.Errorf("%w: group op must set exactly one variant", ErrMalformed)
	}
	var role Role
	var caps Capabilities
	switch {
	case g.MemberAdded != nil:
		role, caps = g.MemberAdded.Role, g.MemberAdded.Capabilities
	case g.MemberRoleSet != nil:
		role = g.MemberRoleSet.Role
	case g.MemberCapabilitiesSet != nil:
		role, caps = RoleMember, g.MemberCapabilitiesSet.Capabilities
	case g.contextCount() > 0:
		return g.checkContext()
	default:
		if g.MemberRemoved != nil && len(g.MemberRemoved.SubgroupKeys) > MaxKeyRefs {
			return fmt.Errorf("%w: MemberRemoved rotates %d subgroup keys, limit %d", ErrMalformed, len(g.MemberRemoved.SubgroupKeys), MaxKeyRefs)
		}
		return nil
	}
	if !role.valid() {
		return fmt.Errorf("%w: unknown role %d", ErrMalformed, role)
	}
	if caps&^AllCapabilities != 0 {
		return fmt.Errorf("%w: unknown capability bits %#x", ErrMalformed, uint32(caps&^AllCapabilities))
	}
	return nil
}
