package kms_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/kms/audit"
	"github.com/fleetbox/fleetbox/kms/client"
)

func newClient(t testing.TB, h *harness, n *node, seal bool) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{URL: h.url, Identity: n.sk, Source: n.src, Seal: seal, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func expectKey(t testing.TB, h *harness, profile, peerID string) []byte {
	t.Helper()
	k, err := h.secret.DeriveKey(profile, peerID, "")
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), k[:]...)
}

func TestGrantPlainAndSealed(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	ctx := context.Background()
	want := expectKey(t, h, kms.DefaultProfile, n.id)

	plain, err := newClient(t, h, n, false).GetKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := newClient(t, h, n, true).GetKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain.Bytes(), want) || !bytes.Equal(sealed.Bytes(), want) {
		t.Fatal("released keys differ from HKDF(root, fleetbox/storage/default/<peer>)")
	}
	if plain.Sealed || !sealed.Sealed || plain.AuditSeq != 1 || sealed.AuditSeq != 2 || plain.Profile != kms.DefaultProfile {
		t.Fatalf("plain %+v sealed %+v", plain, sealed)
	}
	pg, err := h.srv.AuditPage(0, 10)
	if err != nil || len(pg.Entries) != 2 {
		t.Fatalf("audit: %v", err)
	}
	var rec audit.Record
	json.Unmarshal(pg.Entries[1].Record, &rec)
	if rec.Decision != audit.Granted || rec.PeerID != n.id || rec.MRTD != goodMRTD.String() || len(rec.RTMR) != 4 ||
		rec.RTMR[2] != goodRTMR[2].String() || rec.TcbStatus != string(attest.TcbUpToDate) || !rec.Sealed || rec.Mock ||
		len(rec.QuoteHash) != 64 || rec.Profile != kms.DefaultProfile || !rec.Time.Equal(attesttest.Epoch) {
		t.Fatalf("grant record %+v", rec)
	}
	if s := fmt.Sprintf("%v %s %x %+v %v %#v", plain, plain, plain, plain, *plain, *plain); strings.Contains(s, hex.EncodeToString(want)) || strings.Count(s, "redacted") != 6 {
		t.Fatal("a formatted key shows its bytes")
	}
}

// A sealed response carries only ciphertext, which opens only with the
// ephemeral key the quote bound.
func TestSealedKeyOpensOnlyWithBoundKey(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 2, goodMRTD)
	sk, _ := ecdh.X25519().GenerateKey(rand.Reader)
	p := h.prepare(t, n, sk.PublicKey().Bytes())
	r := h.send(t, p)
	if r.status != 200 || r.resp.Key != "" || r.resp.SealedKeyB64 == "" {
		t.Fatalf("%+v", r)
	}
	ct, _ := base64.StdEncoding.DecodeString(r.resp.SealedKeyB64)
	pt, err := client.OpenSealed(sk, ct, r.resp.Profile, n.id)
	if err != nil || !bytes.Equal(pt, expectKey(t, h, kms.DefaultProfile, n.id)) {
		t.Fatalf("open: %v", err)
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	if _, err := client.OpenSealed(other, ct, r.resp.Profile, n.id); err == nil {
		t.Fatal("another X25519 key opened the sealed key")
	}
	if _, err := client.OpenSealed(sk, ct, r.resp.Profile, "12D3KooWother"); err == nil {
		t.Fatal("the sealed key opened under another peer's info")
	}
}

func TestErrorCodes(t *testing.T) {
	ca2 := attesttest.NewCA(t)
	plat2 := ca2.NewPlatform(t, attesttest.DefaultPlatform)
	type tc struct {
		opts   harnessOpts
		mutate func(t *testing.T, h *harness, n *node, p *parts)
		seal   bool
		code   string
		status int
	}
	cases := map[string]tc{
		"not JSON": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) { p.Body = []byte("nope") }, code: api.CodeInvalidRequest, status: 400},
		"unknown field": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) {
			b := p.body()
			p.Body = append(b[:len(b)-1], []byte(`,"extra":1}`)...)
		}, code: api.CodeInvalidRequest, status: 400},
		"trailing data": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) { p.Body = append(p.body(), []byte(`{}`)...) }, code: api.CodeInvalidRequest, status: 400},
		"oversize body": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) {
			p.Body = append([]byte(`{"challengeId":"`), bytes.Repeat([]byte("a"), api.MaxGetKeyBody+10)...)
		}, code: api.CodeInvalidRequest, status: 400},
		"quote not base64": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) {
			p.Body = bytes.Replace(p.body(), []byte(`"quoteB64":"`), []byte(`"quoteB64":"!!`), 1)
		}, code: api.CodeInvalidRequest, status: 400},
		"peer id not base58":  {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) { p.PeerID = "not-a-peer" }, code: api.CodeInvalidRequest, status: 400},
		"seal key wrong size": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) { p.SealTo = make([]byte, 31) }, code: api.CodeInvalidRequest, status: 400},
		"rsa-size public key": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) { p.PubKey = make([]byte, 40) }, code: api.CodeInvalidRequest, status: 400},
		"no policy":           {opts: harnessOpts{noPolicy: true}, code: api.CodePolicyNotReady, status: 503},
		"unknown challenge": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) {
			p.ChallengeID = base64.RawURLEncoding.EncodeToString(make([]byte, 16))
		}, code: api.CodeInvalidChallenge, status: 401},
		"expired challenge": {mutate: func(_ *testing.T, h *harness, _ *node, _ *parts) { h.clock.Advance(61 * time.Second) }, code: api.CodeInvalidChallenge, status: 401},
		"challenge of another peer": {mutate: func(t *testing.T, h *harness, _ *node, p *parts) {
			other := newNode(t, h, 99, goodMRTD)
			p.ChallengeID, p.Nonce = h.challenge(t, other.id)
		}, code: api.CodeInvalidChallenge, status: 401},
		"key of another peer": {mutate: func(t *testing.T, h *harness, _ *node, p *parts) {
			other := newNode(t, h, 98, goodMRTD)
			p.PubKey, p.SignKey = other.sk.Public().(ed25519.PublicKey), other.sk
		}, code: api.CodeInvalidSignature, status: 401},
		"signature by another key": {mutate: func(t *testing.T, h *harness, _ *node, p *parts) {
			p.SignKey = newNode(t, h, 97, goodMRTD).sk
		}, code: api.CodeInvalidSignature, status: 401},
		"signature over another quote": {mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			src := *n.src.(*attesttest.Source)
			src.Options.MRConfigID = attest.MRConfigID{1}
			q2, _ := src.GetQuote(context.Background(), api.ReportData(p.Nonce, p.PeerID, nil, ""))
			qq, _ := attest.ParseQuote(q2)
			p.Sig = ed25519.Sign(n.sk, api.SigningMessage(p.ChallengeID, p.Nonce, p.PeerID, qq.Hash, nil, ""))
		}, code: api.CodeInvalidSignature, status: 401},
		"signature without sealTo": {seal: true, mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			q, _ := attest.ParseQuote(p.Quote)
			p.Sig = ed25519.Sign(n.sk, api.SigningMessage(p.ChallengeID, p.Nonce, p.PeerID, q.Hash, nil, ""))
		}, code: api.CodeInvalidSignature, status: 401},
		"garbage quote": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) { p.Quote = []byte("garbage quote bytes") }, code: api.CodeAttestationInvalid, status: 403},
		"quote from an untrusted CA": {mutate: func(t *testing.T, _ *harness, n *node, p *parts) {
			p.Quote = plat2.Quote(t, attesttest.QuoteOptions{MRTD: goodMRTD, RTMR: goodRTMR, ReportData: api.ReportData(p.Nonce, n.id, nil, "")})
		}, code: api.CodeAttestationInvalid, status: 403},
		"tampered quote body": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) {
			p.Quote = bytes.Clone(p.Quote)
			p.Quote[48+200] ^= 1 // in the signed TD report body: the quote signature no longer holds
		}, code: api.CodeAttestationInvalid, status: 403},
		"stale collateral": {
			opts: harnessOpts{collateral: func() *attest.Collateral {
				ca, _, _ := testCA(t)
				return ca.Collateral(t, attesttest.CollateralOptions{Issue: attesttest.Epoch.Add(-48 * time.Hour), Next: attesttest.Epoch.Add(-time.Hour)})
			}()},
			code: api.CodeCollateralExpired, status: 503,
		},
		"collateral not yet valid": {
			opts: harnessOpts{collateral: func() *attest.Collateral {
				ca, _, _ := testCA(t)
				return ca.Collateral(t, attesttest.CollateralOptions{Issue: attesttest.Epoch.Add(time.Hour)})
			}()},
			code: api.CodeCollateralNotYetValid, status: 503,
		},
		"collateral of another platform": {
			opts: harnessOpts{collateral: func() *attest.Collateral {
				ca, _, _ := testCA(t)
				return ca.Collateral(t, attesttest.CollateralOptions{FMSPC: attest.FMSPC{9, 9, 9}})
			}()},
			code: api.CodeCollateralFMSPC, status: 503,
		},
		"collateral without CRLs": {
			opts: harnessOpts{collateral: func() *attest.Collateral {
				ca, _, _ := testCA(t)
				return ca.Collateral(t, attesttest.CollateralOptions{NoCRLs: true})
			}()},
			code: api.CodeCollateralNoCRLs, status: 503,
		},
		"no collateral to be had": {
			opts: harnessOpts{collateralSource: kms.CollateralSource(attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: t.TempDir()}))},
			code: api.CodeCollateralUnavailable, status: 503,
		},
		"report data of another nonce": {mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			var other [32]byte
			p.Quote, _ = n.src.GetQuote(context.Background(), api.ReportData(other, p.PeerID, nil, ""))
		}, code: api.CodeReportDataMismatch, status: 403},
		"report data without sealTo": {seal: true, mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			p.Quote, _ = n.src.GetQuote(context.Background(), api.ReportData(p.Nonce, p.PeerID, nil, ""))
		}, code: api.CodeReportDataMismatch, status: 403},
		"report data binding the raw key, not the peer id": {mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			p.Quote, _ = n.src.GetQuote(context.Background(), attest.BindPublicKey(p.Nonce, p.PubKey))
		}, code: api.CodeReportDataMismatch, status: 403},
		"wrong mrtd": {mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			src := *n.src.(*attesttest.Source)
			src.Options.MRTD = attest.MRTD(attest.MockMeasurement("other image"))
			p.Quote, _ = src.GetQuote(context.Background(), api.ReportData(p.Nonce, p.PeerID, nil, ""))
		}, code: api.CodePolicyRejected, status: 403},
		"debug td": {mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			src := *n.src.(*attesttest.Source)
			src.Options.TDAttributes = attest.TDAttributes{1}
			p.Quote, _ = src.GetQuote(context.Background(), api.ReportData(p.Nonce, p.PeerID, nil, ""))
		}, code: api.CodePolicyRejected, status: 403},
		"mock quote refused": {mutate: func(_ *testing.T, _ *harness, _ *node, p *parts) {
			m := &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD, RTMR: goodRTMR}}
			p.Quote, _ = m.GetQuote(context.Background(), api.ReportData(p.Nonce, p.PeerID, nil, ""))
		}, code: api.CodePolicyRejected, status: 403},
		"tcb out of date": {
			opts: harnessOpts{collateral: func() *attest.Collateral {
				ca, _, _ := testCA(t)
				return ca.Collateral(t, attesttest.CollateralOptions{Levels: attesttest.LevelsFor(attest.TcbOutOfDate)})
			}()},
			code: api.CodePolicyRejected, status: 403,
		},
		"low-order seal key": {seal: true, mutate: func(_ *testing.T, _ *harness, n *node, p *parts) {
			p.SealTo = make([]byte, 32) // the all-zero point: X25519 gives a zero secret
			p.Quote, _ = n.src.GetQuote(context.Background(), api.ReportData(p.Nonce, p.PeerID, p.SealTo, ""))
		}, code: api.CodeInvalidRequest, status: 400},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, c.opts)
			n := newNode(t, h, 1, goodMRTD)
			var sealTo []byte
			if c.seal {
				sk, _ := ecdh.X25519().GenerateKey(rand.Reader)
				sealTo = sk.PublicKey().Bytes()
			}
			p := h.prepare(t, n, sealTo)
			if c.mutate != nil {
				c.mutate(t, h, n, p)
			}
			r := h.send(t, p)
			if r.status != c.status || r.err.Error != c.code {
				t.Fatalf("got %d %s %v, want %d %s", r.status, r.err.Error, r.err.Details, c.status, c.code)
			}
			if api.Status(c.code) != c.status {
				t.Fatalf("api.Status(%s) = %d", c.code, api.Status(c.code))
			}
			// Every decision about a verified request is audited, with the
			// reason; refusals before the signature proves the peer ID
			// (anyone can send those for free) are only counted.
			pg, err := h.srv.AuditPage(0, 10)
			unverified := c.code == api.CodePolicyNotReady || c.code == api.CodeInvalidChallenge || c.code == api.CodeInvalidSignature ||
				(c.code == api.CodeInvalidRequest && !c.seal) || name == "garbage quote"
			if unverified {
				if err != nil || len(pg.Entries) != 0 {
					t.Fatalf("audit: %v %d entries, want none for a refusal without a verified identity", err, len(pg.Entries))
				}
				if got := metricValue(t, h, "fleetbox_kms_key_denials_total", c.code); got != 1 {
					t.Fatalf("fleetbox_kms_key_denials_total{reason=%q} = %v, want 1", c.code, got)
				}
				return
			}
			if err != nil || len(pg.Entries) != 1 {
				t.Fatalf("audit: %v %d entries", err, len(pg.Entries))
			}
			var rec audit.Record
			json.Unmarshal(pg.Entries[0].Record, &rec)
			if rec.Decision != audit.Denied || rec.Reason != c.code {
				t.Fatalf("audit record %+v", rec)
			}
		})
	}
}

func TestTooManyChallenges(t *testing.T) {
	h := newHarness(t, harnessOpts{maxPending: 2})
	n := newNode(t, h, 1, goodMRTD)
	h.challenge(t, n.id)
	id, _ := h.challenge(t, n.id)
	st, b := h.post(t, api.PathChallenge, []byte(`{"peerId":"`+n.id+`"}`))
	var e api.Error
	json.Unmarshal(b, &e)
	if st != 503 || e.Error != api.CodeTooManyChallenges {
		t.Fatalf("%d %s", st, b)
	}
	// Using one frees a slot; expiry frees the rest.
	h.send(t, &parts{ChallengeID: id, PeerID: n.id, Quote: []byte("x"), PubKey: n.sk.Public().(ed25519.PublicKey), SignKey: n.sk})
	h.challenge(t, n.id)
	h.clock.Advance(time.Minute)
	h.challenge(t, n.id)
	h.challenge(t, n.id)
}

// The checks run in order and the challenge is consumed before the quote is
// looked at: a refused request cannot be retried, not even with a good quote.
func TestCheckOrder(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	p := h.prepare(t, n, nil)
	good := p.Quote
	p.Quote = bytes.Clone(good)
	p.Quote[48+200] ^= 1
	if r := h.send(t, p); r.err.Error != api.CodeAttestationInvalid {
		t.Fatalf("bad quote: %+v", r)
	}
	p.Quote = good
	if r := h.send(t, p); r.err.Error != api.CodeInvalidChallenge {
		t.Fatalf("retry of a consumed challenge with a good quote: %+v", r)
	}

	// Signature before quote: a forged signature over a bad quote is a
	// signature failure.
	p = h.prepare(t, n, nil)
	p.Sig = make([]byte, 64)
	p.Quote = bytes.Clone(good)
	p.Quote[48+200] ^= 1
	if r := h.send(t, p); r.err.Error != api.CodeInvalidSignature {
		t.Fatalf("forged signature and bad quote: %+v", r)
	}
	// Quote before binding: an unverifiable quote with the wrong binding
	// is attestation_invalid.
	p = h.prepare(t, n, nil)
	var zero [32]byte
	p.Quote, _ = n.src.GetQuote(context.Background(), api.ReportData(zero, n.id, nil, ""))
	p.Quote[48+200] ^= 1
	if r := h.send(t, p); r.err.Error != api.CodeAttestationInvalid {
		t.Fatalf("bad quote and bad binding: %+v", r)
	}
	// Binding before policy: a quote of an unpinned image with the wrong
	// binding is report_data_mismatch.
	p = h.prepare(t, n, nil)
	src := *n.src.(*attesttest.Source)
	src.Options.MRTD = attest.MRTD{9}
	p.Quote, _ = src.GetQuote(context.Background(), api.ReportData(zero, n.id, nil, ""))
	if r := h.send(t, p); r.err.Error != api.CodeReportDataMismatch {
		t.Fatalf("bad binding and bad mrtd: %+v", r)
	}
}

func TestReplayedRequest(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	p := h.prepare(t, n, nil)
	if r := h.send(t, p); r.status != 200 {
		t.Fatalf("%+v", r)
	}
	if r := h.send(t, p); r.err.Error != api.CodeInvalidChallenge {
		t.Fatalf("replay: %+v", r)
	}
	// A quote captured from one round is useless in another: its report_data
	// holds the old nonce.
	p2 := h.prepare(t, n, nil)
	p2.Quote = p.Quote
	if r := h.send(t, p2); r.err.Error != api.CodeReportDataMismatch {
		t.Fatalf("old quote, new challenge: %+v", r)
	}
}

// Many clients at once: every decision is in the log exactly once, the chain
// verifies, and no grant shares an audit record.
func TestConcurrentClients(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	const clients, rounds = 16, 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	seqs := map[uint64]bool{}
	errs := make(chan error, clients*rounds)
	for i := range clients {
		good := i%4 != 0
		mrtd := goodMRTD
		if !good {
			mrtd = attest.MRTD{byte(i)}
		}
		n := newNode(t, h, byte(i+1), mrtd)
		c := newClient(t, h, n, i%2 == 0)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				k, err := c.GetKey(context.Background())
				var ae *client.APIError
				switch {
				case good && err == nil:
					mu.Lock()
					if seqs[k.AuditSeq] {
						errs <- fmt.Errorf("audit seq %d granted twice", k.AuditSeq)
					}
					seqs[k.AuditSeq] = true
					mu.Unlock()
				case !good && errors.As(err, &ae) && ae.Code == api.CodePolicyRejected:
				default:
					errs <- fmt.Errorf("client %d (good %v): %v", i, good, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c, _ := client.New(client.Config{URL: h.url, Identity: ed25519.NewKeyFromSeed(make([]byte, 32))})
	v, head, err := c.VerifyAudit(context.Background(), h.srv.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if head.Seq != clients*rounds || v.Granted != 12*rounds || v.Denied != 4*rounds || len(seqs) != 12*rounds {
		t.Fatalf("head %d, granted %d, denied %d, distinct grant seqs %d", head.Seq, v.Granted, v.Denied, len(seqs))
	}
}

func TestReloadPolicy(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	c := newClient(t, h, n, false)
	ctx := context.Background()
	if _, err := c.GetKey(ctx); err != nil {
		t.Fatal(err)
	}
	newImage := attest.MRTD(attest.MockMeasurement("image v2"))
	if err := os.WriteFile(h.policyFile, policyJSON(newImage, false), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.ReloadPolicy(); err != nil {
		t.Fatal(err)
	}
	var ae *client.APIError
	if _, err := c.GetKey(ctx); !errors.As(err, &ae) || ae.Code != api.CodePolicyRejected {
		t.Fatalf("old image after reload: %v", err)
	}
	n2 := newNode(t, h, 1, newImage)
	if _, err := newClient(t, h, n2, false).GetKey(ctx); err != nil {
		t.Fatalf("new image after reload: %v", err)
	}
	// A bad file keeps the policy in force.
	for name, bad := range map[string][]byte{
		"not json":      []byte("{"),
		"empty rtmr":    []byte(`{"allowedMrtd":["*"],"allowedRtmr0":[],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"]}`),
		"unknown field": []byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMocks":true}`),
	} {
		os.WriteFile(h.policyFile, bad, 0o600)
		if err := h.srv.ReloadPolicy(); err == nil {
			t.Fatalf("%s: reload accepted", name)
		}
		if _, err := newClient(t, h, n2, false).GetKey(ctx); err != nil {
			t.Fatalf("%s: policy in force was dropped: %v", name, err)
		}
	}
}

func TestNewServerRefusesInvalidPolicy(t *testing.T) {
	ca, _, coll := testCA(t)
	secret, _ := kms.NewRootSecret(make([]byte, 32))
	_, err := kms.NewServer(kms.Config{
		StateDir: t.TempDir(), RootSecret: secret,
		Verifier: attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch)),
		Policy:   &attest.Policy{AllowedMrtd: []string{"*"}},
	})
	if err == nil {
		t.Fatal("a policy with unpinned RTMRs was accepted")
	}
}

// An instance key depends on the instance ID and the profile only: two boots
// of one instance, each with a fresh peer key, get the same key; another
// instance gets another; the audit record names the instance. A quote that
// binds the request without its instance ID is refused.
func TestInstanceKey(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	const inst = "3f2a6c1e-7b4d-4c2a-9e1f-0a1b2c3d4e5f"
	get := func(seed byte, instance string, seal bool) *client.Key {
		t.Helper()
		n := newNode(t, h, seed, goodMRTD)
		c, err := client.New(client.Config{URL: h.url, Identity: n.sk, Source: n.src, Seal: seal, InstanceID: instance, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		k, err := c.GetKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	boot1, boot2 := get(1, inst, true), get(2, inst, false)
	other := get(1, "0b5e6f3a-1111-4222-8333-944455556666", true)
	perPeer := get(1, "", true)
	want, err := h.secret.DeriveKey(kms.DefaultProfile, "ignored", inst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(boot1.Bytes(), want[:]) || !boot1.Equal(boot2) {
		t.Fatal("two boots of one instance got different keys, or not HKDF(root, fleetbox/storage/default/instance/<id>)")
	}
	if other.Equal(boot1) || perPeer.Equal(boot1) {
		t.Fatal("another instance, or the per-peer key, equals the instance key")
	}
	pg, err := h.srv.AuditPage(0, 10)
	if err != nil || len(pg.Entries) != 4 {
		t.Fatalf("audit page: %v, %d entries", err, len(pg.Entries))
	}
	for i, want := range []string{inst, inst, "0b5e6f3a-1111-4222-8333-944455556666", ""} {
		var rec audit.Record
		if err := json.Unmarshal(pg.Entries[i].Record, &rec); err != nil || rec.InstanceID != want {
			t.Fatalf("audit record %d names instance %q, want %q (%v)", i+1, rec.InstanceID, want, err)
		}
	}

	// A quote bound without the instance ID does not release it.
	n := newNode(t, h, 3, goodMRTD)
	p := h.prepare(t, n, nil)
	r := api.GetKeyRequest{
		ChallengeID: p.ChallengeID, QuoteB64: base64.StdEncoding.EncodeToString(p.Quote), PeerID: p.PeerID,
		PeerPublicKeyB64: base64.StdEncoding.EncodeToString(p.PubKey), InstanceID: inst,
	}
	q, _ := attest.ParseQuote(p.Quote)
	r.SignatureB64 = base64.StdEncoding.EncodeToString(ed25519.Sign(n.sk, api.SigningMessage(p.ChallengeID, p.Nonce, p.PeerID, q.Hash, nil, inst)))
	p.Body, _ = json.Marshal(r)
	if res := h.send(t, p); res.err.Error != api.CodeReportDataMismatch {
		t.Fatalf("quote without the instance binding: %d %+v", res.status, res.err)
	}
	// A malformed instance ID is a shape error.
	p = h.prepare(t, n, nil)
	r.ChallengeID, r.InstanceID = p.ChallengeID, "NOT/AN-ID"
	p.Body, _ = json.Marshal(r)
	if res := h.send(t, p); res.status != 400 || res.err.Error != api.CodeInvalidRequest {
		t.Fatalf("malformed instance id: %d %+v", res.status, res.err)
	}
}

// Restarting on the same state gives the same key to the same peer and
// continues the audit chain; another peer or profile gets another key.
func TestRestartSameKey(t *testing.T) {
	state := t.TempDir()
	ctx := context.Background()
	h := newHarness(t, harnessOpts{stateDir: state})
	n := newNode(t, h, 1, goodMRTD)
	k1, err := newClient(t, h, n, false).GetKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.stop()

	h2 := newHarness(t, harnessOpts{stateDir: state})
	k2, err := newClient(t, h2, n, true).GetKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) || k2.AuditSeq != 2 {
		t.Fatalf("key after restart differs (or audit seq %d)", k2.AuditSeq)
	}
	other := newNode(t, h2, 2, goodMRTD)
	k3, err := newClient(t, h2, other, false).GetKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k3.Equal(k1) {
		t.Fatal("two peers got the same key")
	}
	h2.stop()

	h3 := newHarness(t, harnessOpts{stateDir: state, profile: "staging"})
	k4, err := newClient(t, h3, n, false).GetKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k4.Equal(k1) || k4.Profile != "staging" {
		t.Fatal("another profile gave the same key")
	}
	c, _ := client.New(client.Config{URL: h3.url, Identity: n.sk})
	v, head, err := c.VerifyAudit(ctx, h3.srv.PublicKey())
	if err != nil || head.Seq != 4 || v.Granted != 4 {
		t.Fatalf("audit across restarts: %v, head %d", err, head.Seq)
	}
}

func TestAttestCheck(t *testing.T) {
	ctx := context.Background()
	mockPol, _ := attest.ParsePolicy([]byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`))
	strictPol := attest.DefaultPolicy()

	t.Run("mock KMS", func(t *testing.T) {
		h := newHarness(t, harnessOpts{})
		c, _ := client.New(client.Config{URL: h.url, Identity: ed25519.NewKeyFromSeed(make([]byte, 32)), MaxAttempts: 1})
		v := attest.NewVerifier(attest.VerifierConfig{})
		id, err := c.CheckKMS(ctx, v, mockPol)
		if err != nil {
			t.Fatal(err)
		}
		if !id.Verdict.Mock || !bytes.Equal(id.PublicKey, h.srv.PublicKey()) {
			t.Fatalf("%+v", id)
		}
		if _, err := c.CheckKMS(ctx, v, strictPol); !errors.Is(err, client.ErrKMSNotTrusted) {
			t.Fatalf("mock KMS under a no-mock policy: %v", err)
		}
	})
	t.Run("test-CA KMS", func(t *testing.T) {
		ca, plat, coll := testCA(t)
		kmsMRTD := attest.MRTD(attest.MockMeasurement("kms image"))
		h := newHarness(t, harnessOpts{kmsSource: &attesttest.Source{Platform: plat, Options: attesttest.QuoteOptions{MRTD: kmsMRTD}}})
		c, _ := client.New(client.Config{URL: h.url, Identity: ed25519.NewKeyFromSeed(make([]byte, 32)), MaxAttempts: 1})
		v := attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch))
		pol := attest.DefaultPolicy()
		pol.AllowedMrtd = []string{kmsMRTD.String()}
		id, err := c.CheckKMS(ctx, v, pol)
		if err != nil {
			t.Fatal(err)
		}
		if id.Verdict.Mock || id.Verdict.TcbStatus != attest.TcbUpToDate {
			t.Fatalf("%+v", id.Verdict)
		}
		pol.AllowedMrtd = []string{goodMRTD.String()}
		if _, err := c.CheckKMS(ctx, v, pol); !errors.Is(err, client.ErrKMSNotTrusted) {
			t.Fatalf("KMS of another image: %v", err)
		}
	})
}

// Secrets stay out of logs and metrics even at debug level.
func TestSecretsStayOutOfLogsAndMetrics(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	lg := slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := newHarness(t, harnessOpts{})
	// A second server on the same state with the debug logger is simpler
	// than threading a logger through the harness: reuse the harness secret.
	h.stop()
	ca, _, coll := testCA(t)
	pol, _ := attest.ParsePolicy(policyJSON(goodMRTD, false))
	srv, err := kms.NewServer(kms.Config{StateDir: h.stateDir, RootSecret: h.secret, Policy: pol, Now: h.clock.Now, Logger: lg,
		Verifier: attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.RunWorkers(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	n := newNode(t, h, 1, goodMRTD)
	c, _ := client.New(client.Config{URL: ts.URL, Identity: n.sk, Source: n.src, MaxAttempts: 1})
	if _, err := c.GetKey(ctx); err != nil {
		t.Fatal(err)
	}
	lg.Info("secret", "root", h.secret)
	res, err := http.Get(ts.URL + api.PathMetrics)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	key := hex.EncodeToString(expectKey(t, h, kms.DefaultProfile, n.id))
	mu.Lock()
	defer mu.Unlock()
	for what, text := range map[string]string{"logs": logs.String(), "metrics": string(metrics)} {
		if strings.Contains(text, key) {
			t.Errorf("%s contain the storage key", what)
		}
		if strings.Contains(text, n.id) && what == "metrics" {
			t.Errorf("metrics carry a peer ID")
		}
	}
	if !strings.Contains(logs.String(), "RootSecret(redacted)") {
		t.Error("root secret was not redacted in slog")
	}
	if !strings.Contains(string(metrics), `fleetbox_kms_key_grants_total{mode="plain"} 1`) {
		t.Errorf("metrics lack the grant:\n%s", metrics)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestHealthAndRoutes(t *testing.T) {
	h := newHarness(t, harnessOpts{noPolicy: true})
	var hl api.Health
	h.request(t, http.MethodGet, api.PathHealth, "", "", &hl)
	if hl.Status != "ok" || hl.PolicyReady || hl.Profile != kms.DefaultProfile {
		t.Fatalf("%+v", hl)
	}
	cases := map[string]struct {
		method, path string
		status       int
		code         string
	}{
		"get on post route": {"GET", api.PathGetKey, 405, api.CodeMethodNotAllowed},
		"unknown path":      {"GET", "/nope", 404, api.CodeNotFound},
		"bad audit after":   {"GET", api.PathAudit + "?after=x", 400, api.CodeInvalidRequest},
		"bad audit limit":   {"GET", api.PathAudit + "?limit=100000", 400, api.CodeInvalidRequest},
	}
	for name, c := range cases {
		req, _ := http.NewRequest(c.method, h.url+c.path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		json.NewDecoder(res.Body).Decode(&e)
		res.Body.Close()
		if res.StatusCode != c.status || e.Error != c.code {
			t.Errorf("%s: %d %s", name, res.StatusCode, e.Error)
		}
	}
	// Challenge shape errors.
	for name, body := range map[string]string{
		"empty":       ``,
		"no peer":     `{}`,
		"bad peer":    `{"peerId":"QmNotAPeer"}`,
		"extra":       `{"peerId":"x","more":1}`,
		"oversize":    `{"peerId":"` + strings.Repeat("1", 2000) + `"}`,
		"cid peer":    `{"peerId":"bafzaajaiaejcb6yn2ig2aa6cs7v3t6z2g2dsevv3ve3yzlvpsbwxg4u3r3xh5uoy"}`,
		"two objects": `{"peerId":"x"}{}`,
	} {
		st, b := h.post(t, api.PathChallenge, []byte(body))
		var e api.Error
		json.Unmarshal(b, &e)
		if st != 400 || e.Error != api.CodeInvalidRequest {
			t.Errorf("challenge %s: %d %s", name, st, b)
		}
	}
}

// A libp2p protobuf-encoded public key is accepted as well as raw bytes.
func TestProtobufPublicKey(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	p := h.prepare(t, n, nil)
	pk, _ := crypto.UnmarshalEd25519PublicKey(n.sk.Public().(ed25519.PublicKey))
	p.PubKey, _ = crypto.MarshalPublicKey(pk)
	if r := h.send(t, p); r.status != 200 {
		t.Fatalf("%+v", r)
	}
}

// A node that pinned its KMS's key accepts only answers the KMS signed: a
// proxy that swaps the key (even sealing its own key to the node) is caught.
func TestResponseSignature(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	ctx := context.Background()
	for _, seal := range []bool{false, true} {
		c, _ := client.New(client.Config{URL: h.url, Identity: n.sk, Source: n.src, Seal: seal, KMSPublicKey: h.srv.PublicKey(), MaxAttempts: 1})
		if _, err := c.GetKey(ctx); err != nil {
			t.Fatalf("seal %v: %v", seal, err)
		}
	}
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32)).Public().(ed25519.PublicKey)
	c, _ := client.New(client.Config{URL: h.url, Identity: n.sk, Source: n.src, KMSPublicKey: other, MaxAttempts: 1})
	if _, err := c.GetKey(ctx); !errors.Is(err, client.ErrKMSNotTrusted) {
		t.Fatalf("answer checked against another key: %v", err)
	}

	target, _ := url.Parse(h.url)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		if r.Request.URL.Path != api.PathGetKey || r.StatusCode != 200 {
			return nil
		}
		var resp api.GetKeyResponse
		json.NewDecoder(r.Body).Decode(&resp)
		r.Body.Close()
		resp.Key = strings.Repeat("00", 32)
		b, _ := json.Marshal(resp)
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		r.Header.Del("Content-Length")
		return nil
	}
	ps := httptest.NewServer(proxy)
	defer ps.Close()
	unpinned, _ := client.New(client.Config{URL: ps.URL, Identity: n.sk, Source: n.src, MaxAttempts: 1})
	k, err := unpinned.GetKey(ctx)
	if err != nil || !bytes.Equal(k.Bytes(), make([]byte, 32)) {
		t.Fatalf("the proxy did not swap the key (test is broken): %v", err)
	}
	pinned, _ := client.New(client.Config{URL: ps.URL, Identity: n.sk, Source: n.src, KMSPublicKey: h.srv.PublicKey(), MaxAttempts: 1})
	if _, err := pinned.GetKey(ctx); !errors.Is(err, client.ErrKMSNotTrusted) {
		t.Fatalf("swapped key accepted by a pinned client: %v", err)
	}
}

// If the decision cannot be recorded, no key leaves.
func TestNoKeyWithoutAudit(t *testing.T) {
	ca, _, coll := testCA(t)
	pol, _ := attest.ParsePolicy(policyJSON(goodMRTD, false))
	secret, _ := kms.NewRootSecret(make([]byte, 32))
	clk := newClock()
	srv, err := kms.NewServer(kms.Config{StateDir: t.TempDir(), RootSecret: secret, Policy: pol, Now: clk.Now,
		Verifier: attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	srv.RunWorkers(ctx) // returns at once: the audit writer is stopped
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	h := &harness{url: ts.URL}
	n := newNode(t, &harness{plat: sharedCA.plat}, 1, goodMRTD)
	r := h.send(t, h.prepare(t, n, nil))
	if r.status != 500 || r.err.Error != api.CodeInternal || r.resp.Key != "" {
		t.Fatalf("%+v", r)
	}
}
