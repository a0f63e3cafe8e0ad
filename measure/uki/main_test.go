package uki

import (
	"testing"

	"go.uber.org/goleak"
)

// Predict hashes concurrently; no goroutine may outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
