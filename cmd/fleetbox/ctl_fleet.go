package main

import (
	"context"
	"fmt"
)

func (c *ctl) fleetJoin(ctx context.Context, args []string) int {
	fs := c.flags("fleet-join")
	ns := fs.String("namespace", "", "namespace id (hex)")
	stop := fs.Bool("stop", false, "stop announcing (an admitted replica stays a member until removed)")
	if _, code := c.parse(fs, args, 0, "--namespace NS [--stop]"); code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl fleet-join: --namespace is required")
	}
	if *stop {
		st, err := c.client.FleetLeave(ctx, *ns)
		if err != nil {
			return c.fail(err)
		}
		if c.json {
			return c.printJSON(st)
		}
		fmt.Fprintf(c.e.stdout, "fleet-join %s stopped (admitted: %s)\n", *ns, yesNo(st.Admitted))
		return exitOK
	}
	res, err := c.client.FleetJoin(ctx, *ns)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(res)
	}
	fmt.Fprintf(c.e.stdout, "fleet-join %s: announcing with %s quotes until admitted as ReadOnlyTee\nmember keys: %s\n", res.Namespace, res.Source, res.MemberKeys)
	if res.Source == "mock" {
		fmt.Fprintln(c.e.stdout, "MOCK TDX: only a namespace whose policy sets acceptMock will admit this node")
	}
	return exitOK
}

func (c *ctl) fleetStatus(ctx context.Context, args []string) int {
	fs := c.flags("fleet-status")
	ns := fs.String("namespace", "", "namespace id (hex)")
	if _, code := c.parse(fs, args, 0, "--namespace NS"); code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl fleet-status: --namespace is required")
	}
	st, err := c.client.FleetStatus(ctx, *ns)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(st)
	}
	c.table("NAMESPACE\tADMITTED\tGROUP KEY\tANNOUNCING", [][]string{{st.Namespace[:16] + "…", yesNo(st.Admitted), yesNo(st.HasGroupKey), yesNo(st.Announcing)}})
	return exitOK
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
