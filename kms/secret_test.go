package kms_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/dstack"
	"github.com/fleetbox/fleetbox/kms"
)

func TestFileRootSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, kms.RootSecretFile)
	a, err := kms.LoadFileRootSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Size() != kms.RootSecretSize {
		t.Fatalf("created %v %v", st.Mode(), err)
	}
	b, err := kms.LoadFileRootSecret(path)
	if err != nil || !a.Equal(b) {
		t.Fatalf("second load: %v", err)
	}
	k, _ := a.DeriveKey("p", "peer", "")
	if s := fmt.Sprintf("%v %x %s %+v %#v %v %v %x", a, a, a, a, a, *a, k, *k); strings.Count(s, "(redacted)") != 8 {
		t.Fatalf("formatted root secret: %s", s)
	}

	for name, c := range map[string]struct {
		mode os.FileMode
		data []byte
		want error
	}{
		"group readable": {0o640, make([]byte, 32), kms.ErrSecretPermissions},
		"world readable": {0o604, make([]byte, 32), kms.ErrSecretPermissions},
		"short":          {0o600, make([]byte, 31), nil},
		"long":           {0o600, make([]byte, 33), nil},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "root.secret")
			os.WriteFile(p, c.data, 0o600)
			os.Chmod(p, c.mode)
			_, err := kms.LoadFileRootSecret(p)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestSigningKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), kms.SigningKeyFile)
	a, err := kms.LoadSigningKey(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := kms.LoadSigningKey(p)
	if err != nil || !a.Equal(b) {
		t.Fatalf("reload: %v", err)
	}
	os.Chmod(p, 0o644)
	if _, err := kms.LoadSigningKey(p); !errors.Is(err, kms.ErrSecretPermissions) {
		t.Fatalf("readable key: %v", err)
	}
}

// fakeAgent serves the dstack guest agent's GetKey and GetQuote on a unix
// socket.
func fakeAgent(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dstack")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "dstack.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestDstackRootSecret(t *testing.T) {
	agentKey := bytes.Repeat([]byte{0xab}, 32)
	var gotPath, gotPurpose string
	sock := fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		var req map[string]string
		json.NewDecoder(r.Body).Decode(&req)
		switch r.URL.Path {
		case "/GetKey":
			gotPath, gotPurpose = req["path"], req["purpose"]
			if req["path"] == "broken" {
				http.Error(w, "key "+hex.EncodeToString(agentKey), 500)
				return
			}
			if req["path"] == "short" {
				json.NewEncoder(w).Encode(map[string]any{"key": "abcd", "signature_chain": []string{}})
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"key": hex.EncodeToString(agentKey), "signature_chain": []string{"00", "11"}})
		case "/GetQuote":
			var rd attest.ReportData
			b, _ := hex.DecodeString(req["report_data"])
			copy(rd[:], b)
			q := attest.MockQuote{MRTD: attest.MockMeasurement("dstack")}.Encode(rd)
			json.NewEncoder(w).Encode(map[string]string{"quote": hex.EncodeToString(q), "event_log": "[]"})
		default:
			http.NotFound(w, r)
		}
	})
	ctx := context.Background()
	agent := dstack.New(sock)
	rs, err := kms.DstackRootSecret(ctx, agent, "")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := kms.NewRootSecret(agentKey)
	if !rs.Equal(want) || gotPath != kms.DefaultDstackKeyPath || gotPurpose == "" {
		t.Fatalf("path %q purpose %q", gotPath, gotPurpose)
	}
	// The same agent key gives the same storage keys: a KMS moved to
	// another CVM of the same app keeps releasing the same keys.
	k1, _ := rs.DeriveKey("default", "peer", "")
	k2, _ := want.DeriveKey("default", "peer", "")
	if *k1 != *k2 {
		t.Fatal("derived keys differ")
	}
	for _, path := range []string{"broken", "short"} {
		_, err := kms.DstackRootSecret(ctx, agent, path)
		if err == nil || strings.Contains(err.Error(), hex.EncodeToString(agentKey)) {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if _, err := kms.DstackRootSecret(ctx, dstack.New(filepath.Join(t.TempDir(), "none.sock")), ""); !errors.Is(err, dstack.ErrAgent) {
		t.Fatalf("no agent: %v", err)
	}

	var rd attest.ReportData
	rd[0] = 7
	q, err := agent.Source().GetQuote(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	pq, err := attest.ParseQuote(q)
	if err != nil || pq.ReportData != rd {
		t.Fatalf("dstack quote: %v", err)
	}
}
