package governance

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/fxamacker/cbor/v2"
)

// Wire-format limits. Every decoder of untrusted bytes enforces them.
const (
	// MaxOpSize bounds the wire bytes of one SignedNamespaceOp. The largest
	// ops are a TeeAdmissionPolicySet (a policy with a few hundred pinned
	// values) and a KeyDelivery of many group keys; 64 KiB holds both with
	// room, and keeps one op from hogging a gossip mesh.
	MaxOpSize = 64 << 10
	// MaxParents bounds an op's parent list (the signer's heads).
	MaxParents = 64
	// MaxKeyRefs bounds the group keys one KeyDelivery carries.
	MaxKeyRefs = 256

	maxNested    = 8
	maxArrayLen  = 512
	maxMapPairs  = 16
	maxByteSlice = MaxOpSize
)

// signDomain separates SignedNamespaceOp signatures from every other use of
// a namespace identity key.
const signDomain = "fleetbox/v1/SignedNamespaceOp\x00"

// Core Deterministic Encoding (RFC 8949 section 4.2.1): sorted map keys,
// shortest forms, definite lengths.
var encMode = must(cbor.CoreDetEncOptions().EncMode())

// decMode decodes untrusted bytes: no duplicate keys, indefinite lengths or
// tags, tight bounds, unknown fields refused.
var decMode = must(cbor.DecOptions{
	DupMapKey:         cbor.DupMapKeyEnforcedAPF,
	IndefLength:       cbor.IndefLengthForbidden,
	TagsMd:            cbor.TagsForbidden,
	MaxNestedLevels:   maxNested,
	MaxArrayElements:  maxArrayLen,
	MaxMapPairs:       maxMapPairs,
	ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
}.DecMode())

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// decodeCanonical decodes b into v strictly and refuses bytes that are not
// the canonical encoding of the decoded value.
func decodeCanonical(b []byte, v any) error {
	if err := decMode.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	again, err := encMode.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: re-encoding: %v", ErrMalformed, err)
	}
	if !bytes.Equal(again, b) {
		return fmt.Errorf("%w: not the canonical CBOR encoding", ErrMalformed)
	}
	return nil
}

func mustEncode(v any) []byte {
	b, err := encMode.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("governance: encoding %T: %v", v, err))
	}
	return b
}

// signedOpWire is a SignedNamespaceOp on the wire: the canonical body bytes
// and the Ed25519 signature over signDomain || body.
type signedOpWire struct {
	Body []byte `cbor:"1,keyasint"`
	Sig  []byte `cbor:"2,keyasint"`
}

// opBody is the signed content of a SignedNamespaceOp. Exactly one of Root
// and Group is set.
type opBody struct {
	Namespace NamespaceID `cbor:"1,keyasint"`
	// Parents are the signer's heads when it signed: sorted ascending,
	// distinct, empty only for NamespaceCreated.
	Parents []OpID    `cbor:"2,keyasint"`
	Signer  PublicKey `cbor:"3,keyasint"`
	// Nonce is per signer and strictly increasing along the signer's ops.
	Nonce uint64         `cbor:"4,keyasint"`
	Root  *RootOp        `cbor:"5,keyasint,omitempty"`
	Group *SealedGroupOp `cbor:"6,keyasint,omitempty"`
}

// decodedOp is an op that passed the stateless checks.
type decodedOp struct {
	id   OpID
	body opBody
	wire []byte
}

// signOp encodes, signs and returns the wire bytes and id.
func signOp(body *opBody, priv ed25519.PrivateKey) (*decodedOp, error) {
	slices.SortFunc(body.Parents, func(a, b OpID) int { return bytes.Compare(a[:], b[:]) })
	if err := checkShape(body); err != nil {
		return nil, err
	}
	bb := mustEncode(body)
	msg := append([]byte(signDomain), bb...)
	w := signedOpWire{Body: bb, Sig: ed25519.Sign(priv, msg)}
	wire := mustEncode(&w)
	if len(wire) > MaxOpSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrOversize, len(wire))
	}
	return &decodedOp{id: sha256.Sum256(msg), body: *body, wire: wire}, nil
}

// decodeOp runs every stateless check: size, strict canonical decoding,
// shape, signature. It does not look at namespace state.
func decodeOp(wire []byte) (*decodedOp, error) {
	if len(wire) > MaxOpSize {
		return nil, refused(OpID{}, ReasonOversize, fmt.Errorf("%w: %d bytes, limit %d", ErrOversize, len(wire), MaxOpSize))
	}
	var w signedOpWire
	if err := decodeCanonical(wire, &w); err != nil {
		return nil, refused(OpID{}, ReasonMalformed, fmt.Errorf("decoding op: %w", err))
	}
	msg := make([]byte, 0, len(signDomain)+len(w.Body))
	msg = append(append(msg, signDomain...), w.Body...)
	id := opIDOf(msg)
	var body opBody
	if err := decodeCanonical(w.Body, &body); err != nil {
		return nil, refused(id, ReasonMalformed, fmt.Errorf("decoding op body: %w", err))
	}
	if err := checkShape(&body); err != nil {
		return nil, refused(id, ReasonMalformed, err)
	}
	if len(w.Sig) != ed25519.SignatureSize || !ed25519.Verify(body.Signer[:], msg, w.Sig) {
		return nil, refused(id, ReasonSignature, ErrSignature)
	}
	return &decodedOp{id: id, body: body, wire: bytes.Clone(wire)}, nil
}

// peekID returns the id of wire bytes without checking the body or the
// signature, so that known ops skip the costly checks. ok is false if the
// outer encoding does not decode.
func peekID(wire []byte) (OpID, bool) {
	if len(wire) > MaxOpSize {
		return OpID{}, false
	}
	var w signedOpWire
	if err := decMode.Unmarshal(wire, &w); err != nil {
		return OpID{}, false
	}
	h := sha256.New()
	h.Write([]byte(signDomain))
	h.Write(w.Body)
	return OpID(h.Sum(nil)), true
}

// checkShape checks what needs no state: one variant set, parents sorted and
// bounded, the genesis op alone has no parents, payload fields in range.
func checkShape(b *opBody) error {
	if (b.Root == nil) == (b.Group == nil) {
		return fmt.Errorf("%w: want exactly one of root op and group op", ErrMalformed)
	}
	if len(b.Parents) > MaxParents {
		return fmt.Errorf("%w: %d parents, limit %d", ErrMalformed, len(b.Parents), MaxParents)
	}
	for i := 1; i < len(b.Parents); i++ {
		if bytes.Compare(b.Parents[i-1][:], b.Parents[i][:]) >= 0 {
			return fmt.Errorf("%w: parents not sorted and distinct", ErrMalformed)
		}
	}
	if b.Nonce == 0 {
		return fmt.Errorf("%w: nonce 0", ErrMalformed)
	}
	genesis := b.Root != nil && b.Root.NamespaceCreated != nil
	if genesis != (len(b.Parents) == 0) {
		return fmt.Errorf("%w: NamespaceCreated, and only it, has no parents", ErrMalformed)
	}
	if b.Root != nil {
		return b.Root.check()
	}
	if len(b.Group.Ciphertext) == 0 {
		return fmt.Errorf("%w: empty group op ciphertext", ErrMalformed)
	}
	return nil
}

// Validate runs the stateless checks a gossip topic validator needs: size,
// strict canonical decoding, shape and signature, and that the op belongs to
// ns. It returns the op id. It needs no engine state and is safe to call from
// any goroutine.
func Validate(ns NamespaceID, wire []byte) (OpID, error) {
	op, err := decodeOp(wire)
	if err != nil {
		return OpID{}, err
	}
	if op.body.Namespace != ns {
		return op.id, refused(op.id, ReasonNamespace, fmt.Errorf("%w: op is for namespace %s", ErrMalformed, op.body.Namespace))
	}
	return op.id, nil
}

// OpSummary is the cleartext skeleton of an op: what any node can see
// without group keys.
type OpSummary struct {
	ID        OpID        `json:"id"`
	Namespace NamespaceID `json:"namespace"`
	Parents   []OpID      `json:"parents"`
	Signer    PublicKey   `json:"signer"`
	Nonce     uint64      `json:"nonce"`
	// Kind is the root op's name, or "GroupOp" for an encrypted group op.
	Kind string `json:"kind"`
	// Group is the group an encrypted group op is about (zero for root ops).
	Group GroupID `json:"group"`
}

// Inspect decodes and verifies an op (as Validate) and returns its skeleton.
func Inspect(wire []byte) (*OpSummary, error) {
	op, err := decodeOp(wire)
	if err != nil {
		return nil, err
	}
	return op.summary(), nil
}

func (op *decodedOp) summary() *OpSummary {
	s := &OpSummary{ID: op.id, Namespace: op.body.Namespace, Parents: slices.Clone(op.body.Parents),
		Signer: op.body.Signer, Nonce: op.body.Nonce}
	if op.body.Root != nil {
		s.Kind = op.body.Root.kind()
	} else {
		s.Kind = "GroupOp"
		s.Group = op.body.Group.Group
	}
	if s.Parents == nil {
		s.Parents = []OpID{}
	}
	return s
}

func opIDOf(signed []byte) OpID { return OpID(sha256.Sum256(signed)) }
