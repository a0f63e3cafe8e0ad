package main

import "context"

// runNode is being built; see the open issue for this verb group.
func runNode(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "node: not built yet")
}
