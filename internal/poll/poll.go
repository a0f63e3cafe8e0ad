// Package poll is the one helper tests use to wait for something that
// happens in the background. Its deadline is a guard against hangs, never a
// timing assertion: speed is measured by benchmarks.
package poll

import (
	"testing"
	"time"
)

// Guard is how long Until waits before it fails the test: generous, for
// -race on a loaded 2-core machine.
const Guard = 60 * time.Second

// Interval is the time between two checks.
const Interval = 25 * time.Millisecond

// Until checks cond every Interval until it holds, and fails t with what
// after Guard.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	UntilElse(t, what, cond, nil)
}

// UntilElse is Until that calls report (to log the state) before failing.
func UntilElse(t testing.TB, what string, cond func() bool, report func()) {
	t.Helper()
	deadline := time.Now().Add(Guard)
	for !cond() {
		if time.Now().After(deadline) {
			if report != nil {
				report()
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(Interval)
	}
}
