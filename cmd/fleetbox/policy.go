package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/measure/tdvf"
)

const policyUsage = `policy: want a subcommand

  fleetbox policy from-measurements [--profile NAME]... [--order ORDER]...
      [--rtmr0 HEX]... [--rtmr0-quote FILE]... [--rtmr0-log FILE]... [--waive REGISTER]...
      [--tcb-status STATUS]... [--accept-mock] [--allow-debug]
      [--out FILE] [--kms-out FILE] measurements.json

Writes the namespace TeeAdmissionPolicy (--out, default tee-admission-policy.json) and
the KMS policy (--kms-out, default kms-policy.json): the same document type with the
same rules, so the KMS releases keys to exactly the images the namespace admits.
RTMR0 cannot be computed from the image: give it from a reference boot (--rtmr0,
--rtmr0-quote, --rtmr0-log) or waive it with --waive rtmr0, which writes ["*"].`

// runPolicy writes admission and KMS policies.
func runPolicy(_ context.Context, e *env, args []string) int {
	if len(args) == 0 {
		return usageErr(e, "%s", policyUsage)
	}
	switch args[0] {
	case "from-measurements":
		return policyFromMeasurements(e, args[1:])
	}
	return usageErr(e, "policy: unknown subcommand %q\n\n%s", args[0], policyUsage)
}

func policyFromMeasurements(e *env, args []string) int {
	fs := flag.NewFlagSet("policy from-measurements", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var profiles, orders, rtmr0s, rtmr0Quotes, rtmr0Logs, waive, statuses measureList
	fs.Var(&profiles, "profile", "image profile to admit (repeatable; required when there are several)")
	fs.Var(&orders, "order", "MRTD page order to allow (repeatable; default all: single-pass, two-pass, all-regions)")
	fs.Var(&rtmr0s, "rtmr0", "RTMR0 value from a reference boot (hex; repeatable)")
	fs.Var(&rtmr0Quotes, "rtmr0-quote", "quote of a reference boot; its RTMR0 is allowed (repeatable)")
	fs.Var(&rtmr0Logs, "rtmr0-log", "event log of a reference boot; its RTMR0 replay is allowed (repeatable)")
	fs.Var(&waive, "waive", "register to leave unenforced, written as [\"*\"]: mrtd, rtmr0..rtmr3 (repeatable)")
	fs.Var(&statuses, "tcb-status", "TCB status to accept (repeatable; default UpToDate)")
	acceptMock := fs.Bool("accept-mock", false, "admit mock quotes (development only)")
	allowDebug := fs.Bool("allow-debug", false, "admit debug TDs (the host can read their memory)")
	out := fs.String("out", "tee-admission-policy.json", "namespace TeeAdmissionPolicy to write (- for standard output)")
	kmsOut := fs.String("kms-out", "kms-policy.json", "KMS policy to write (- for standard output)")
	pos, err := measureParseAll(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		return usageErr(e, "policy from-measurements: want one measurements.json")
	}
	b, err := os.ReadFile(pos[0])
	if err != nil {
		return usageErr(e, "policy from-measurements: %v", err)
	}
	m, err := measure.ParseMeasurements(b)
	if err != nil {
		return usageErr(e, "policy from-measurements: %s: %v", pos[0], err)
	}
	o := &measure.PolicyOptions{Profiles: profiles, Waive: waive, AcceptMock: *acceptMock, AllowDebug: *allowDebug}
	for _, s := range orders {
		ord, err := tdvf.ParseOrder(s)
		if err != nil {
			return usageErr(e, "policy from-measurements: %v", err)
		}
		o.Orders = append(o.Orders, ord)
	}
	for _, s := range statuses {
		o.TcbStatuses = append(o.TcbStatuses, attest.TcbStatus(s))
	}
	for _, s := range rtmr0s {
		r, err := attest.ParseRTMR(s)
		if err != nil {
			return usageErr(e, "policy from-measurements: --rtmr0: %v", err)
		}
		o.RTMR0 = append(o.RTMR0, r)
	}
	for _, p := range rtmr0Quotes {
		q, err := attest.ReadQuoteFile(p)
		if err != nil {
			return usageErr(e, "policy from-measurements: --rtmr0-quote: %v", err)
		}
		o.RTMR0 = append(o.RTMR0, q.RTMR[0])
	}
	for _, p := range rtmr0Logs {
		lb, err := os.ReadFile(p)
		if err != nil {
			return usageErr(e, "policy from-measurements: --rtmr0-log: %v", err)
		}
		l, err := eventlog.Parse(lb)
		if err != nil {
			return usageErr(e, "policy from-measurements: --rtmr0-log %s: %v", p, err)
		}
		o.RTMR0 = append(o.RTMR0, l.Replay()[0])
	}
	pol, err := measure.PolicyFromMeasurements(m, o)
	if err != nil {
		return usageErr(e, "policy from-measurements: %v", err)
	}
	for _, w := range waive {
		fmt.Fprintf(e.stderr, "fleetbox: warning: %s is waived: any value is admitted\n", w)
	}
	if len(profiles) > 1 {
		// A policy lists allowed values per register, so it cannot tie the
		// values of one profile together.
		fmt.Fprintf(e.stderr, "fleetbox: warning: %d profiles in one policy: each register is checked on its own, so a mix of their values (say one profile's boot chain with another's RTMR3) is admitted too\n", len(profiles))
	}
	doc, err := pol.Marshal()
	if err != nil {
		return usageErr(e, "policy from-measurements: %v", err)
	}
	doc = append(doc, '\n')
	// Both documents must read back exactly as the services will read them.
	if _, err := attest.ParsePolicy(doc); err != nil {
		return usageErr(e, "policy from-measurements: written policy does not parse: %v", err)
	}
	for _, dst := range []string{*out, *kmsOut} {
		if dst == "-" {
			e.stdout.Write(doc)
			continue
		}
		if err := os.WriteFile(dst, doc, 0o644); err != nil {
			return runtimeErr(e, "policy from-measurements: %v", err)
		}
		fmt.Fprintf(e.stderr, "wrote %s\n", dst)
	}
	return exitOK
}
