// Package client fetches a node's storage key from the fleetbox KMS:
// challenge, quote over the challenge nonce and the node's peer ID (and an
// ephemeral X25519 key when sealing), signed /get-key. It can first check the
// KMS's own quote against a policy (/attest), and retries with backoff on
// 5xx and network errors, never on 4xx.
package client

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fleetbox/fleetbox/internal/strictjson"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/kms/audit"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// Config configures a Client.
type Config struct {
	// URL is the KMS base URL (http://kms:8443). Required.
	URL string
	// Identity is the node's Ed25519 key; its libp2p peer ID names the node
	// to the KMS. Required.
	Identity ed25519.PrivateKey
	// Source produces the node's quotes. Required for GetKey.
	Source attest.Source
	// Seal asks for the key sealed with HPKE to an ephemeral X25519 key that
	// the quote binds, so nothing between node and KMS sees it.
	Seal bool
	// InstanceID, if set, asks for the instance's key instead of the
	// peer's (api.GetKeyRequest.InstanceID); the quote binds it.
	InstanceID string
	// EventLog, if set, travels with every quote (api.GetKeyRequest.
	// EventLogB64), so a refusal can name the event that changed.
	EventLog []byte
	// KMSPublicKey pins the KMS's Ed25519 key (the one /attest binds): every
	// /get-key answer must carry its signature. Nil: not checked until
	// CheckKMS succeeds, which pins the key it verified.
	KMSPublicKey ed25519.PublicKey
	// HTTPClient: nil means a client with a 30 s timeout.
	HTTPClient *http.Client
	// MaxAttempts bounds tries per call on retryable failures. Zero: 5.
	MaxAttempts int
	// InitialBackoff (zero: 200 ms) doubles per retry up to MaxBackoff
	// (zero: 10 s), with jitter.
	InitialBackoff, MaxBackoff time.Duration
	Logger                     *slog.Logger
}

// Client talks to one KMS. It is safe for concurrent use.
type Client struct {
	cfg    Config
	base   string
	hc     *http.Client
	log    *slog.Logger
	pub    crypto.PubKey
	pubRaw []byte
	peerID peer.ID
	// kmsKey is the pinned KMS key (Config.KMSPublicKey or from CheckKMS).
	kmsKey atomic.Pointer[ed25519.PublicKey]
}

// New checks cfg. It connects nothing.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		return nil, errors.New("kms client: URL is required")
	}
	if len(cfg.Identity) != ed25519.PrivateKeySize {
		return nil, errors.New("kms client: an Ed25519 Identity is required")
	}
	if cfg.InstanceID != "" {
		if err := api.CheckInstanceID(cfg.InstanceID); err != nil {
			return nil, fmt.Errorf("kms client: %w", err)
		}
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	raw := []byte(cfg.Identity.Public().(ed25519.PublicKey))
	pub, err := crypto.UnmarshalEd25519PublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("kms client: identity: %w", err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("kms client: identity: %w", err)
	}
	c := &Client{cfg: cfg, base: strings.TrimRight(cfg.URL, "/"), hc: cfg.HTTPClient, log: lg, pub: pub, pubRaw: raw, peerID: id}
	if cfg.KMSPublicKey != nil {
		if len(cfg.KMSPublicKey) != ed25519.PublicKeySize {
			return nil, errors.New("kms client: KMSPublicKey is not an Ed25519 public key")
		}
		k := append(ed25519.PublicKey(nil), cfg.KMSPublicKey...)
		c.kmsKey.Store(&k)
	}
	return c, nil
}

// PeerID is the node's peer ID as the KMS sees it.
func (c *Client) PeerID() peer.ID { return c.peerID }

// APIError is a refusal from the KMS.
type APIError struct {
	Status  int
	Code    string
	Details []string
	// RetryAfter is the server's Retry-After (429, 503), zero without one.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("kms refused (HTTP %d %s)", e.Status, e.Code)
	if len(e.Details) > 0 {
		msg += ": " + strings.Join(e.Details, "; ")
	}
	return msg
}

// Temporary reports whether a later attempt may succeed (5xx, and 429: a
// per-client limit that refills).
func (e *APIError) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests
}

// retryable: network errors, 5xx and 429; never another 4xx, never a
// cancelled context.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Temporary()
	}
	var pe *permanentError
	return !errors.As(err, &pe)
}

// permanentError marks failures a retry cannot fix: a malformed or unsigned
// answer, an unparseable own quote. Quote source errors are retried (the TDX
// quote provider can be busy).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// maxRetryAfter bounds how long a server's Retry-After can make us wait.
const maxRetryAfter = time.Minute

func (c *Client) retry(ctx context.Context, what string, f func() error) error {
	backoff := c.cfg.InitialBackoff
	var err error
	for attempt := 1; ; attempt++ {
		if err = f(); err == nil || !retryable(ctx, err) || attempt >= c.cfg.MaxAttempts {
			break
		}
		d := backoff/2 + time.Duration(mathrand.Int64N(int64(backoff)/2+1))
		if ae := (*APIError)(nil); errors.As(err, &ae) && ae.RetryAfter > d {
			d = min(ae.RetryAfter, maxRetryAfter)
		}
		c.log.Warn("kms request failed; retrying", "what", what, "attempt", attempt, "in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// do sends a JSON body and decodes a JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return &permanentError{err}
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return &permanentError{err}
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, api.MaxResponseBody+1))
	if err != nil {
		return err
	}
	if len(data) > api.MaxResponseBody {
		return &permanentError{fmt.Errorf("%s %s: response exceeds %d bytes", method, path, api.MaxResponseBody)}
	}
	if res.StatusCode != http.StatusOK {
		ae := &APIError{Status: res.StatusCode, Code: "http_" + fmt.Sprint(res.StatusCode)}
		if s, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && s > 0 {
			ae.RetryAfter = time.Duration(s) * time.Second
		}
		var e api.Error
		if strictjson.UnmarshalKnown(data, &e) == nil && e.Error != "" {
			ae.Code, ae.Details = e.Error, e.Details
		}
		return ae
	}
	if err := strictjson.UnmarshalKnown(data, out); err != nil {
		return &permanentError{fmt.Errorf("%s %s: decoding response: %w", method, path, err)}
	}
	return nil
}

// Key is a storage key from the KMS. It never prints; copy it out with
// Bytes and Wipe it when done.
type Key struct {
	b [api.KeySize]byte
	// Profile is the KMS profile it was derived for; AuditSeq the audit
	// record of its release.
	Profile  string
	AuditSeq uint64
	// Sealed is true when it arrived HPKE-sealed.
	Sealed bool
	// Receipt is the answer's signed facts without the key: keep it to
	// prove later that the KMS recorded this grant (`fleetbox kms audit
	// verify --receipt`).
	Receipt api.Receipt
}

// Bytes returns a copy of the key.
func (k *Key) Bytes() []byte { return append([]byte(nil), k.b[:]...) }

// Equal compares in constant time.
func (k *Key) Equal(o *Key) bool { return subtle.ConstantTimeCompare(k.b[:], o.b[:]) == 1 }

// Wipe zeroes the key.
func (k *Key) Wipe() { clear(k.b[:]) }

// Format implements fmt.Formatter: the key is never printed.
func (Key) Format(f fmt.State, _ rune) { io.WriteString(f, "Key(redacted)") }

// LogValue implements slog.LogValuer.
func (Key) LogValue() slog.Value { return slog.StringValue("Key(redacted)") }

// GetKey runs challenge -> quote -> get-key, with a fresh challenge on each
// retry.
func (c *Client) GetKey(ctx context.Context) (*Key, error) {
	if c.cfg.Source == nil {
		return nil, errors.New("kms client: no quote source configured")
	}
	var key *Key
	err := c.retry(ctx, "getting storage key", func() error {
		k, err := c.getKeyOnce(ctx)
		key = k
		return err
	})
	return key, err
}

func (c *Client) getKeyOnce(ctx context.Context) (*Key, error) {
	idText := c.peerID.String()
	var ch api.ChallengeResponse
	if err := c.do(ctx, http.MethodPost, api.PathChallenge, api.ChallengeRequest{PeerID: idText}, &ch); err != nil {
		return nil, err
	}
	nb, err := base64.StdEncoding.DecodeString(ch.NonceB64)
	if err != nil || len(nb) != attest.NonceSize {
		return nil, &permanentError{errors.New("challenge: nonceB64 is not 32 bytes of base64")}
	}
	var nonce [attest.NonceSize]byte
	copy(nonce[:], nb)

	var sealKey *ecdh.PrivateKey
	var sealTo []byte
	if c.cfg.Seal {
		if sealKey, err = ecdh.X25519().GenerateKey(rand.Reader); err != nil {
			return nil, &permanentError{err}
		}
		sealTo = sealKey.PublicKey().Bytes()
	}
	evd, err := attest.GetEvidence(ctx, c.cfg.Source, api.ReportData(nonce, idText, sealTo, c.cfg.InstanceID))
	if err != nil {
		return nil, fmt.Errorf("getting quote from %s: %w", c.cfg.Source.Kind(), err)
	}
	raw := evd.Quote
	q, err := attest.ParseQuote(raw)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("parsing own quote: %w", err)}
	}
	sig := ed25519.Sign(c.cfg.Identity, api.SigningMessage(ch.ChallengeID, nonce, idText, q.Hash, sealTo, c.cfg.InstanceID))
	req := api.GetKeyRequest{
		ChallengeID:      ch.ChallengeID,
		QuoteB64:         base64.StdEncoding.EncodeToString(raw),
		PeerID:           idText,
		PeerPublicKeyB64: base64.StdEncoding.EncodeToString(c.pubRaw),
		SignatureB64:     base64.StdEncoding.EncodeToString(sig),
		InstanceID:       c.cfg.InstanceID,
	}
	// The source's own log (the dstack agent's) travels unless the caller
	// gave one (the appliance's, replayed at boot).
	elog := c.cfg.EventLog
	if elog == nil {
		elog = evd.EventLog
	}
	if len(elog) > api.MaxEventLog {
		return nil, &permanentError{fmt.Errorf("the event log of %d bytes exceeds the KMS's %d-byte limit", len(elog), api.MaxEventLog)}
	}
	if elog != nil {
		req.EventLogB64 = base64.StdEncoding.EncodeToString(elog)
	}
	if sealTo != nil {
		req.SealToB64 = base64.StdEncoding.EncodeToString(sealTo)
	}
	var resp api.GetKeyResponse
	if err := c.do(ctx, http.MethodPost, api.PathGetKey, req, &resp); err != nil {
		return nil, err
	}
	k := &Key{Profile: resp.Profile, AuditSeq: resp.AuditSeq, Sealed: sealTo != nil}
	if err := c.checkResponse(ch.ChallengeID, idText, &resp); err != nil {
		return nil, &permanentError{err}
	}
	switch {
	case sealTo != nil:
		if resp.Key != "" {
			return nil, &permanentError{errors.New("get-key: KMS sent a plain key to a sealed request")}
		}
		ct, err := base64.StdEncoding.DecodeString(resp.SealedKeyB64)
		if err != nil {
			return nil, &permanentError{errors.New("get-key: sealedKeyB64 is not base64")}
		}
		pt, err := OpenSealed(sealKey, ct, resp.Profile, idText)
		if err != nil {
			return nil, &permanentError{err}
		}
		copy(k.b[:], pt)
		clear(pt)
		k.Receipt = api.NewReceipt(ch.ChallengeID, idText, c.cfg.InstanceID, &resp, ct)
	default:
		b, err := hex.DecodeString(resp.Key)
		if err != nil || len(b) != api.KeySize {
			return nil, &permanentError{errors.New("get-key: key is not 32 bytes of hex")}
		}
		copy(k.b[:], b)
		k.Receipt = api.NewReceipt(ch.ChallengeID, idText, c.cfg.InstanceID, &resp, b)
		clear(b)
	}
	return k, nil
}

// checkResponse verifies the KMS's signature on a /get-key answer when a KMS
// key is pinned.
func (c *Client) checkResponse(challengeID, peerID string, resp *api.GetKeyResponse) error {
	pin := c.kmsKey.Load()
	if pin == nil {
		return nil
	}
	var delivered []byte
	var err error
	if resp.SealedKeyB64 != "" {
		delivered, err = base64.StdEncoding.DecodeString(resp.SealedKeyB64)
	} else {
		delivered, err = hex.DecodeString(resp.Key)
	}
	if err != nil {
		return fmt.Errorf("get-key: %w: key material is not encoded as documented", ErrKMSNotTrusted)
	}
	defer clear(delivered)
	sig, err := base64.StdEncoding.DecodeString(resp.SignatureB64)
	if err != nil || !ed25519.Verify(*pin, api.ResponseMessage(challengeID, peerID, resp.Profile, c.cfg.InstanceID, resp.AuditSeq, delivered), sig) {
		return fmt.Errorf("get-key: %w: the answer is not signed by the pinned KMS key", ErrKMSNotTrusted)
	}
	return nil
}

// OpenSealed opens an HPKE-sealed key (api.SealSuite, info
// api.SealInfo(profile, peerID)).
func OpenSealed(sk *ecdh.PrivateKey, ct []byte, profile, peerID string) ([]byte, error) {
	hk, err := hpke.NewDHKEMPrivateKey(sk)
	if err != nil {
		return nil, fmt.Errorf("opening sealed key: %w", err)
	}
	pt, err := hpke.Open(hk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), api.SealInfo(profile, peerID), ct)
	if err != nil {
		return nil, fmt.Errorf("opening sealed key: %w", err)
	}
	if len(pt) != api.KeySize {
		clear(pt)
		return nil, fmt.Errorf("opening sealed key: %d bytes, want %d", len(pt), api.KeySize)
	}
	return pt, nil
}

// KMSIdentity is what CheckKMS established about the KMS.
type KMSIdentity struct {
	// PublicKey is the KMS's Ed25519 key (it signs the audit head).
	PublicKey ed25519.PublicKey
	Verdict   *attest.Verdict
}

// ErrKMSNotTrusted means the KMS's own quote failed verification, binding or
// policy.
var ErrKMSNotTrusted = errors.New("kms is not trusted")

// CheckKMS asks the KMS for its own quote over a fresh nonce and its signing
// key, verifies the quote with v, checks the binding, and judges it with pol.
// On success the key is pinned: later GetKey answers must be signed by it.
func (c *Client) CheckKMS(ctx context.Context, v *attest.Verifier, pol *attest.Policy) (*KMSIdentity, error) {
	if v == nil || pol == nil {
		return nil, errors.New("kms client: CheckKMS needs a verifier and a policy")
	}
	var id *KMSIdentity
	err := c.retry(ctx, "checking the KMS", func() error {
		var nonce [attest.NonceSize]byte
		if _, err := rand.Read(nonce[:]); err != nil {
			return &permanentError{err}
		}
		var resp api.AttestResponse
		if err := c.do(ctx, http.MethodPost, api.PathAttest, api.AttestRequest{NonceB64: base64.StdEncoding.EncodeToString(nonce[:])}, &resp); err != nil {
			return err
		}
		pub, err := base64.StdEncoding.DecodeString(resp.PublicKeyB64)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return &permanentError{fmt.Errorf("%w: publicKeyB64 is not an Ed25519 key", ErrKMSNotTrusted)}
		}
		raw, err := base64.StdEncoding.DecodeString(resp.QuoteB64)
		if err != nil {
			return &permanentError{fmt.Errorf("%w: quoteB64 is not base64", ErrKMSNotTrusted)}
		}
		verdict, err := v.Verify(ctx, raw)
		if err != nil {
			return &permanentError{fmt.Errorf("%w: its quote: %w", ErrKMSNotTrusted, err)}
		}
		if err := attest.CheckBinding(verdict.Quote.ReportData, nonce, pub); err != nil {
			return &permanentError{fmt.Errorf("%w: %w", ErrKMSNotTrusted, err)}
		}
		if resp.EventLogB64 != "" {
			elog, err := base64.StdEncoding.DecodeString(resp.EventLogB64)
			if err != nil || len(elog) > api.MaxEventLog {
				return &permanentError{fmt.Errorf("%w: eventLogB64 is not base64 of at most %d bytes", ErrKMSNotTrusted, api.MaxEventLog)}
			}
			if _, err := eventlog.Bind(elog, verdict); err != nil {
				return &permanentError{fmt.Errorf("%w: its event log: %w", ErrKMSNotTrusted, err)}
			}
		}
		if err := pol.Evaluate(verdict); err != nil {
			return &permanentError{fmt.Errorf("%w: %w", ErrKMSNotTrusted, err)}
		}
		id = &KMSIdentity{PublicKey: pub, Verdict: verdict}
		if pin := c.kmsKey.Load(); pin != nil && !pin.Equal(ed25519.PublicKey(pub)) {
			return &permanentError{fmt.Errorf("%w: its key differs from the pinned KMSPublicKey", ErrKMSNotTrusted)}
		}
		k := ed25519.PublicKey(pub)
		c.kmsKey.Store(&k)
		return nil
	})
	return id, err
}

// Trust is how a node knows its KMS before it proves itself to it: the KMS's
// own quote (/attest) judged by Policy, or its signing key pinned in
// Config.KMSPublicKey, or both. The zero Trust checks nothing.
type Trust struct {
	// Policy judges the KMS's quote; nil: the quote is not asked for.
	Policy *attest.Policy
	// Verifier checks the KMS's quote; nil: attest.NewVerifier defaults
	// (the Intel root, no collateral: only a mock-accepting or
	// Unverified-accepting policy passes).
	Verifier *attest.Verifier
}

// Fetch is the one path by which a node gets its key from the KMS, inside
// the appliance (appliance.Boot) and outside it (`fleetbox node run --kms`):
// check the KMS as trust says, then run GetKey. Each failed attempt is
// logged once with its number, so a console shows a boot waiting for its
// KMS; a refusal (4xx) or a KMS that fails its check ends it at once.
func (c *Client) Fetch(ctx context.Context, trust Trust) (*Key, *KMSIdentity, error) {
	var id *KMSIdentity
	switch {
	case trust.Policy != nil:
		v := trust.Verifier
		if v == nil {
			v = attest.NewVerifier(attest.VerifierConfig{})
		}
		var err error
		if id, err = c.CheckKMS(ctx, v, trust.Policy); err != nil {
			return nil, nil, fmt.Errorf("checking the KMS at %s before trusting it: %w", c.base, err)
		}
		c.log.Info("KMS checked", "url", c.base, "tcbStatus", id.Verdict.TcbStatus, "mock", id.Verdict.Mock,
			"key", base64.StdEncoding.EncodeToString(id.PublicKey))
	case c.kmsKey.Load() != nil:
		c.log.Info("KMS signing key pinned; its answers must carry that key's signature", "url", c.base)
	default:
		c.log.Warn("the KMS is not verified: no KMS policy and no pinned KMS key; anything that answers at the URL is trusted", "url", c.base)
	}
	key, err := c.GetKey(ctx)
	if err != nil {
		return nil, id, fmt.Errorf("getting the key from the KMS at %s: %w", c.base, err)
	}
	return key, id, nil
}

// Health fetches /health.
func (c *Client) Health(ctx context.Context) (*api.Health, error) {
	var h api.Health
	if err := c.do(ctx, http.MethodGet, api.PathHealth, nil, &h); err != nil {
		return nil, fmt.Errorf("kms health: %w", err)
	}
	return &h, nil
}

// AuditPage fetches one page of the audit log.
func (c *Client) AuditPage(ctx context.Context, after uint64) (*audit.Page, error) {
	var p audit.Page
	err := c.retry(ctx, "reading audit log", func() error {
		return c.do(ctx, http.MethodGet, fmt.Sprintf("%s?after=%d", api.PathAudit, after), nil, &p)
	})
	return &p, err
}

// VerifyAudit reads the whole audit log page by page and checks the chain
// and the signed head. pub pins the KMS key; nil trusts the key served with
// the head (then only consistency is proven).
func (c *Client) VerifyAudit(ctx context.Context, pub ed25519.PublicKey) (*audit.ChainVerifier, audit.Head, error) {
	return audit.VerifyPages(func(after uint64) (*audit.Page, error) { return c.AuditPage(ctx, after) }, pub)
}

// LoadIdentity reads an Ed25519 private key in PEM PKCS#8 (the node's
// identity file format). With create, a missing file is created (mode 0600)
// with a fresh key; created then says so.
func LoadIdentity(path string, create bool) (sk ed25519.PrivateKey, created bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		_, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, false, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(sk)
		if err != nil {
			return nil, false, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("creating identity: %w", err)
		}
		if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("creating identity: %w", err)
		}
		if err := f.Close(); err != nil {
			return nil, false, fmt.Errorf("creating identity: %w", err)
		}
		return sk, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading identity: %w", err)
	}
	defer clear(data)
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, false, fmt.Errorf("reading identity: %s is not a PEM PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, false, fmt.Errorf("reading identity %s: %w", path, err)
	}
	sk, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, false, fmt.Errorf("reading identity: %s holds a %T, want Ed25519", path, k)
	}
	return sk, false, nil
}
