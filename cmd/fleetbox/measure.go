package main

import "context"

// runMeasure is being built; see the open issue for this verb group.
func runMeasure(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "measure: not built yet")
}
