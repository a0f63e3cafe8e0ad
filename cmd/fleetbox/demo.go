package main

import "context"

// runDemo is being built; see the open issue for this verb group.
func runDemo(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "demo: not built yet")
}
