package contexts

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"testing"
)

// serve runs one fetch exchange over a pipe: srv answers, the request is
// the raw bytes given (or a real one when raw is nil).
func exchange(t *testing.T, srv *member, raw []byte, priv ed25519.PrivateKey, ns NamespaceID, app ApplicationID, signedFor, servedAs []byte) ([]byte, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	done := make(chan error, 1)
	go func() { done <- srv.ctx.ServeFetch(b, []byte("requester"), servedAs); b.Close() }()
	var got []byte
	var err error
	if raw == nil {
		got, err = FetchFrom(bg, a, priv, ns, app, []byte("requester"), signedFor)
	} else {
		_, _ = a.Write(binary.BigEndian.AppendUint16(nil, uint16(len(raw))))
		_, _ = a.Write(raw)
		var rb []byte
		rb, err = readMsg(a)
		if err == nil {
			var resp *FetchResponse
			if resp, err = DecodeFetchResponse(rb); err == nil && resp.Status != fetchOK {
				err = ErrFetchDenied
			}
		}
	}
	a.Close()
	<-done
	return got, err
}

func TestFetch(t *testing.T) {
	ms, ns, c := fleet(t, 2, 0)
	a, b := ms[0], ms[1]
	info, _ := a.gov.Contexts(ns)
	app := info[0].Application
	_ = c
	bpriv, err := b.ctx.IdentityKey(ns)
	if err != nil {
		t.Fatal(err)
	}
	_, outsider, _ := ed25519.GenerateKey(rand.Reader)
	me := []byte("responder")
	good := NewFetchRequest(bpriv, ns, app, []byte("requester"), me)
	tampered := *good
	tampered.Sig = bytes.Clone(good.Sig)
	tampered.Sig[0] ^= 1
	for name, tc := range map[string]struct {
		raw       []byte
		priv      ed25519.PrivateKey
		app       ApplicationID
		signedFor []byte
		want      error
	}{
		"member":                        {priv: bpriv, app: app, signedFor: me},
		"non-member":                    {priv: outsider, app: app, signedFor: me, want: ErrFetchDenied},
		"application the ns never used": {priv: bpriv, app: ApplicationID{7}, signedFor: me, want: ErrFetchDenied},
		"replayed to another responder": {priv: bpriv, app: app, signedFor: []byte("someone else"), want: ErrFetchDenied},
		"forged signature":              {raw: enc(&tampered), want: ErrFetchDenied},
		"malformed":                     {raw: []byte{0xa1, 0x01}, want: ErrFetchDenied},
		"not canonical":                 {raw: append(enc(good)[:len(enc(good)):len(enc(good))], 0), want: ErrFetchDenied},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := exchange(t, a, tc.raw, tc.priv, ns, tc.app, tc.signedFor, me)
			if tc.want == nil {
				if err != nil || len(got) == 0 {
					t.Fatalf("fetch: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// An oversize length prefix is refused before reading.
	if _, err := readMsg(bytes.NewReader([]byte{0xff, 0xff})); !errors.Is(err, ErrFetchMalformed) {
		t.Fatalf("oversize message: %v", err)
	}
}

func FuzzDecodeFetchRequest(f *testing.F) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	f.Add(enc(NewFetchRequest(priv, NamespaceID{1}, ApplicationID{2}, []byte("a"), []byte("b"))))
	f.Add(enc(&FetchResponse{Status: fetchOK, Size: 10}))
	f.Add(enc(&FetchResponse{Status: fetchDenied, Error: "no"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := DecodeFetchRequest(b); err == nil {
			if !bytes.Equal(enc(r), b) {
				t.Fatal("accepted a non-canonical request")
			}
			r.Verify([]byte("a"), []byte("b"))
		}
		if r, err := DecodeFetchResponse(b); err == nil && r.Size > 32<<20 {
			t.Fatal("accepted an oversize response")
		}
	})
}
