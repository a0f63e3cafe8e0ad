package kms_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clock is a settable clock starting at the test CA's epoch, when its
// certificates and collateral are valid.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: attesttest.Epoch} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// The measurements of the "published image" the test policy pins.
var (
	goodMRTD = attest.MRTD(attest.MockMeasurement("image mrtd"))
	goodRTMR = [4]attest.RTMR{
		attest.MockMeasurement("image rtmr0"), attest.MockMeasurement("image rtmr1"),
		attest.MockMeasurement("image rtmr2"), attest.MockMeasurement("image rtmr3"),
	}
)

func policyJSON(mrtd attest.MRTD, acceptMock bool, statuses ...attest.TcbStatus) []byte {
	p := attest.Policy{
		AllowedMrtd:        []string{mrtd.String()},
		AllowedRtmr0:       []string{goodRTMR[0].String()},
		AllowedRtmr1:       []string{goodRTMR[1].String()},
		AllowedRtmr2:       []string{goodRTMR[2].String()},
		AllowedRtmr3:       []string{goodRTMR[3].String()},
		AllowedTcbStatuses: statuses,
		AcceptMock:         acceptMock,
	}
	b, _ := json.Marshal(p)
	return b
}

type harnessOpts struct {
	noPolicy   bool
	maxPending int
	profile    string
	stateDir   string
	collateral *attest.Collateral
	// collateralSource, if set, replaces the static test collateral.
	collateralSource attest.CollateralSource
	kmsSource        attest.Source
	policy           []byte
	expectedEvents   []eventlog.Event
	// limits, if set, replaces "no per-client limits" (the harness clock
	// stands still, so buckets would never refill).
	limits *kms.Limits
	// stateMaxSize caps kms.db (a full disk).
	stateMaxSize int
	// logger, if set, receives the server's text log.
	logger io.Writer
	// witness is Config.AuditWitness.
	witness string
}

// noLimits switches every per-client limit off.
var noLimits = kms.Limits{AddressRate: -1, PeerRate: -1, PendingPerAddress: -1}

// harness is a KMS behind httptest with a test CA.
type harness struct {
	t          testing.TB
	ca         *attesttest.CA
	plat       *attesttest.Platform
	clock      *clock
	srv        *kms.Server
	ts         *httptest.Server
	url        string
	stateDir   string
	policyFile string
	secret     *kms.RootSecret
	stop       func()
}

// sharedCA is made once: key generation dominates small tests otherwise.
var sharedCA struct {
	once sync.Once
	ca   *attesttest.CA
	plat *attesttest.Platform
	coll *attest.Collateral
}

func testCA(t testing.TB) (*attesttest.CA, *attesttest.Platform, *attest.Collateral) {
	sharedCA.once.Do(func() {
		sharedCA.ca = attesttest.NewCA(t)
		sharedCA.plat = sharedCA.ca.NewPlatform(t, attesttest.DefaultPlatform)
		sharedCA.coll = sharedCA.ca.Collateral(t, attesttest.CollateralOptions{})
	})
	return sharedCA.ca, sharedCA.plat, sharedCA.coll
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	ca, plat, coll := testCA(t)
	if o.collateral != nil {
		coll = o.collateral
	}
	h := &harness{t: t, ca: ca, plat: plat, clock: newClock(), stateDir: o.stateDir}
	if h.stateDir == "" {
		h.stateDir = t.TempDir()
	}
	h.policyFile = filepath.Join(t.TempDir(), "policy.json")
	pj := o.policy
	if pj == nil {
		pj = policyJSON(goodMRTD, false)
	}
	if err := os.WriteFile(h.policyFile, pj, 0o600); err != nil {
		t.Fatal(err)
	}
	var pol *attest.Policy
	if !o.noPolicy {
		var err error
		if pol, err = attest.LoadPolicyFile(h.policyFile); err != nil {
			t.Fatal(err)
		}
	}
	secret, err := kms.LoadFileRootSecret(filepath.Join(h.stateDir, kms.RootSecretFile))
	if err != nil {
		t.Fatal(err)
	}
	h.secret = secret
	var collSrc attest.CollateralSource = attest.StaticCollateral{C: coll}
	if o.collateralSource != nil {
		collSrc = o.collateralSource
	}
	var logger *slog.Logger
	if o.logger != nil {
		logger = slog.New(slog.NewTextHandler(o.logger, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	limits := noLimits
	if o.limits != nil {
		limits = *o.limits
	}
	h.srv, err = kms.NewServer(kms.Config{
		StateDir:             h.stateDir,
		RootSecret:           secret,
		Verifier:             attest.NewVerifier(ca.VerifierConfig(collSrc, attesttest.Epoch)),
		Policy:               pol,
		PolicyFile:           h.policyFile,
		Profile:              o.profile,
		Source:               o.kmsSource,
		MaxPendingChallenges: o.maxPending,
		Limits:               limits,
		StateMaxSize:         o.stateMaxSize,
		AuditWitness:         o.witness,
		Logger:               logger,
		Now:                  h.clock.Now,
		ExpectedEvents:       o.expectedEvents,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.srv.RunWorkers(ctx)
	}()
	h.ts = httptest.NewServer(h.srv.Handler())
	h.url = h.ts.URL
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			h.ts.Close()
			cancel()
			<-done
			h.srv.Close()
		})
	}
	t.Cleanup(h.stop)
	return h
}

// node is a test node: an identity and a quote source.
type node struct {
	sk  ed25519.PrivateKey
	id  string
	src attest.Source
}

func newNode(t testing.TB, h *harness, seed byte, mrtd attest.MRTD) *node {
	sk := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	return &node{sk: sk, id: peerIDText(t, sk), src: &attesttest.Source{Platform: h.plat, Options: attesttest.QuoteOptions{MRTD: mrtd, RTMR: goodRTMR}}}
}

func peerIDText(t testing.TB, sk ed25519.PrivateKey) string {
	pub, err := crypto.UnmarshalEd25519PublicKey(sk.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// parts are the pieces of a /get-key request, for tests that forge them.
type parts struct {
	ChallengeID string
	Nonce       [32]byte
	PeerID      string
	Quote       []byte
	PubKey      []byte
	SignKey     ed25519.PrivateKey
	SealTo      []byte
	Sig         []byte // nil: signed from the fields at send time
	Body        []byte // non-nil: sent as is
}

// request sends a request with an optional Content-Type and decodes the
// answer into out (unless out is nil).
func (h *harness) request(t testing.TB, method, path, contentType, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, h.url+path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if out != nil {
		json.NewDecoder(res.Body).Decode(out)
	}
	return res.StatusCode
}

func (h *harness) post(t testing.TB, path string, body []byte) (int, []byte) {
	t.Helper()
	res, err := http.Post(h.url+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func (h *harness) challenge(t testing.TB, peerID string) (string, [32]byte) {
	t.Helper()
	st, b := h.post(t, api.PathChallenge, []byte(`{"peerId":"`+peerID+`"}`))
	if st != 200 {
		t.Fatalf("challenge: %d %s", st, b)
	}
	var cr api.ChallengeResponse
	if err := json.Unmarshal(b, &cr); err != nil {
		t.Fatal(err)
	}
	var n [32]byte
	nb, _ := base64.StdEncoding.DecodeString(cr.NonceB64)
	copy(n[:], nb)
	return cr.ChallengeID, n
}

// prepare gets a challenge for n and a correct quote for it.
func (h *harness) prepare(t testing.TB, n *node, sealTo []byte) *parts {
	t.Helper()
	id, nonce := h.challenge(t, n.id)
	q, err := n.src.GetQuote(context.Background(), api.ReportData(nonce, n.id, sealTo, ""))
	if err != nil {
		t.Fatal(err)
	}
	return &parts{ChallengeID: id, Nonce: nonce, PeerID: n.id, Quote: q, PubKey: n.sk.Public().(ed25519.PublicKey), SignKey: n.sk, SealTo: sealTo}
}

func (p *parts) body() []byte {
	if p.Body != nil {
		return p.Body
	}
	sig := p.Sig
	if sig == nil {
		var qh attest.QuoteHash
		if q, err := attest.ParseQuote(p.Quote); err == nil {
			qh = q.Hash
		}
		sig = ed25519.Sign(p.SignKey, api.SigningMessage(p.ChallengeID, p.Nonce, p.PeerID, qh, p.SealTo, ""))
	}
	r := api.GetKeyRequest{
		ChallengeID:      p.ChallengeID,
		QuoteB64:         base64.StdEncoding.EncodeToString(p.Quote),
		PeerID:           p.PeerID,
		PeerPublicKeyB64: base64.StdEncoding.EncodeToString(p.PubKey),
		SignatureB64:     base64.StdEncoding.EncodeToString(sig),
	}
	if p.SealTo != nil {
		r.SealToB64 = base64.StdEncoding.EncodeToString(p.SealTo)
	}
	b, _ := json.Marshal(r)
	return b
}

type result struct {
	status int
	err    api.Error
	resp   api.GetKeyResponse
}

func (h *harness) send(t testing.TB, p *parts) result {
	t.Helper()
	st, b := h.post(t, api.PathGetKey, p.body())
	r := result{status: st}
	if st == 200 {
		if err := json.Unmarshal(b, &r.resp); err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
	} else if err := json.Unmarshal(b, &r.err); err != nil {
		t.Fatalf("decoding error %d %s: %v", st, b, err)
	}
	return r
}
