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
	q := attest.MockQuote{}.Encode(api.ReportData(nonce, id, sealTo))
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
	}
	for name, body := range bad {
		if _, err := api.DecodeGetKeyRequest([]byte(body)); !errors.Is(err, api.ErrShape) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSigningMessageIsUnambiguous(t *testing.T) {
	var n [32]byte
	var h attest.QuoteHash
	a := api.SigningMessage("ab", n, "c", h, nil)
	b := api.SigningMessage("a", n, "bc", h, nil)
	c := api.SigningMessage("ab", n, "c", h, make([]byte, 32))
	if bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("distinct fields give equal signing messages")
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
