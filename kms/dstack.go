package kms

import (
	"context"
	"fmt"

	"github.com/fleetbox/fleetbox/attest/dstack"
)

// DefaultDstackKeyPath is the key path the KMS asks the dstack agent for.
// The agent derives the key from the CVM's app identity, so the same app
// (same compose hash, same KMS) gets the same root secret after a restart or
// on another machine.
const DefaultDstackKeyPath = "fleetbox/kms/root-secret"

// DstackRootSecret asks the dstack agent for the key at path
// (DefaultDstackKeyPath when empty) and uses it as the root secret.
func DstackRootSecret(ctx context.Context, a *dstack.Agent, path string) (*RootSecret, error) {
	if path == "" {
		path = DefaultDstackKeyPath
	}
	b, err := a.GetKey(ctx, path, "fleetbox-kms-root-secret")
	if err != nil {
		return nil, fmt.Errorf("getting root secret: %w", err)
	}
	defer clear(b)
	rs, err := NewRootSecret(b)
	if err != nil {
		return nil, fmt.Errorf("getting root secret from the dstack agent: %w", err)
	}
	return rs, nil
}
