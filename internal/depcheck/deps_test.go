package depcheck

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// rule constrains the non-test dependencies of one package. With only set,
// every dependency outside the standard library must be listed there; deny
// lists packages (a trailing "/..." matches a tree) it must never link.
type rule struct {
	only []string
	deny []string
}

const mod = "github.com/fleetbox/fleetbox"

var (
	// The verifier and its stdout-logging dependencies.
	verifier = []string{mod + "/attest", "github.com/google/go-tdx-guest/..."}
	// Test-only code, and go-tdx-guest packages that log to stdout from
	// init() (verify, client) or leak a configfs entry per quote (client).
	testOnly = []string{mod + "/attest/attesttest", "github.com/google/go-tdx-guest/verify",
		"github.com/google/go-tdx-guest/client", "github.com/google/go-tdx-guest/testing/..."}
)

var rules = map[string]rule{
	// The measurement types and the node's ids: the standard library only.
	mod + "/attest/measurement": {only: []string{}},
	mod + "/node/ids":           {only: []string{}},
	// Measuring firmware needs the types (and errgroup for its parallel
	// hashing), not the verifier.
	mod + "/measure/tdvf": {only: []string{mod + "/attest/measurement", "golang.org/x/sync/errgroup"}},
	// The KMS wire format: no verifier (its clients do not verify quotes).
	mod + "/kms/api": {deny: verifier},
	// The shipped binary links no test code and no stdout-logging package.
	mod + "/cmd/fleetbox": {deny: testOnly},
}

func matches(pkg, pattern string) bool {
	if tree, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == tree || strings.HasPrefix(pkg, tree+"/")
	}
	return pkg == pattern
}

func TestDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	for pkg, r := range rules {
		t.Run(strings.TrimPrefix(pkg, mod+"/"), func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", pkg, err)
			}
			for _, dep := range strings.Fields(string(out)) {
				if dep == pkg {
					continue
				}
				if r.only != nil && !slices.Contains(r.only, dep) {
					t.Errorf("%s depends on %s, which its allow-list does not name", pkg, dep)
				}
				for _, d := range r.deny {
					if matches(dep, d) {
						t.Errorf("%s depends on %s (denied: %s)", pkg, dep, d)
					}
				}
			}
		})
	}
}
