package tdvf

import (
	"testing"

	"go.uber.org/goleak"
)

// MRTDs hashes the orders concurrently; no goroutine may outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
