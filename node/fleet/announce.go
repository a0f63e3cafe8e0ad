// Package fleet admits hardware-attested read-only replicas (ReadOnlyTee) to
// a namespace: the TeeAttestationAnnounce a candidate publishes, the checks a
// verifier makes before it publishes MemberJoinedViaTeeAttestation, and the
// announcer that re-announces until the replica is admitted.
//
// Freshness: an announce's nonce is SHA-256 over a domain label, the
// namespace, a recent head of the namespace DAG and 32 random bytes, and the
// quote's report_data is nonce || SHA-256(namespace identity public key). A
// verifier refuses an announce whose head it does not know, or that stopped
// being a head longer ago than its window, so an old quote cannot be replayed
// later; the quote hash, recorded namespace-wide when a replica is admitted,
// stops the same quote from admitting twice.
package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/fleetbox/fleetbox/attest"
)

// Domain labels (fleetbox's own; any change is a wire format change).
const (
	nonceLabel     = "fleetbox/v1/tee-attestation-announce/nonce"
	signatureLabel = "fleetbox/v1/tee-attestation-announce/signature\x00"
)

// MaxAnnounceSize bounds an encoded announce: a quote (attest.MaxQuoteSize),
// an event log (attest.MaxEventLog) and about 200 bytes of fields.
const MaxAnnounceSize = attest.MaxQuoteSize + attest.MaxEventLog + 1024

// Announce is a TeeAttestationAnnounce.
type Announce struct {
	Version   uint8    `cbor:"1,keyasint"`
	Namespace [32]byte `cbor:"2,keyasint"`
	// Member is the candidate's namespace identity Ed25519 public key; the
	// announce is signed by it and the quote binds it.
	Member [32]byte `cbor:"3,keyasint"`
	// Agreement is the candidate's X25519 key for KeyDelivery.
	Agreement [32]byte `cbor:"4,keyasint"`
	// Head is a recent head of the namespace DAG the candidate saw.
	Head [32]byte `cbor:"5,keyasint"`
	// Random is fresh randomness for this announce.
	Random [32]byte `cbor:"6,keyasint"`
	// Quote is the TDX quote (or a mock quote) over Nonce() || SHA-256(Member).
	Quote     []byte `cbor:"7,keyasint"`
	Signature []byte `cbor:"8,keyasint"`
	// EventLog is the TD's event log (dstack's JSON or a binary CCEL), for
	// a policy that pins rtmr3Events; absent when the source has none. The
	// signature covers it; the replay binds it to the quote.
	EventLog []byte `cbor:"9,keyasint,omitempty"`
}

const announceVersion = 1

// Nonce is the 32-byte nonce the quote binds: it commits to the namespace,
// the head and the randomness.
func (a *Announce) Nonce() [32]byte {
	h := sha256.New()
	h.Write([]byte(nonceLabel))
	h.Write(a.Namespace[:])
	h.Write(a.Head[:])
	h.Write(a.Random[:])
	var n [32]byte
	h.Sum(n[:0])
	return n
}

// ReportData is what the quote must carry: Nonce() || SHA-256(Member).
func (a *Announce) ReportData() attest.ReportData {
	return attest.BindPublicKey(a.Nonce(), a.Member[:])
}

func (a *Announce) signedBytes() ([]byte, error) {
	c := *a
	c.Signature = nil
	b, err := encMode.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte(signatureLabel), b...), nil
}

// NewAnnounce builds and signs an announce: fresh randomness, a quote from
// src over the binding, a signature by the namespace identity key.
func NewAnnounce(ctx context.Context, src attest.Source, ns [32]byte, identity ed25519.PrivateKey, agreement, head [32]byte) (*Announce, error) {
	a := &Announce{Version: announceVersion, Namespace: ns, Agreement: agreement, Head: head}
	copy(a.Member[:], identity.Public().(ed25519.PublicKey))
	if _, err := rand.Read(a.Random[:]); err != nil {
		return nil, err
	}
	evd, err := attest.GetEvidence(ctx, src, a.ReportData())
	if err != nil {
		return nil, fmt.Errorf("getting a quote for the announce: %w", err)
	}
	if len(evd.EventLog) > attest.MaxEventLog {
		return nil, fmt.Errorf("the event log of %d bytes exceeds the %d-byte limit", len(evd.EventLog), attest.MaxEventLog)
	}
	a.Quote, a.EventLog = evd.Quote, evd.EventLog
	msg, err := a.signedBytes()
	if err != nil {
		return nil, fmt.Errorf("encoding announce: %w", err)
	}
	a.Signature = ed25519.Sign(identity, msg)
	return a, nil
}

// Encode returns the canonical CBOR wire form.
func (a *Announce) Encode() ([]byte, error) { return encMode.Marshal(a) }

// Errors from DecodeAnnounce; errors.Is them.
var (
	ErrMalformed = errors.New("malformed announce")
	ErrOversize  = errors.New("announce exceeds size limit")
)

// DecodeAnnounce decodes untrusted bytes strictly: size-limited, no
// duplicate keys, indefinite lengths or tags, canonical form only. It does
// not verify the signature (VerifySignature does).
func DecodeAnnounce(b []byte) (*Announce, error) {
	if len(b) > MaxAnnounceSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrOversize, len(b), MaxAnnounceSize)
	}
	var a Announce
	if err := decMode.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if a.Version != announceVersion {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, a.Version)
	}
	if len(a.Quote) == 0 || len(a.Quote) > attest.MaxQuoteSize || len(a.Signature) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: quote %d bytes, signature %d bytes", ErrMalformed, len(a.Quote), len(a.Signature))
	}
	if len(a.EventLog) > attest.MaxEventLog {
		return nil, fmt.Errorf("%w: event log of %d bytes, limit %d", ErrMalformed, len(a.EventLog), attest.MaxEventLog)
	}
	re, err := a.Encode()
	if err != nil || !bytes.Equal(re, b) {
		return nil, fmt.Errorf("%w: not in canonical CBOR form", ErrMalformed)
	}
	return &a, nil
}

// VerifySignature checks the announce's signature by its Member key.
func (a *Announce) VerifySignature() bool {
	msg, err := a.signedBytes()
	if err != nil {
		return false
	}
	return ed25519.Verify(ed25519.PublicKey(a.Member[:]), msg, a.Signature)
}

var (
	encMode = func() cbor.EncMode {
		m, err := cbor.CoreDetEncOptions().EncMode()
		if err != nil {
			panic(err)
		}
		return m
	}()
	decMode = func() cbor.DecMode {
		m, err := cbor.DecOptions{
			DupMapKey:         cbor.DupMapKeyEnforcedAPF,
			IndefLength:       cbor.IndefLengthForbidden,
			TagsMd:            cbor.TagsForbidden,
			MaxNestedLevels:   4,
			MaxArrayElements:  16,
			MaxMapPairs:       16,
			ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		}.DecMode()
		if err != nil {
			panic(err)
		}
		return m
	}()
)
