package main

import "context"

// runPolicy is being built; see the open issue for this verb group.
func runPolicy(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "policy: not built yet")
}
