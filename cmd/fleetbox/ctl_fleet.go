package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
)

// nsFlags starts the flag set of a fleet verb, which takes --namespace.
func (c *ctl) nsFlags(name string) (*flag.FlagSet, *string) {
	fs := c.flags(name)
	return fs, fs.String("namespace", "", "namespace id (hex)")
}

// parseNS parses a fleet verb's flags (no arguments) and requires
// --namespace. It returns an exit code to stop with, or -1 to go on.
func (c *ctl) parseNS(fs *flag.FlagSet, args []string, ns *string, moreFlags string) int {
	if _, code := c.parse(fs, args, 0, strings.TrimSpace("--namespace NS "+moreFlags)); code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "%s: --namespace is required", fs.Name())
	}
	return -1
}

func (c *ctl) fleetJoin(ctx context.Context, args []string) int {
	fs, ns := c.nsFlags("fleet-join")
	stop := fs.Bool("stop", false, "stop announcing (an admitted replica stays a member until removed)")
	if code := c.parseNS(fs, args, ns, "[--stop]"); code >= 0 {
		return code
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
	fs, ns := c.nsFlags("fleet-status")
	if code := c.parseNS(fs, args, ns, ""); code >= 0 {
		return code
	}
	st, err := c.client.FleetStatus(ctx, *ns)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(st)
	}
	c.table("NAMESPACE\tADMITTED\tGROUP KEY\tANNOUNCING", [][]string{{short(st.Namespace), yesNo(st.Admitted), yesNo(st.HasGroupKey), yesNo(st.Announcing)}})
	return exitOK
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// fleetReplicas lists the replicas ever admitted to a namespace against its
// current policy. A policy tightened after admission removes no one; with
// --evict-outside-policy this removes every current replica the policy no
// longer covers (each removal rotates the group key). Exit 1 when a current
// replica is left outside the policy, so scripts can alert on it.
func (c *ctl) fleetReplicas(ctx context.Context, args []string) int {
	fs, ns := c.nsFlags("fleet-replicas")
	evict := fs.Bool("evict-outside-policy", false, "remove every current replica whose admission fails the current policy")
	if code := c.parseNS(fs, args, ns, "[--evict-outside-policy]"); code >= 0 {
		return code
	}
	reps, err := c.client.FleetReplicas(ctx, *ns)
	if err != nil {
		return c.fail(err)
	}
	outside := 0
	for i := range reps {
		r := &reps[i]
		if !r.Member || r.MeetsPolicy {
			continue
		}
		if !*evict {
			outside++
			continue
		}
		res, err := c.client.RemoveMember(ctx, *ns, "", r.Key)
		if err != nil {
			return c.fail(fmt.Errorf("evicting replica %s: %w", r.Key, err))
		}
		r.Member = false
		if !c.json {
			fmt.Fprintf(c.e.stdout, "evicted %s (%s): op %s\n", short(r.Key), strings.Join(r.Reasons, ","), short(res.Op))
		}
	}
	if c.json {
		if code := c.printJSON(reps); code != exitOK {
			return code
		}
	} else {
		rows := make([][]string, 0, len(reps))
		for _, r := range reps {
			policy := "ok"
			if !r.MeetsPolicy {
				policy = strings.Join(r.Reasons, ",")
			}
			tcb := r.TcbStatus
			if r.Mock {
				tcb = "MOCK TDX"
			}
			rows = append(rows, []string{short(r.Key), yesNo(r.Member), short(r.MRTD), tcb, policy})
		}
		c.table("REPLICA\tMEMBER\tMRTD\tTCB\tCURRENT POLICY", rows)
	}
	if outside > 0 {
		fmt.Fprintf(c.e.stderr, "fleetbox: ctl: %d current replica(s) outside the namespace policy; --evict-outside-policy removes them\n", outside)
		return exitNo
	}
	return exitOK
}

// short abbreviates a hex id for tables; --json prints it whole.
func short(hexID string) string {
	if len(hexID) <= 16 {
		return hexID
	}
	return hexID[:16] + "…"
}
