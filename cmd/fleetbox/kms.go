package main

import "context"

// runKMS is being built; see the open issue for this verb group.
func runKMS(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "kms: not built yet")
}
