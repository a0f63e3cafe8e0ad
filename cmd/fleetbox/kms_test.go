package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/poll"
)

func mockPolicyFor(mrtd attest.MRTD) []byte {
	return []byte(`{"allowedMrtd":["` + mrtd.String() + `"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`)
}

// TestKMSCommands runs kms serve, get-key (plain, sealed, to a file), a
// SIGHUP policy reload (good and bad), and audit verify by URL and by state.
func TestKMSCommands(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	policy := filepath.Join(dir, "policy.json")
	addrFile := filepath.Join(dir, "addr")
	ident := filepath.Join(dir, "id.pem")
	imageA := attest.MRTD(attest.MockMeasurement("image a"))
	imageB := attest.MRTD(attest.MockMeasurement("image b"))
	if err := os.WriteFile(policy, mockPolicyFor(imageA), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, "kms", "serve", "--policy", filepath.Join(dir, "none.json"), "--state", state); code != exitUsage {
		t.Fatalf("missing policy: exit %d %s", code, stderr)
	}
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"allowedMrtd":[]}`), 0o600)
	if code, _, stderr := runCLI(t, "kms", "serve", "--policy", filepath.Join(dir, "bad.json"), "--state", state); code != exitUsage || !strings.Contains(stderr, "refusing to start") {
		t.Fatalf("invalid policy: exit %d %s", code, stderr)
	}

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan int, 1)
	go func() {
		var out, errb bytes.Buffer
		served <- run(ctx, []string{"kms", "serve", "--listen", "127.0.0.1:0", "--policy", policy, "--state", state,
			// One identity asks many times a second, and kms load is one address.
			"--peer-rate", "-1", "--address-rate", "-1",
			"--addr-file", addrFile, "--attest-source", "mock"}, &out, &errb)
	}()
	defer cancel()
	var url string
	poll.Until(t, "kms serve's --addr-file", func() bool {
		b, err := os.ReadFile(addrFile)
		url = "http://" + strings.TrimSpace(string(b))
		return err == nil && len(b) > 0
	})

	getKey := func(mrtd attest.MRTD, extra ...string) (int, string, string) {
		return runCLI(t, append([]string{"kms", "get-key", "--url", url, "--identity", ident, "--attest-source", "mock", "--mock-mrtd", mrtd.String(), "--attempts", "1"}, extra...)...)
	}
	code, plain, stderr := getKey(imageA)
	if code != exitOK || len(strings.TrimSpace(plain)) != 64 || !strings.Contains(stderr, "created identity") {
		t.Fatalf("get-key: exit %d %q %s", code, plain, stderr)
	}
	if code, sealed, stderr := getKey(imageA, "--seal"); code != exitOK || sealed != plain {
		t.Fatalf("sealed get-key: exit %d %s", code, stderr)
	}
	out := filepath.Join(dir, "key.bin")
	receipt := filepath.Join(dir, "receipt.json")
	if code, _, stderr := getKey(imageA, "--out", out, "--receipt", receipt); code != exitOK {
		t.Fatalf("get-key --out: %d %s", code, stderr)
	}
	if b, _ := os.ReadFile(out); len(b) != 32 {
		t.Fatalf("--out wrote %d bytes", len(b))
	}
	kmsPol := filepath.Join(dir, "kms-policy.json")
	os.WriteFile(kmsPol, []byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`), 0o600)
	if code, _, stderr := getKey(imageA, "--kms-policy", kmsPol); code != exitOK || !strings.Contains(stderr, "KMS checked") {
		t.Fatalf("get-key --kms-policy: %d %s", code, stderr)
	}
	if code, _, _ := getKey(imageB); code != exitNo {
		t.Fatalf("image b before reload: exit %d", code)
	}

	// SIGHUP: a good policy takes effect, a bad one is ignored.
	os.WriteFile(policy, mockPolicyFor(imageB), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { c, _, _ := getKey(imageB); return c == exitOK })
	if code, _, _ := getKey(imageA); code != exitNo {
		t.Fatalf("image a after reload: exit %d", code)
	}
	os.WriteFile(policy, []byte("{"), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	time.Sleep(200 * time.Millisecond)
	if code, _, stderr := getKey(imageB); code != exitOK {
		t.Fatalf("after a bad reload: exit %d %s", code, stderr)
	}

	code, stdout, stderr := runCLI(t, "kms", "load", "--url", url, "--clients", "2", "--duration", "300ms", "--mock-mrtd", imageB.String())
	var lr loadResult
	json.Unmarshal([]byte(stdout), &lr)
	if code != exitOK || lr.Releases == 0 || lr.Errors != 0 || lr.QuoteSource != "mock" {
		t.Fatalf("kms load: exit %d %s %s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "kms", "audit", "verify", "--url", url)
	var sum auditSummary
	json.Unmarshal([]byte(stdout), &sum)
	if code != exitOK || !sum.OK || sum.Records < 8+uint64(lr.Releases) || sum.Granted < 5+lr.Releases || sum.Denied < 2 {
		t.Fatalf("audit verify --url: exit %d %s %s", code, stdout, stderr)
	}
	if code, _, _ := runCLI(t, "kms", "audit", "verify", "--state", state); code != exitRuntime {
		t.Fatalf("audit verify --state while the KMS runs: exit %d (want a lock error)", code)
	}
	cancel()
	if code := <-served; code != exitOK {
		t.Fatalf("kms serve exit %d", code)
	}
	code, stdout, stderr = runCLI(t, "kms", "audit", "verify", "--state", state)
	var sum2 auditSummary
	json.Unmarshal([]byte(stdout), &sum2)
	if code != exitOK || sum2.Records < sum.Records || !sum2.Pinned {
		t.Fatalf("audit verify --state: exit %d %s %s", code, stdout, stderr)
	}
	// The log still holds the grant the receipt names; a receipt naming
	// another record does not verify (bad input).
	if code, stdout, stderr := runCLI(t, "kms", "audit", "verify", "--state", state, "--receipt", receipt); code != exitOK {
		t.Fatalf("audit verify --receipt: exit %d %s %s", code, stdout, stderr)
	}
	rb, _ := os.ReadFile(receipt)
	if err := os.WriteFile(receipt, bytes.Replace(rb, []byte(`"auditSeq": `), []byte(`"auditSeq": 1`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, "kms", "audit", "verify", "--state", state, "--receipt", receipt); code != exitUsage || !strings.Contains(stderr, "not signed") {
		t.Fatalf("audit verify with a changed receipt: exit %d %s", code, stderr)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	poll.Until(t, "condition", cond)
}
