// Package ids holds the identifiers node/governance, node/p2p and the node
// share: one type each for a namespace, a group, an op and a member, so that
// no layer converts between look-alikes. Standard library only.
package ids

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// NamespaceID names a namespace. It is also the id of its root group:
// SHA-256("fleetbox/v1/namespace-id" || creator signing key || salt), so only
// the creator's key can sign a genesis op for it.
type NamespaceID [32]byte

// GroupID names a group. The root group's id equals the NamespaceID.
type GroupID [32]byte

// OpID is SHA-256 of a SignedNamespaceOp's signed bytes (domain label and
// canonical body).
type OpID [32]byte

// PublicKey is a namespace identity's Ed25519 public key. It names a member.
type PublicKey [32]byte

func (n NamespaceID) String() string { return hex.EncodeToString(n[:]) }
func (g GroupID) String() string     { return hex.EncodeToString(g[:]) }
func (o OpID) String() string        { return hex.EncodeToString(o[:]) }
func (p PublicKey) String() string   { return hex.EncodeToString(p[:]) }

func (n NamespaceID) MarshalText() ([]byte, error) { return []byte(n.String()), nil }
func (g GroupID) MarshalText() ([]byte, error)     { return []byte(g.String()), nil }
func (o OpID) MarshalText() ([]byte, error)        { return []byte(o.String()), nil }
func (p PublicKey) MarshalText() ([]byte, error)   { return []byte(p.String()), nil }

func (n *NamespaceID) UnmarshalText(b []byte) error {
	return ParseHex32(n[:], string(b), "namespace id")
}
func (g *GroupID) UnmarshalText(b []byte) error   { return ParseHex32(g[:], string(b), "group id") }
func (o *OpID) UnmarshalText(b []byte) error      { return ParseHex32(o[:], string(b), "op id") }
func (p *PublicKey) UnmarshalText(b []byte) error { return ParseHex32(p[:], string(b), "public key") }

// Root returns the root group of the namespace.
func (n NamespaceID) Root() GroupID { return GroupID(n) }

// ParseNamespaceID parses 64 hex digits.
func ParseNamespaceID(s string) (NamespaceID, error) {
	var n NamespaceID
	return n, n.UnmarshalText([]byte(s))
}

// ParseGroupID parses 64 hex digits.
func ParseGroupID(s string) (GroupID, error) {
	var g GroupID
	return g, g.UnmarshalText([]byte(s))
}

// ParseHex32 decodes 64 hex digits (any case, optional 0x) into dst; errors
// name what.
func ParseHex32(dst []byte, s, what string) error {
	s = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x")
	if len(s) != 64 {
		return fmt.Errorf("%s: want 64 hex digits, got %d characters", what, len(s))
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
