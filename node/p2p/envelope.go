package p2p

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/fleetbox/fleetbox/node/ids"
)

// The identifiers p2p shares with governance and the node (node/ids).
type (
	NamespaceID = ids.NamespaceID
	OpID        = ids.OpID
)

// Topic returns the gossipsub topic of a namespace: "ns/<hex namespace id>".
func Topic(ns NamespaceID) string { return "ns/" + ns.String() }

// Kind says what a gossip Envelope carries.
type Kind uint8

const (
	// KindOp carries one SignedNamespaceOp in its wire bytes.
	KindOp Kind = 1
	// KindHeartbeat carries the sender's DAG heads (GroupStateHeartbeat).
	KindHeartbeat Kind = 2
	// KindTeeAttestationAnnounce carries a fleet replica's announce. Its
	// payload is opaque to this package; a Config.OnAnnounce hook judges it.
	KindTeeAttestationAnnounce Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindOp:
		return "op"
	case KindHeartbeat:
		return "heartbeat"
	case KindTeeAttestationAnnounce:
		return "announce"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Size limits of the wire formats. A gossip message is one Envelope; ops are
// bounded by the envelope. A sync frame carries a batch of ops.
const (
	// MaxEnvelopeSize bounds one gossip message. A TDX quote with its PCK
	// chain is about 5-8 KiB, a KeyDelivery a few hundred bytes per
	// recipient; 256 KiB leaves room without letting one message hog a mesh.
	MaxEnvelopeSize = 256 << 10
	// MaxOpSize bounds the wire bytes of one op inside an envelope or frame.
	MaxOpSize = MaxEnvelopeSize - 1024
	// MaxHeads bounds the heads a heartbeat or sync request carries.
	MaxHeads = 256
	// MaxFrameSize bounds one sync stream frame.
	MaxFrameSize = 8 << 20
	// MaxBatchOps bounds the ops in one sync frame.
	MaxBatchOps = 1024
	// maxLocator bounds the known-op ids of a sync request.
	maxLocator = 512
)

// Errors returned by the decoders; test with errors.Is.
var (
	ErrOversize     = errors.New("message exceeds size limit")
	ErrMalformed    = errors.New("malformed message")
	ErrNonCanonical = errors.New("message is not in canonical CBOR form")
)

// Envelope is the one gossip message type on a namespace topic.
type Envelope struct {
	Kind Kind `cbor:"1,keyasint"`
	// Namespace must equal the topic's namespace.
	Namespace []byte `cbor:"2,keyasint"`
	// Op is a SignedNamespaceOp's wire bytes (KindOp).
	Op []byte `cbor:"3,keyasint,omitempty"`
	// Heads are the sender's DAG heads (KindHeartbeat).
	Heads [][]byte `cbor:"4,keyasint,omitempty"`
	// OpCount is the number of ops the sender has applied (KindHeartbeat);
	// informational.
	OpCount uint64 `cbor:"5,keyasint,omitempty"`
	// Announce is a TeeAttestationAnnounce's wire bytes.
	Announce []byte `cbor:"6,keyasint,omitempty"`
}

var (
	encMode = mustEncMode()
	decMode = mustDecMode()
)

func mustEncMode() cbor.EncMode {
	m, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	return m
}

// mustDecMode is strict where fxamacker/cbor's defaults are permissive:
// duplicate map keys, indefinite lengths and tags are refused, and nesting,
// arrays and maps are bounded.
func mustDecMode() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   4,
		MaxArrayElements:  MaxBatchOps + maxLocator, // largest array: ops or known ids
		MaxMapPairs:       16,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}

// strictUnmarshal decodes untrusted CBOR into v and refuses anything that
// does not re-encode to the same bytes.
func strictUnmarshal(data []byte, v any) error {
	if err := decMode.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	again, err := encMode.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if !bytes.Equal(again, data) {
		return ErrNonCanonical
	}
	return nil
}

// NewOpEnvelope wraps an op's wire bytes.
func NewOpEnvelope(ns NamespaceID, op []byte) *Envelope {
	return &Envelope{Kind: KindOp, Namespace: ns[:], Op: op}
}

// NewHeartbeat builds a heartbeat of heads; at most MaxHeads are carried.
func NewHeartbeat(ns NamespaceID, heads []OpID, opCount uint64) *Envelope {
	if len(heads) > MaxHeads {
		heads = heads[:MaxHeads]
	}
	hs := make([][]byte, len(heads))
	for i := range heads {
		hs[i] = heads[i][:]
	}
	return &Envelope{Kind: KindHeartbeat, Namespace: ns[:], Heads: hs, OpCount: opCount}
}

// NewAnnounce wraps a TeeAttestationAnnounce's wire bytes.
func NewAnnounce(ns NamespaceID, announce []byte) *Envelope {
	return &Envelope{Kind: KindTeeAttestationAnnounce, Namespace: ns[:], Announce: announce}
}

// Marshal encodes the envelope canonically and checks its limits.
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	b, err := encMode.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding envelope: %w", err)
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("envelope of %d bytes: %w", len(b), ErrOversize)
	}
	return b, nil
}

// DecodeEnvelope decodes one gossip message strictly: size limits first,
// then CBOR with duplicate keys, indefinite lengths, tags and unknown fields
// refused, then canonical form, then the shape its kind requires.
func DecodeEnvelope(data []byte) (*Envelope, error) {
	if len(data) > MaxEnvelopeSize {
		return nil, fmt.Errorf("envelope of %d bytes: %w", len(data), ErrOversize)
	}
	var e Envelope
	if err := strictUnmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("decoding envelope: %w", err)
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return &e, nil
}

// NamespaceID returns the envelope's namespace; check has validated its size.
func (e *Envelope) NamespaceID() NamespaceID { return NamespaceID(e.Namespace) }

// HeadIDs returns the heartbeat's heads.
func (e *Envelope) HeadIDs() []OpID {
	out := make([]OpID, len(e.Heads))
	for i, h := range e.Heads {
		out[i] = OpID(h)
	}
	return out
}

func (e *Envelope) check() error {
	if len(e.Namespace) != len(NamespaceID{}) {
		return fmt.Errorf("%w: namespace id of %d bytes", ErrMalformed, len(e.Namespace))
	}
	switch e.Kind {
	case KindOp:
		if len(e.Op) == 0 || e.Heads != nil || e.Announce != nil || e.OpCount != 0 {
			return fmt.Errorf("%w: op envelope needs an op and nothing else", ErrMalformed)
		}
		if len(e.Op) > MaxOpSize {
			return fmt.Errorf("op of %d bytes: %w", len(e.Op), ErrOversize)
		}
	case KindHeartbeat:
		if e.Op != nil || e.Announce != nil {
			return fmt.Errorf("%w: heartbeat carries only heads", ErrMalformed)
		}
		if len(e.Heads) > MaxHeads {
			return fmt.Errorf("heartbeat with %d heads: %w", len(e.Heads), ErrOversize)
		}
		for _, h := range e.Heads {
			if len(h) != len(OpID{}) {
				return fmt.Errorf("%w: head of %d bytes", ErrMalformed, len(h))
			}
		}
	case KindTeeAttestationAnnounce:
		if len(e.Announce) == 0 || e.Op != nil || e.Heads != nil || e.OpCount != 0 {
			return fmt.Errorf("%w: announce envelope needs an announce and nothing else", ErrMalformed)
		}
	default:
		return fmt.Errorf("%w: unknown kind %d", ErrMalformed, e.Kind)
	}
	return nil
}
