package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/kms/client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeKMS answers /challenge, then /get-key with the scripted statuses in
// turn (200 once the script is exhausted).
func fakeKMS(t *testing.T, script []int) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case api.PathChallenge:
			json.NewEncoder(w).Encode(api.ChallengeResponse{ChallengeID: "c", NonceB64: base64.StdEncoding.EncodeToString(make([]byte, 32)), ExpiresAt: time.Now()})
		case api.PathGetKey:
			n := int(calls.Add(1)) - 1
			if n < len(script) && script[n] != 200 {
				if script[n] == 0 { // a dropped connection
					hj, _ := w.(http.Hijacker)
					c, _, _ := hj.Hijack()
					c.Close()
					return
				}
				w.WriteHeader(script[n])
				json.NewEncoder(w).Encode(api.Error{Error: fmt.Sprintf("code_%d", script[n]), Details: []string{"scripted"}})
				return
			}
			json.NewEncoder(w).Encode(api.GetKeyResponse{Key: hex.EncodeToString(bytes.Repeat([]byte{7}, 32)), Profile: "p", AuditSeq: 9})
		}
	}))
	t.Cleanup(ts.Close)
	return ts, &calls
}

func newClient(t *testing.T, url string) *client.Client {
	c, err := client.New(client.Config{
		URL: url, Identity: ed25519.NewKeyFromSeed(make([]byte, 32)),
		Source:      &attest.MockSource{},
		MaxAttempts: 4, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRetries(t *testing.T) {
	cases := map[string]struct {
		script    []int
		calls     int32
		ok        bool
		errStatus int
	}{
		"ok first time":              {nil, 1, true, 0},
		"503 then ok":                {[]int{503, 503}, 3, true, 0},
		"dropped connection then ok": {[]int{0}, 2, true, 0},
		"500 until attempts run out": {[]int{500, 500, 500, 500, 500}, 4, false, 500},
		"403 is final":               {[]int{403}, 1, false, 403},
		"401 is final":               {[]int{401}, 1, false, 401},
		"400 is final":               {[]int{400}, 1, false, 400},
		"503 then 403 stops":         {[]int{503, 403}, 2, false, 403},
		"429 (rate limited) then ok": {[]int{429}, 2, true, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ts, calls := fakeKMS(t, c.script)
			k, err := newClient(t, ts.URL).GetKey(context.Background())
			if calls.Load() != c.calls {
				t.Errorf("%d get-key calls, want %d", calls.Load(), c.calls)
			}
			if c.ok {
				if err != nil || k.AuditSeq != 9 || !bytes.Equal(k.Bytes(), bytes.Repeat([]byte{7}, 32)) {
					t.Fatalf("%v", err)
				}
				return
			}
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != c.errStatus || len(ae.Details) != 1 {
				t.Fatalf("got %v, want HTTP %d", err, c.errStatus)
			}
		})
	}
}

func TestRetryStopsOnCancel(t *testing.T) {
	ts, _ := fakeKMS(t, []int{503, 503, 503, 503, 503, 503})
	c, _ := client.New(client.Config{URL: ts.URL, Identity: ed25519.NewKeyFromSeed(make([]byte, 32)), Source: &attest.MockSource{}, MaxAttempts: 100, InitialBackoff: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.GetKey(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
}

// A KMS answer that is not what was asked for is refused, not retried.
func TestMalformedAnswers(t *testing.T) {
	for name, body := range map[string]string{
		"short key": `{"key":"0707","profile":"p"}`,
		"not json":  `{`,
		"sealed to a plain request is fine only as plain": `{"sealedKeyB64":"AAAA","profile":"p"}`,
	} {
		t.Run(name, func(t *testing.T) {
			var calls atomic.Int32
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == api.PathChallenge {
					json.NewEncoder(w).Encode(api.ChallengeResponse{ChallengeID: "c", NonceB64: base64.StdEncoding.EncodeToString(make([]byte, 32))})
					return
				}
				calls.Add(1)
				w.Write([]byte(body))
			}))
			defer ts.Close()
			if _, err := newClient(t, ts.URL).GetKey(context.Background()); err == nil || calls.Load() != 1 {
				t.Fatalf("err %v after %d calls", err, calls.Load())
			}
		})
	}
}
