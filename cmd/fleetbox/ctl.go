package main

import "context"

// runCtl is being built; see the open issue for this verb group.
func runCtl(_ context.Context, e *env, _ []string) int {
	return usageErr(e, "ctl: not built yet")
}
