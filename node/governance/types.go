package governance

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/fleetbox/fleetbox/node/ids"
)

// The identifiers governance shares with p2p and the node (node/ids).
type (
	NamespaceID = ids.NamespaceID
	GroupID     = ids.GroupID
	OpID        = ids.OpID
	PublicKey   = ids.PublicKey
)

// AgreementKey is a namespace identity's X25519 public key, used for
// KeyDelivery.
type AgreementKey [32]byte

// KeyID names one group key: SHA-256("fleetbox/v1/group-key-id" || key). It
// commits an encrypted op to exactly one key.
type KeyID [32]byte

func (a AgreementKey) String() string { return hex.EncodeToString(a[:]) }
func (k KeyID) String() string        { return hex.EncodeToString(k[:]) }

// ParseNamespaceID and ParseGroupID parse 64 hex digits.
var (
	ParseNamespaceID = ids.ParseNamespaceID
	ParseGroupID     = ids.ParseGroupID
)

// MemberKeys are the public halves of a namespace identity: what an admin
// needs to add a member (signing key to name it, agreement key to deliver
// group keys to it).
type MemberKeys struct {
	Signing   PublicKey    `cbor:"1,keyasint"`
	Agreement AgreementKey `cbor:"2,keyasint"`
}

const memberKeysPrefix = "fbm1"

// String encodes the keys as "fbm1" followed by 128 hex digits, the form an
// operator passes to `fleetbox ctl member add`.
func (m MemberKeys) String() string {
	return memberKeysPrefix + hex.EncodeToString(m.Signing[:]) + hex.EncodeToString(m.Agreement[:])
}

// ParseMemberKeys parses the String form.
func ParseMemberKeys(s string) (MemberKeys, error) {
	var m MemberKeys
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, memberKeysPrefix) || len(s) != len(memberKeysPrefix)+128 {
		return m, fmt.Errorf("member keys: want %q followed by 128 hex digits", memberKeysPrefix)
	}
	b, err := hex.DecodeString(s[len(memberKeysPrefix):])
	if err != nil {
		return m, fmt.Errorf("member keys: %w", err)
	}
	copy(m.Signing[:], b[:32])
	copy(m.Agreement[:], b[32:])
	return m, nil
}

// Role is a GroupMemberRole.
type Role uint8

// Roles. The zero value is not a role.
const (
	RoleAdmin    Role = 1
	RoleMember   Role = 2
	RoleReadOnly Role = 3
	// RoleReadOnlyTee is granted only by MemberJoinedViaTeeAttestation (next
	// issue), never by MemberAdded or MemberRoleSet, and is never inherited
	// by subgroups.
	RoleReadOnlyTee Role = 4
)

func (r Role) String() string {
	switch r {
	case RoleAdmin:
		return "Admin"
	case RoleMember:
		return "Member"
	case RoleReadOnly:
		return "ReadOnly"
	case RoleReadOnlyTee:
		return "ReadOnlyTee"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// ParseRole accepts the String form, case-insensitively.
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleAdmin, RoleMember, RoleReadOnly, RoleReadOnlyTee} {
		if strings.EqualFold(s, r.String()) {
			return r, nil
		}
	}
	return 0, fmt.Errorf("unknown role %q (want Admin, Member, ReadOnly or ReadOnlyTee)", s)
}

func (r Role) valid() bool { return r >= RoleAdmin && r <= RoleReadOnlyTee }

// CanWrite reports whether the role may author ops. ReadOnly and ReadOnlyTee
// never may.
func (r Role) CanWrite() bool { return r == RoleAdmin || r == RoleMember }

// Capabilities is the per-member u32 bitmask; its bits are part of the wire
// format (signed ops carry it), so they never change.
type Capabilities uint32

// Capability bits, with the names and values of the reference system that
// operators know (CAN_CREATE_CONTEXT 1<<0 ... CAN_MANAGE_METADATA 1<<8).
const (
	CanCreateContext     Capabilities = 1 << 0
	CanInviteMembers     Capabilities = 1 << 1
	CanJoinOpenSubgroups Capabilities = 1 << 2
	ManageMembers        Capabilities = 1 << 3
	ManageApplication    Capabilities = 1 << 4
	CanCreateSubgroup    Capabilities = 1 << 5
	CanDeleteSubgroup    Capabilities = 1 << 6
	CanManageVisibility  Capabilities = 1 << 7
	CanManageMetadata    Capabilities = 1 << 8

	// AllCapabilities is every defined bit. Other bits are refused.
	AllCapabilities Capabilities = 1<<9 - 1
)

var capNames = []struct {
	c    Capabilities
	name string
}{
	{CanCreateContext, "CAN_CREATE_CONTEXT"},
	{CanInviteMembers, "CAN_INVITE_MEMBERS"},
	{CanJoinOpenSubgroups, "CAN_JOIN_OPEN_SUBGROUPS"},
	{ManageMembers, "MANAGE_MEMBERS"},
	{ManageApplication, "MANAGE_APPLICATION"},
	{CanCreateSubgroup, "CAN_CREATE_SUBGROUP"},
	{CanDeleteSubgroup, "CAN_DELETE_SUBGROUP"},
	{CanManageVisibility, "CAN_MANAGE_VISIBILITY"},
	{CanManageMetadata, "CAN_MANAGE_METADATA"},
}

// Has reports whether every bit of want is set.
func (c Capabilities) Has(want Capabilities) bool { return c&want == want }

// Names lists the set bits by their names above.
func (c Capabilities) Names() []string {
	out := []string{}
	for _, n := range capNames {
		if c&n.c != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

func (c Capabilities) String() string { return strings.Join(c.Names(), "|") }

// ParseCapabilities parses names separated by "," or "|" (case-insensitive,
// with or without underscores), or a number.
func ParseCapabilities(s string) (Capabilities, error) {
	var c Capabilities
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}
	var n uint64
	if _, err := fmt.Sscanf(s, "%v", &n); err == nil && fmt.Sprint(n) == s {
		if Capabilities(n)&^AllCapabilities != 0 || n > 1<<32-1 {
			return 0, fmt.Errorf("capabilities %s: unknown bits", s)
		}
		return Capabilities(n), nil
	}
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '|' }) {
		norm := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(part), "-", "_"))
		found := false
		for _, n := range capNames {
			if norm == n.name || norm == strings.ReplaceAll(n.name, "_", "") {
				c |= n.c
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown capability %q", part)
		}
	}
	return c, nil
}

// Errors. Refusals of received ops wrap one of these in a *RefusedError.
var (
	ErrUnknownNamespace = errors.New("governance: unknown namespace")
	ErrUnknownGroup     = errors.New("governance: unknown group")
	ErrNotMember        = errors.New("governance: not a member")
	// ErrNotAuthorized: the signer's role or capabilities do not allow the op.
	ErrNotAuthorized = errors.New("governance: not authorized")
	// ErrReadOnly: ReadOnly and ReadOnlyTee members never author ops.
	ErrReadOnly  = errors.New("governance: read-only members cannot author ops")
	ErrMalformed = errors.New("governance: malformed op")
	ErrOversize  = errors.New("governance: op exceeds the size limit")
	ErrSignature = errors.New("governance: bad signature")
	ErrNonce     = errors.New("governance: nonce not above the signer's previous nonce")
	// ErrInvalid: the op is well-formed and authorized by role but makes no
	// sense in the current state (group exists, member missing, ...).
	ErrInvalid = errors.New("governance: op invalid in this state")
	// ErrParentRefused: a parent was refused, so this op can never apply.
	ErrParentRefused = errors.New("governance: parent op was refused")
	ErrPendingFull   = errors.New("governance: pending queue full")
	// ErrPendingQuota: the op's signer or sender has its share of the
	// pending queue.
	ErrPendingQuota = errors.New("governance: pending-queue quota of the signer or sender reached")
	ErrNoKey        = errors.New("governance: group key not held")
	ErrNoIdentity   = errors.New("governance: no namespace identity")
	ErrClosed       = errors.New("governance: engine closed")
)

// Reason is a refusal reason, the label of the refused-ops counter.
type Reason string

// Refusal reasons.
const (
	ReasonMalformed    Reason = "malformed"
	ReasonOversize     Reason = "oversize"
	ReasonSignature    Reason = "signature"
	ReasonNamespace    Reason = "wrong_namespace"
	ReasonNonce        Reason = "nonce"
	ReasonNotMember    Reason = "not_member"
	ReasonReadOnly     Reason = "read_only"
	ReasonUnauthorized Reason = "unauthorized"
	ReasonInvalid      Reason = "invalid"
	ReasonParent       Reason = "parent_refused"
	ReasonPendingFull  Reason = "pending_full"
	ReasonPendingQuota Reason = "pending_quota"
	// ReasonPendingExpired counts ops dropped from the pending queue after
	// waiting longer than the age limit.
	ReasonPendingExpired Reason = "pending_expired"
)

// Local reports whether a refusal is about this node's state rather than the
// op: another node may accept the op, so its forwarder is not at fault.
func (r Reason) Local() bool {
	return r == ReasonPendingFull || r == ReasonPendingQuota || r == ReasonPendingExpired
}

// RefusedError says why an op was refused. errors.Is matches its Err.
type RefusedError struct {
	Op     OpID // zero if the bytes did not decode
	Reason Reason
	Err    error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("op %s refused (%s): %v", shortID(e.Op), e.Reason, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

func refused(id OpID, r Reason, err error) *RefusedError {
	return &RefusedError{Op: id, Reason: r, Err: err}
}

func shortID(o OpID) string { return hex.EncodeToString(o[:6]) }
