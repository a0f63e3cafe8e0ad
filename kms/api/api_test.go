package api_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
)

var sk = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))

func peerText(t testing.TB) string {
	pk, _ := crypto.UnmarshalEd25519PublicKey(sk.Public().(ed25519.PublicKey))
	id, err := peer.IDFromPublicKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// validRequest is a well-formed /get-key body around a mock quote.
func validRequest(t testing.TB, seal bool) []byte {
	id := peerText(t)
	var nonce [32]byte
	var sealTo []byte
	if seal {
		sealTo = bytes.Repeat([]byte{9}, 32)
	}
	q := attest.MockQuote{}.Encode(api.ReportData(nonce, id, sealTo, ""))
	r := api.GetKeyRequest{
		ChallengeID:      base64.RawURLEncoding.EncodeToString(make([]byte, 16)),
		QuoteB64:         base64.StdEncoding.EncodeToString(q),
		PeerID:           id,
		PeerPublicKeyB64: base64.StdEncoding.EncodeToString(sk.Public().(ed25519.PublicKey)),
		SignatureB64:     base64.StdEncoding.EncodeToString(make([]byte, 64)),
	}
	if seal {
		r.SealToB64 = base64.StdEncoding.EncodeToString(sealTo)
	}
	b, _ := json.Marshal(r)
	return b
}

func TestDecodeGetKeyRequest(t *testing.T) {
	good := string(validRequest(t, true))
	if g, err := api.DecodeGetKeyRequest([]byte(good)); err != nil || len(g.SealTo) != 32 || g.PeerIDText != peerText(t) {
		t.Fatalf("valid request: %v", err)
	}
	bad := map[string]string{
		"empty":            ``,
		"array":            `[]`,
		"null":             `null`,
		"trailing":         good + `{}`,
		"unknown field":    strings.Replace(good, `"challengeId"`, `"challengeID2":1,"challengeId"`, 1),
		"duplicate-ish":    strings.Replace(good, `{`, `{"quoteB64":5,`, 1),
		"short challenge":  strings.Replace(good, `"challengeId":"AAAA`, `"challengeId":"AAA`, 1),
		"url base64 quote": strings.Replace(good, `"quoteB64":"`, `"quoteB64":"-_`, 1),
		"seal 33 bytes":    strings.Replace(good, `"sealToB64":"`, `"sealToB64":"CQkJ`, 1),
		"sig missing":      strings.Replace(good, `"signatureB64":"`, `"signatureB64":"","x":"`, 1),
		"oversize":         `{"quoteB64":"` + strings.Repeat("A", api.MaxGetKeyBody) + `"}`,
		// encoding/json took the last of duplicates and matched any case.
		"duplicate peerId": strings.Replace(good, `{`, `{"peerId":"12D3KooWother",`, 1),
		"PEERID":           strings.Replace(good, `"peerId"`, `"PEERID"`, 1),
		"sealtob64 lower":  strings.Replace(good, `"sealToB64"`, `"sealtob64"`, 1),
		"duplicate sealTo": strings.Replace(good, `"sealToB64"`, `"sealToB64":"","sealToB64"`, 1),
	}
	for name, body := range bad {
		if _, err := api.DecodeGetKeyRequest([]byte(body)); !errors.Is(err, api.ErrShape) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestDecodeChallengeRequestIsExact(t *testing.T) {
	id := peerText(t)
	if _, err := api.DecodeChallengeRequest([]byte(`{"peerId":"` + id + `"}`)); err != nil {
		t.Fatalf("valid: %v", err)
	}
	bad := map[string]string{
		"PEERID":         `{"PEERID":"` + id + `"}`,
		"peerid":         `{"peerid":"` + id + `"}`,
		"duplicate":      `{"peerId":"bogus","peerId":"` + id + `"}`,
		"two spellings":  `{"peerId":"` + id + `","PeerId":"` + id + `"}`,
		"trailing value": `{"peerId":"` + id + `"}{"peerId":"` + id + `"}`,
	}
	for name, body := range bad {
		if _, err := api.DecodeChallengeRequest([]byte(body)); !errors.Is(err, api.ErrShape) {
			t.Errorf("%s: %v, want ErrShape", name, err)
		}
	}
}

func TestSigningMessageIsUnambiguous(t *testing.T) {
	var n [32]byte
	var h attest.QuoteHash
	a := api.SigningMessage("ab", n, "c", h, nil, "")
	b := api.SigningMessage("a", n, "bc", h, nil, "")
	c := api.SigningMessage("ab", n, "c", h, make([]byte, 32), "")
	d := api.SigningMessage("ab", n, "c", h, nil, "instance-1")
	e := api.SigningMessage("ab", n, "c", h, []byte("instance-1"), "")
	for i, x := range [][]byte{b, c, d, e} {
		if bytes.Equal(a, x) {
			t.Fatalf("message %d equals the first", i+1)
		}
	}
	if bytes.Equal(d, e) {
		t.Fatal("an instance id and a sealTo of the same bytes give equal signing messages")
	}
}

// An instance-key binding can never equal a per-peer binding: it starts with
// a domain no base58 peer ID starts with, and its fields are length-prefixed.
func TestBindingForInstanceIsUnambiguous(t *testing.T) {
	peer := "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
	seal := bytes.Repeat([]byte{'a'}, 32)
	a := api.BindingFor(peer, nil, "")
	b := api.BindingFor(peer, seal, "")
	c := api.BindingFor(peer, nil, string(seal))
	d := api.BindingFor(peer, seal, "0123456789abcdef")
	if !bytes.Equal(b, append([]byte(peer), seal...)) || !bytes.Equal(a, []byte(peer)) {
		t.Fatal("per-peer bindings changed form")
	}
	if bytes.Equal(b, c) || bytes.Equal(c, d) || !bytes.HasPrefix(c, []byte(api.InstanceBindingDomain+"\x00")) {
		t.Fatalf("instance bindings are ambiguous: %q %q", c, d)
	}
}

func TestCheckInstanceID(t *testing.T) {
	for id, ok := range map[string]bool{
		"3f2a6c1e-7b4d-4c2a-9e1f-0a1b2c3d4e5f": true,
		"abcdefgh":                             true,
		"short":                                false,
		"-leading-dash":                        false,
		"UPPER-CASE-ID":                        false,
		"with/slash-inside":                    false,
		string(bytes.Repeat([]byte{'a'}, 65)):  false,
	} {
		if err := api.CheckInstanceID(id); (err == nil) != ok {
			t.Errorf("CheckInstanceID(%q) = %v, want ok %v", id, err, ok)
		}
	}
}

func FuzzDecodeGetKeyRequest(f *testing.F) {
	f.Add(validRequest(f, false))
	f.Add(validRequest(f, true))
	f.Add([]byte(`{"challengeId":"","quoteB64":"","peerId":"","peerPublicKeyB64":"","signatureB64":""}`))
	f.Add([]byte(`{"peerId":"12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := api.DecodeGetKeyRequest(data)
		if err != nil {
			if !errors.Is(err, api.ErrShape) {
				t.Fatalf("error without ErrShape: %v", err)
			}
			return
		}
		if len(g.Signature) != 64 || len(g.Quote) == 0 || len(g.Quote) > attest.MaxQuoteSize || (g.SealTo != nil && len(g.SealTo) != 32) || g.PeerID.String() != g.PeerIDText {
			t.Fatalf("accepted a malformed request: %+v", g)
		}
	})
}

func FuzzDecodeChallengeRequest(f *testing.F) {
	f.Add([]byte(`{"peerId":"` + peerText(f) + `"}`))
	f.Add([]byte(`{"peerId":"QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"}`))
	f.Add([]byte(`{"peerId":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := api.DecodeChallengeRequest(data)
		if err != nil {
			if !errors.Is(err, api.ErrShape) {
				t.Fatalf("error without ErrShape: %v", err)
			}
			return
		}
		if _, err := api.ParsePeerID(r.PeerID); err != nil {
			t.Fatalf("accepted peer %q: %v", r.PeerID, err)
		}
	})
}

func FuzzDecodeAttestRequest(f *testing.F) {
	f.Add([]byte(`{"nonceB64":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `"}`))
	f.Add([]byte(`{"nonceB64":"AAAA"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := api.DecodeAttestRequest(data); err != nil && !errors.Is(err, api.ErrShape) {
			t.Fatalf("error without ErrShape: %v", err)
		}
	})
}

// FuzzParseReceipt: a receipt file is untrusted input to audit verify.
func FuzzParseReceipt(f *testing.F) {
	pub := sk.Public().(ed25519.PublicKey)
	good, _ := json.Marshal(api.NewReceipt("c", peerText(f), "", &api.GetKeyResponse{Profile: "p", AuditSeq: 3,
		SignatureB64: base64.StdEncoding.EncodeToString(ed25519.Sign(sk, api.ResponseMessage("c", peerText(f), "p", "", 3, []byte("k"))))}, []byte("k")))
	if _, err := api.ParseReceipt(good, pub); err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"auditSeq":1,"auditSeq":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := api.ParseReceipt(b, pub)
		if err == nil && r.AuditSeq != 3 {
			t.Fatalf("a receipt the key never signed verified: %+v", r)
		}
	})
}
