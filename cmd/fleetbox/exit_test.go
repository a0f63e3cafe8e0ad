package main

import (
	"os"
	"path/filepath"
	"testing"
)

// Exit codes: 0 success, 1 a "no", 2 bad usage or input, 3 a runtime
// failure. Before, a KMS that could not be reached was a "no" (1), a node
// that did not answer ctl and a KMS whose state could not be opened were
// bad usage (2), and a KMS that stopped serving exited 1.
func TestRuntimeFailuresExit3(t *testing.T) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`), 0o600)
	token := filepath.Join(dir, "admin.token")
	os.WriteFile(token, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	// A state directory whose kms.db is not a database.
	badState := filepath.Join(dir, "state")
	os.MkdirAll(badState, 0o700)
	os.WriteFile(filepath.Join(badState, "kms.db"), make([]byte, 8192), 0o600)
	const nobody = "http://127.0.0.1:1" // nothing listens on port 1

	cases := map[string]struct {
		args []string
		want int
	}{
		"kms get-key, KMS unreachable":      {[]string{"kms", "get-key", "--url", nobody, "--identity", filepath.Join(dir, "id.pem"), "--attest-source", "mock", "--attempts", "1"}, exitRuntime},
		"kms audit verify, KMS unreachable": {[]string{"kms", "audit", "verify", "--url", nobody}, exitRuntime},
		"kms serve, state unusable":         {[]string{"kms", "serve", "--listen", "127.0.0.1:0", "--policy", policy, "--state", badState, "--attest-source", "mock"}, exitRuntime},
		"ctl, node unreachable":             {[]string{"ctl", "--admin", nobody, "--token", token, "status"}, exitRuntime},
		"kms get-key, bad usage":            {[]string{"kms", "get-key", "--url", nobody}, exitUsage},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if code, _, stderr := runCLI(t, tc.args...); code != tc.want {
				t.Fatalf("exit %d, want %d\n%s", code, tc.want, stderr)
			}
		})
	}
}
