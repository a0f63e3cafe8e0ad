package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure"
	"github.com/fleetbox/fleetbox/measure/dstack"
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
--rtmr0-quote, --rtmr0-log) or waive it with --waive rtmr0, which writes ["*"].

  fleetbox policy dstack --compose FILE... [--app-id HEX]... [--key-provider HEX|*]...
      [--event NAME=HEX|*]... (--os-measurements FILE... | --waive-os)
      [--tcb-status STATUS]... [--allow-debug] [--out FILE]

Writes a TeeAdmissionPolicy (--out, default tee-admission-policy.json) that admits a
dstack app. rtmr3Events pins the "compose-hash" event to the compose hash of each
--compose (an app-compose.json, or a tcb_info.json with an "app_compose" member; repeat
it to admit several app versions), "app-id" and "key-provider" when given (payloads in
hex, or * for presence only), and any --event NAME=HEX. allowedRtmr3 is ["*"] because
RTMR3 differs per instance (instance-id); the events stay bound to the quote, since
the policy replays the event log to the quote's RTMR3 before judging them.
--os-measurements pins MRTD and RTMR0-2 from a tcb_info.json, dstack-mr's --json
output or a quote file (repeat it to admit several OS versions); --waive-os writes
["*"] for them instead. One of the two is required. acceptMock is always false.`

// runPolicy writes admission and KMS policies.
func runPolicy(_ context.Context, e *env, args []string) int {
	if len(args) == 0 {
		return usageErr(e, "%s", policyUsage)
	}
	switch args[0] {
	case "from-measurements":
		return policyFromMeasurements(e, args[1:])
	case "dstack":
		return policyDstack(e, args[1:])
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
	doc, err := policyDocument(pol)
	if err != nil {
		return usageErr(e, "policy from-measurements: %v", err)
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

// policyHex checks a hex payload given on the command line: "*" passes, 0x
// and upper case are allowed; size bounds the decoded length when > 0.
func policyHex(flagName, v string, size int) (string, error) {
	if v == attest.Wildcard {
		return v, nil
	}
	h := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(v)), "0x")
	b, err := hex.DecodeString(h)
	switch {
	case err != nil:
		return "", fmt.Errorf("%s %q is not hex: %v", flagName, v, err)
	case size > 0 && len(b) != size:
		return "", fmt.Errorf("%s %q is %d bytes, want %d", flagName, v, len(b), size)
	case len(b) > attest.MaxRtmr3EventPayload:
		return "", fmt.Errorf("%s: %d bytes, over the %d-byte event payload limit", flagName, len(b), attest.MaxRtmr3EventPayload)
	}
	return h, nil
}

func policyDstack(e *env, args []string) int {
	fs := flag.NewFlagSet("policy dstack", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var composes, appIDs, keyProviders, events, osFiles, statuses measureList
	fs.Var(&composes, "compose", "app-compose.json (or tcb_info.json) of an app version to admit (repeatable; required)")
	fs.Var(&appIDs, "app-id", "app-id event payload to pin: 20 bytes of hex (repeatable)")
	fs.Var(&keyProviders, "key-provider", "key-provider event payload to pin (hex of its JSON), or * for presence only (repeatable)")
	fs.Var(&events, "event", "another RTMR3 runtime event to pin: NAME=HEX, NAME= for an empty payload, or NAME=* (repeatable)")
	fs.Var(&osFiles, "os-measurements", "MRTD and RTMR0-2 to pin, from a tcb_info.json, dstack-mr --json output or a quote file (repeatable)")
	waiveOS := fs.Bool("waive-os", false, "write [\"*\"] for MRTD and RTMR0-2: any OS image is admitted")
	fs.Var(&statuses, "tcb-status", "TCB status to accept (repeatable; default UpToDate)")
	allowDebug := fs.Bool("allow-debug", false, "admit debug TDs (the host can read their memory)")
	out := fs.String("out", "tee-admission-policy.json", "TeeAdmissionPolicy to write (- for standard output)")
	pos, err := measureParseAll(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 0 {
		return usageErr(e, "policy dstack: unexpected argument %q (give app-compose.json with --compose)", pos[0])
	}
	if len(composes) == 0 {
		return usageErr(e, "policy dstack: want --compose app-compose.json")
	}
	if len(osFiles) == 0 && !*waiveOS {
		return usageErr(e, "policy dstack: want --os-measurements FILE (tcb_info.json, dstack-mr --json output or a quote) to pin MRTD and RTMR0-2, or --waive-os to admit any OS image")
	}
	if len(osFiles) > 0 && *waiveOS {
		return usageErr(e, "policy dstack: --os-measurements and --waive-os exclude each other")
	}
	o := &dstack.PolicyOptions{WaiveOS: *waiveOS, AllowDebug: *allowDebug, Events: map[string][]string{}}
	var names []string
	for _, p := range composes {
		a, err := measureReadCompose(p)
		if err != nil {
			return usageErr(e, "policy dstack: --compose %v", err)
		}
		for _, n := range a.Notes {
			fmt.Fprintf(e.stderr, "fleetbox: policy dstack: %s: note: %s\n", p, n)
		}
		o.ComposeHashes = append(o.ComposeHashes, a.Hash)
		names = append(names, a.Name)
	}
	for _, v := range appIDs {
		h, err := policyHex("--app-id", v, 20)
		if err == nil && h == attest.Wildcard {
			err = fmt.Errorf("--app-id: want 20 bytes of hex; to require only the event's presence use --event app-id=*")
		}
		if err != nil {
			return usageErr(e, "policy dstack: %v", err)
		}
		var id [20]byte
		hex.Decode(id[:], []byte(h))
		o.AppIDs = append(o.AppIDs, id)
	}
	for _, v := range keyProviders {
		h, err := policyHex("--key-provider", v, 0)
		if err != nil {
			return usageErr(e, "policy dstack: %v", err)
		}
		o.KeyProviders = append(o.KeyProviders, h)
	}
	for _, ev := range events {
		name, val, ok := strings.Cut(ev, "=")
		if !ok || name == "" {
			return usageErr(e, "policy dstack: --event %q: want NAME=HEX or NAME=*", ev)
		}
		h, err := policyHex("--event "+name, val, 0)
		if err != nil {
			return usageErr(e, "policy dstack: %v", err)
		}
		o.Events[name] = append(o.Events[name], h)
	}
	for _, p := range osFiles {
		f, err := os.Open(p)
		if err != nil {
			return usageErr(e, "policy dstack: --os-measurements: %v", err)
		}
		b, err := io.ReadAll(io.LimitReader(f, dstack.MaxDocumentSize+1))
		f.Close()
		if err != nil {
			return usageErr(e, "policy dstack: --os-measurements: %v", err)
		}
		m, err := dstack.ParseOSMeasurements(b)
		if err != nil {
			return usageErr(e, "policy dstack: --os-measurements %s: %v", p, err)
		}
		o.OS = append(o.OS, *m)
	}
	for _, s := range statuses {
		o.TcbStatuses = append(o.TcbStatuses, attest.TcbStatus(s))
	}
	pol, err := dstack.PolicyFor(o)
	if err != nil {
		return usageErr(e, "policy dstack: %v", err)
	}
	if *waiveOS {
		fmt.Fprintf(e.stderr, "fleetbox: warning: --waive-os: mrtd and rtmr0-2 are waived: any firmware and OS image is admitted, so the app runs on whatever boot chain the host chose\n")
	}
	if len(o.OS) > 1 {
		fmt.Fprintf(e.stderr, "fleetbox: warning: %d OS measurements in one policy: each register is checked on its own, so a mix of their values (one OS version's firmware with another's kernel) is admitted too\n", len(o.OS))
	}
	doc, err := policyDocument(pol)
	if err != nil {
		return usageErr(e, "policy dstack: %v", err)
	}
	if *out == "-" {
		e.stdout.Write(doc)
	} else if err := os.WriteFile(*out, doc, 0o644); err != nil {
		return runtimeErr(e, "policy dstack: %v", err)
	}
	osDesc := fmt.Sprintf("%d OS measurement set(s) pinned", len(o.OS))
	if *waiveOS {
		osDesc = "OS waived"
	}
	evNames := make([]string, 0, len(pol.Rtmr3Events))
	for n := range pol.Rtmr3Events {
		evNames = append(evNames, n)
	}
	slices.Sort(evNames)
	dst := *out
	if dst == "-" {
		dst = "the policy to standard output"
	}
	fmt.Fprintf(e.stderr, "wrote %s: dstack app %s, %d compose hash(es), events pinned: %s; %s; rtmr3 waived (events replayed to it)\n",
		dst, strings.Join(names, ", "), len(pol.Rtmr3Events[dstack.EventComposeHash]), strings.Join(evNames, ", "), osDesc)
	return exitOK
}

// policyDocument is the policy as written: indented JSON that must read back
// exactly as the services will read it.
func policyDocument(pol *attest.Policy) ([]byte, error) {
	doc, err := pol.Marshal()
	if err != nil {
		return nil, err
	}
	doc = append(doc, '\n')
	if _, err := attest.ParsePolicy(doc); err != nil {
		return nil, fmt.Errorf("written policy does not parse: %w", err)
	}
	return doc, nil
}
