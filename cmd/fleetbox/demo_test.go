package main

import (
	"strings"
	"testing"
)

// TestDemo runs `fleetbox demo` in-process: every check must hold, every
// line must say MOCK TDX, and nothing may keep running afterwards (the
// demo waits for its KMS and nodes to stop before it returns).
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo starts a KMS and four nodes")
	}
	code, out, stderr := runCLI(t, "demo", "--dir", t.TempDir())
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(out, "verdict: PASS") {
		t.Fatalf("no PASS verdict:\n%s", out)
	}
	for _, want := range []string{"dstack: two CVMs of the app", "(rtmr3_event_not_allowed)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the dstack part is missing %q", want)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "" && strings.HasPrefix(line, "[") && !strings.Contains(line, "MOCK TDX") {
			t.Errorf("timeline line does not say MOCK TDX: %q", line)
		}
	}
}
