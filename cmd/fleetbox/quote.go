package main

import "context"

// runQuote is being built; see the open issue for this verb group.
func runQuote(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "quote: not built yet")
}
