// Package api is the KMS wire format, shared by the server (kms) and the
// client (kms/client): request and response bodies, stable error codes, the
// canonical bytes a node signs for /get-key, and the report_data a node binds
// into its quote. It depends on nothing heavier than libp2p's key types, so
// the appliance can link the client without the server.
package api

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/fleetbox/fleetbox/internal/strictjson"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/fleetbox/fleetbox/attest/measurement"
)

// Paths of the KMS HTTP API.
const (
	PathChallenge = "/challenge"
	PathGetKey    = "/get-key"
	PathAttest    = "/attest"
	PathHealth    = "/health"
	PathMetrics   = "/metrics"
	PathAudit     = "/audit"
)

// Body limits. A real quote is about 5 KB and measurement.MaxQuoteSize bounds any
// quote at 64 KiB; base64 grows it by 4/3.
const (
	MaxChallengeBody = 1 << 10
	MaxAttestBody    = 1 << 10
	// MaxGetKeyBody fits a quote and an event log (eventlog.MaxLogSize,
	// 64 KiB) in base64.
	MaxGetKeyBody = 192 << 10
	// MaxResponseBody bounds what the client reads from any KMS response
	// (an /attest response carries a quote; an /audit page many entries).
	MaxResponseBody = 4 << 20
)

// MaxEventLog bounds an event log sent with a quote (eventlog.MaxLogSize).
const MaxEventLog = 64 << 10

// KeySize is the length of a storage key.
const KeySize = 32

// SealToSize is the length of an X25519 public key (RFC 7748).
const SealToSize = 32

// Error codes: stable strings, one HTTP status each (see Status).
const (
	CodeInvalidRequest        = "invalid_request"
	CodeInvalidChallenge      = "invalid_challenge"
	CodeInvalidSignature      = "invalid_signature"
	CodeAttestationInvalid    = "attestation_invalid"
	CodeReportDataMismatch    = "report_data_mismatch"
	CodeEventLogMismatch      = "eventlog_mismatch"
	CodePolicyRejected        = "measurement_policy_rejected"
	CodePolicyNotReady        = "policy_not_ready"
	CodeTooManyChallenges     = "too_many_challenges"
	CodeCollateralUnavailable = "collateral_unavailable"
	CodeInternal              = "internal_error"
	CodeNotFound              = "not_found"
	CodeMethodNotAllowed      = "method_not_allowed"
	CodeUnsupportedMediaType  = "unsupported_media_type"
	CodeRateLimited           = "rate_limited"
	// Collateral failures: the KMS's collateral, not the quote, is at fault
	// (attest.CollateralReason), so clients retry (503).
	CodeCollateralExpired     = "collateral_expired"
	CodeCollateralNotYetValid = "collateral_not_yet_valid"
	CodeCollateralFMSPC       = "collateral_fmspc_mismatch"
	CodeCollateralNoCRLs      = "collateral_no_crls"
)

// Status returns the HTTP status for an error code.
func Status(code string) int {
	switch code {
	case CodeInvalidRequest:
		return 400
	case CodeInvalidChallenge, CodeInvalidSignature:
		return 401
	case CodeAttestationInvalid, CodeReportDataMismatch, CodePolicyRejected, CodeEventLogMismatch:
		return 403
	case CodeNotFound:
		return 404
	case CodeMethodNotAllowed:
		return 405
	case CodeUnsupportedMediaType:
		return 415
	case CodeRateLimited:
		return 429
	case CodePolicyNotReady, CodeTooManyChallenges, CodeCollateralUnavailable,
		CodeCollateralExpired, CodeCollateralNotYetValid, CodeCollateralFMSPC, CodeCollateralNoCRLs:
		return 503
	default:
		return 500
	}
}

// Error is the body of every error response.
type Error struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}

// ChallengeRequest is the body of POST /challenge.
type ChallengeRequest struct {
	PeerID string `json:"peerId"`
}

// ChallengeResponse answers POST /challenge.
type ChallengeResponse struct {
	ChallengeID string    `json:"challengeId"`
	NonceB64    string    `json:"nonceB64"`
	ExpiresAt   time.Time `json:"expiresAt"`
}

// GetKeyRequest is the body of POST /get-key.
type GetKeyRequest struct {
	ChallengeID      string `json:"challengeId"`
	QuoteB64         string `json:"quoteB64"`
	PeerID           string `json:"peerId"`
	PeerPublicKeyB64 string `json:"peerPublicKeyB64"`
	SignatureB64     string `json:"signatureB64"`
	SealToB64        string `json:"sealToB64,omitempty"`
	// InstanceID, if set, asks for the key of an instance rather than of
	// the peer: HKDF info "fleetbox/storage/<profile>/instance/<id>". The
	// appliance uses it, with a fresh peer key per boot, so that the
	// per-instance key is stable across boots while no private key of the
	// instance ever rests on disk (appliance/README.md, instance identity).
	InstanceID string `json:"instanceId,omitempty"`
	// EventLogB64, if set, is the TD's event log (binary CCEL or the JSON
	// form of measure/eventlog) for the quote. It is not trusted: the KMS
	// requires it to replay to the quote's RTMRs, then uses it to say, when
	// the policy refuses a register, which event changed.
	EventLogB64 string `json:"eventLogB64,omitempty"`
}

// GetKeyResponse answers POST /get-key: Key (hex) without sealing,
// SealedKeyB64 (an HPKE ciphertext, see SealInfo) with it.
type GetKeyResponse struct {
	Key          string `json:"key,omitempty"`
	SealedKeyB64 string `json:"sealedKeyB64,omitempty"`
	// Profile is the KMS profile the key was derived for.
	Profile string `json:"profile"`
	// AuditSeq is the audit log entry that records this release.
	AuditSeq uint64 `json:"auditSeq"`
	// SignatureB64 is the KMS's Ed25519 signature (the key /attest binds)
	// over ResponseMessage, so a node that checked its KMS knows the key
	// came from it and not from something in between.
	SignatureB64 string `json:"signatureB64"`
}

// AttestRequest is the body of POST /attest.
type AttestRequest struct {
	NonceB64 string `json:"nonceB64"`
}

// AttestResponse answers POST /attest: the KMS's own quote over
// BindPublicKey(nonce, PublicKey) and its Ed25519 signing key (raw 32 bytes),
// the key that also signs the audit head.
type AttestResponse struct {
	QuoteB64     string `json:"quoteB64"`
	PublicKeyB64 string `json:"publicKeyB64"`
	// Mock is true when the KMS runs without TDX and the quote is a mock
	// quote; only a policy with acceptMock admits it.
	Mock bool `json:"mock"`
	// Source names the quote source ("tdx", "dstack", "mock").
	Source string `json:"source"`
	// EventLogB64, if set, is the KMS's own event log (a dstack KMS's),
	// for a client whose policy pins rtmr3Events; at most MaxEventLog bytes.
	EventLogB64 string `json:"eventLogB64,omitempty"`
}

// Health answers GET /health.
type Health struct {
	// Status is "ok", or "not_ready" (HTTP 503) with Reason saying why:
	// the audit log cannot be appended, so no key can be released.
	Status            string `json:"status"`
	Reason            string `json:"reason,omitempty"`
	PolicyReady       bool   `json:"policyReady"`
	Profile           string `json:"profile"`
	AuditSeq          uint64 `json:"auditSeq"`
	PendingChallenges int    `json:"pendingChallenges"`
}

// ChallengeIDSize is the number of random bytes in a challenge ID.
const ChallengeIDSize = 16

var challengeIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

// maxPeerIDText bounds a peer ID's text; an Ed25519 peer ID is 52 characters.
const maxPeerIDText = 128

// ErrShape is wrapped by every request-shape error.
var ErrShape = errors.New("invalid request")

func shapeErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrShape}, a...)...)
}

// decodeStrict decodes exactly one JSON object into v: unknown, duplicate
// and miscased keys, trailing data and oversize input are refused.
func decodeStrict(data []byte, limit int, v any) error {
	if len(data) > limit {
		return shapeErr("body of %d bytes exceeds the %d-byte limit", len(data), limit)
	}
	if err := strictjson.Unmarshal(data, v); err != nil {
		return shapeErr("decoding JSON: %v", err)
	}
	return nil
}

// DecodeChallengeRequest decodes and checks a /challenge body.
func DecodeChallengeRequest(data []byte) (*ChallengeRequest, error) {
	var r ChallengeRequest
	if err := decodeStrict(data, MaxChallengeBody, &r); err != nil {
		return nil, err
	}
	if _, err := ParsePeerID(r.PeerID); err != nil {
		return nil, err
	}
	return &r, nil
}

// GetKey is a decoded, shape-checked /get-key request.
type GetKey struct {
	ChallengeID string
	Quote       []byte
	PeerID      peer.ID
	PeerIDText  string
	PublicKey   crypto.PubKey
	Signature   []byte
	// SealTo is the X25519 public key to seal to; nil for a plain key.
	SealTo []byte
	// InstanceID is empty for a per-peer key.
	InstanceID string
	// EventLog is nil when none was sent.
	EventLog []byte
}

// DecodeGetKeyRequest decodes a /get-key body and checks its shape: every
// field present and well formed, sizes in bounds. It does not check that the
// key derives the peer ID or that the signature verifies.
func DecodeGetKeyRequest(data []byte) (*GetKey, error) {
	var r GetKeyRequest
	if err := decodeStrict(data, MaxGetKeyBody, &r); err != nil {
		return nil, err
	}
	g := &GetKey{ChallengeID: r.ChallengeID}
	if !challengeIDRe.MatchString(r.ChallengeID) {
		return nil, shapeErr("challengeId is not a challenge ID")
	}
	var err error
	if g.PeerID, err = ParsePeerID(r.PeerID); err != nil {
		return nil, err
	}
	g.PeerIDText = r.PeerID
	if g.Quote, err = b64(r.QuoteB64, "quoteB64", 1, measurement.MaxQuoteSize); err != nil {
		return nil, err
	}
	pk, err := b64(r.PeerPublicKeyB64, "peerPublicKeyB64", 32, 64)
	if err != nil {
		return nil, err
	}
	if g.PublicKey, err = ParsePublicKey(pk); err != nil {
		return nil, err
	}
	if g.Signature, err = b64(r.SignatureB64, "signatureB64", 64, 64); err != nil {
		return nil, err
	}
	if r.SealToB64 != "" {
		if g.SealTo, err = b64(r.SealToB64, "sealToB64", SealToSize, SealToSize); err != nil {
			return nil, err
		}
	}
	if r.InstanceID != "" {
		if err := CheckInstanceID(r.InstanceID); err != nil {
			return nil, err
		}
		g.InstanceID = r.InstanceID
	}
	if r.EventLogB64 != "" {
		if g.EventLog, err = b64(r.EventLogB64, "eventLogB64", 1, MaxEventLog); err != nil {
			return nil, err
		}
	}
	return g, nil
}

var instanceIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{7,63}$`)

// CheckInstanceID checks an instance ID's shape: 8-64 of a-z, 0-9 and '-',
// not starting with '-' (a UUID in its lowercase text form fits).
func CheckInstanceID(id string) error {
	if !instanceIDRe.MatchString(id) {
		return shapeErr("instanceId %q: want 8-64 of a-z 0-9 - (a lowercase UUID, for example)", truncate(id, 80))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// DecodeAttestRequest decodes an /attest body and returns its nonce.
func DecodeAttestRequest(data []byte) ([measurement.NonceSize]byte, error) {
	var r AttestRequest
	var n [measurement.NonceSize]byte
	if err := decodeStrict(data, MaxAttestBody, &r); err != nil {
		return n, err
	}
	b, err := b64(r.NonceB64, "nonceB64", measurement.NonceSize, measurement.NonceSize)
	if err != nil {
		return n, err
	}
	copy(n[:], b)
	return n, nil
}

// b64 decodes standard base64 (padded) and checks the decoded length.
func b64(s, field string, minLen, maxLen int) ([]byte, error) {
	if s == "" {
		return nil, shapeErr("%s is missing", field)
	}
	if base64.StdEncoding.DecodedLen(len(s)) > maxLen+3 {
		return nil, shapeErr("%s is longer than %d bytes", field, maxLen)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, shapeErr("%s is not standard base64: %v", field, err)
	}
	if len(b) < minLen || len(b) > maxLen {
		if minLen == maxLen {
			return nil, shapeErr("%s is %d bytes, want %d", field, len(b), minLen)
		}
		return nil, shapeErr("%s is %d bytes, want %d..%d", field, len(b), minLen, maxLen)
	}
	return b, nil
}

// ParsePeerID parses a peer ID given as its base58 text (the form bound into
// report_data) and refuses any other text form, so one peer has one text.
func ParsePeerID(s string) (peer.ID, error) {
	if s == "" {
		return "", shapeErr("peerId is missing")
	}
	if len(s) > maxPeerIDText {
		return "", shapeErr("peerId is longer than %d characters", maxPeerIDText)
	}
	id, err := peer.Decode(s)
	if err != nil {
		return "", shapeErr("peerId: %v", err)
	}
	if id.String() != s {
		return "", shapeErr("peerId must be the base58 form %s", id.String())
	}
	return id, nil
}

// ParsePublicKey accepts an Ed25519 public key as 32 raw bytes or in libp2p's
// protobuf encoding (crypto.MarshalPublicKey). Other key types are refused.
func ParsePublicKey(b []byte) (crypto.PubKey, error) {
	if len(b) == 32 {
		k, err := crypto.UnmarshalEd25519PublicKey(b)
		if err != nil {
			return nil, shapeErr("peerPublicKeyB64: %v", err)
		}
		return k, nil
	}
	k, err := crypto.UnmarshalPublicKey(b)
	if err != nil {
		return nil, shapeErr("peerPublicKeyB64: %v", err)
	}
	if k.Type() != crypto.Ed25519 {
		return nil, shapeErr("peerPublicKeyB64: key type %s, want Ed25519", k.Type())
	}
	return k, nil
}

// SigningDomain separates the /get-key signature from any other use of a
// node's key.
const SigningDomain = "fleetbox/kms/get-key/v1"

// SigningMessage is the canonical encoding a node signs with its Ed25519 key
// for /get-key: the domain and a NUL, then each field with a 4-byte
// big-endian length prefix where its length varies:
//
//	"fleetbox/kms/get-key/v1" 0x00
//	len(challengeId) challengeId
//	nonce (32)
//	len(peerId) peerId            (base58 text)
//	quoteHash (32)                (attest.Quote.Hash)
//	len(sealTo) sealTo            (0 or 32 bytes)
//	len(instanceId) instanceId    (0 for a per-peer key)
func SigningMessage(challengeID string, nonce [measurement.NonceSize]byte, peerID string, quoteHash measurement.QuoteHash, sealTo []byte, instanceID string) []byte {
	out := make([]byte, 0, len(SigningDomain)+1+4*4+len(challengeID)+len(peerID)+len(sealTo)+len(instanceID)+64)
	out = append(out, SigningDomain...)
	out = append(out, 0)
	out = binary.BigEndian.AppendUint32(out, uint32(len(challengeID)))
	out = append(out, challengeID...)
	out = append(out, nonce[:]...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(peerID)))
	out = append(out, peerID...)
	out = append(out, quoteHash[:]...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(sealTo)))
	out = append(out, sealTo...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(instanceID)))
	out = append(out, instanceID...)
	return out
}

// ResponseDomain separates the KMS's response signature.
const ResponseDomain = "fleetbox/kms/get-key-response/v1"

// ResponseMessage is what the KMS signs in a /get-key answer: the domain and
// a NUL, then length-prefixed challengeId, peerId, profile and instanceId
// (empty for a per-peer key), the audit sequence number (8 bytes
// big-endian), and SHA-256 of the delivered key material as sent (the 32 key
// bytes, or the HPKE ciphertext).
func ResponseMessage(challengeID, peerID, profile, instanceID string, auditSeq uint64, delivered []byte) []byte {
	return responseMessage(challengeID, peerID, profile, instanceID, auditSeq, sha256.Sum256(delivered))
}

func responseMessage(challengeID, peerID, profile, instanceID string, auditSeq uint64, h [32]byte) []byte {
	out := make([]byte, 0, len(ResponseDomain)+1+4*4+len(challengeID)+len(peerID)+len(profile)+len(instanceID)+8+32)
	out = append(out, ResponseDomain...)
	out = append(out, 0)
	for _, f := range []string{challengeID, peerID, profile, instanceID} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	out = binary.BigEndian.AppendUint64(out, auditSeq)
	return append(out, h[:]...)
}

// BindingFor returns what SHA-256 covers in the second half of a key
// release's report_data: the peer ID's base58 text, followed by the sealing
// key when there is one. A request for an instance key binds the instance ID
// too, in a length-prefixed form that starts with InstanceBindingDomain (a
// base58 peer ID never does), so neither form can be read as the other:
//
//	"fleetbox/kms/binding/v2" 0x00
//	len(peerId) peerId  len(sealTo) sealTo  len(instanceId) instanceId
func BindingFor(peerID string, sealTo []byte, instanceID string) []byte {
	if instanceID == "" {
		b := make([]byte, 0, len(peerID)+len(sealTo))
		b = append(b, peerID...)
		return append(b, sealTo...)
	}
	b := make([]byte, 0, len(InstanceBindingDomain)+1+3*4+len(peerID)+len(sealTo)+len(instanceID))
	b = append(b, InstanceBindingDomain...)
	b = append(b, 0)
	for _, f := range [][]byte{[]byte(peerID), sealTo, []byte(instanceID)} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// InstanceBindingDomain starts the report_data binding of an instance-key
// request.
const InstanceBindingDomain = "fleetbox/kms/binding/v2"

// ReportData is the report_data a node binds into its quote for a key
// release: nonce || SHA-256(BindingFor(peerId, sealTo, instanceId)).
func ReportData(nonce [measurement.NonceSize]byte, peerID string, sealTo []byte, instanceID string) measurement.ReportData {
	return measurement.BindPublicKey(nonce, BindingFor(peerID, sealTo, instanceID))
}

// SealInfo is the HPKE info string a sealed key is bound to: the profile and
// the peer, so a ciphertext for one peer or profile cannot pass for another.
func SealInfo(profile, peerID string) []byte {
	return []byte("fleetbox/kms/sealed-key/v1\x00" + profile + "\x00" + peerID)
}

// HPKE suite for sealed keys (RFC 9180): DHKEM(X25519, HKDF-SHA256),
// HKDF-SHA256, ChaCha20-Poly1305.
const SealSuite = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/ChaCha20Poly1305"

// Receipt is what a /get-key answer's signature covers, without the key: a
// node keeps it to prove later that the KMS recorded its grant at AuditSeq.
// `fleetbox kms audit verify --receipt FILE` fails when the log no longer
// holds that grant (the log was rolled back). DeliveredSHA256 is SHA-256 of
// the key material as sent (the key bytes, or the HPKE ciphertext).
type Receipt struct {
	ChallengeID     string `json:"challengeId"`
	PeerID          string `json:"peerId"`
	Profile         string `json:"profile"`
	InstanceID      string `json:"instanceId,omitempty"`
	AuditSeq        uint64 `json:"auditSeq"`
	DeliveredSHA256 string `json:"deliveredSha256"`
	SignatureB64    string `json:"signatureB64"`
}

// MaxReceiptSize bounds a receipt file.
const MaxReceiptSize = 4096

// NewReceipt builds the receipt of an answer.
func NewReceipt(challengeID, peerID, instanceID string, resp *GetKeyResponse, delivered []byte) Receipt {
	h := sha256.Sum256(delivered)
	return Receipt{
		ChallengeID: challengeID, PeerID: peerID, Profile: resp.Profile, InstanceID: instanceID,
		AuditSeq: resp.AuditSeq, DeliveredSHA256: hex.EncodeToString(h[:]), SignatureB64: resp.SignatureB64,
	}
}

// ParseReceipt decodes a receipt strictly and checks its signature by the
// KMS key pub.
func ParseReceipt(data []byte, pub ed25519.PublicKey) (*Receipt, error) {
	if len(data) > MaxReceiptSize {
		return nil, fmt.Errorf("receipt: %d bytes exceeds the %d-byte limit", len(data), MaxReceiptSize)
	}
	var r Receipt
	if err := strictjson.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	hb, err := hex.DecodeString(r.DeliveredSHA256)
	if err != nil || len(hb) != sha256.Size {
		return nil, errors.New("receipt: deliveredSha256 is not 32 hex bytes")
	}
	sig, err := base64.StdEncoding.DecodeString(r.SignatureB64)
	if err != nil || len(pub) != ed25519.PublicKeySize ||
		!ed25519.Verify(pub, responseMessage(r.ChallengeID, r.PeerID, r.Profile, r.InstanceID, r.AuditSeq, [32]byte(hb)), sig) {
		return nil, errors.New("receipt: not signed by the KMS key")
	}
	return &r, nil
}
