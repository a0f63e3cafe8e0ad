package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/fleetbox/fleetbox/appliance"
)

const applianceUsage = `usage: fleetbox appliance boot [--run-dir DIR] [--state-dir DIR]

boot is what fleetbox-appliance.service runs inside the image, before the
node: settings (security ones only from the image and the kernel command
line), TDX or (dev profile only) MOCK quotes, RTMR3 events, the KMS checked
and asked for this instance's key, the LUKS2 data volume unlocked (formatted
when blank) and mounted, the store key handed to the node as a credential.
Exit 0: the node may start; 1: the boot stopped for a reason an operator
must act on (a refusal, a key that does not open the volume, no TDX in
prod); 3: a runtime failure.`

// applianceBootOpts are the flags of `appliance boot`.
type applianceBootOpts struct {
	runDir, stateDir, source string
}

func parseApplianceBoot(args []string, stderr io.Writer) (*applianceBootOpts, error) {
	fs := flag.NewFlagSet("appliance boot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &applianceBootOpts{}
	fs.StringVar(&o.runDir, "run-dir", appliance.DefaultRunDir, "tmpfs `dir` for the event log, the attestation file and the store key credential")
	fs.StringVar(&o.stateDir, "state-dir", appliance.DefaultStateDir, "where the data volume is mounted")
	fs.StringVar(&o.source, "attest-source", srcAuto, "auto (TDX, else MOCK where the profile allows it), tdx, or mock (only where the profile allows it)")
	if err := fs.Parse(args); err != nil {
		return nil, flagErr(err)
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch o.source {
	case srcAuto, srcTDX, srcMock:
	case srcDstack:
		return nil, errors.New("--attest-source dstack: the appliance boots its own image; on dstack fleetbox runs as a container (node run --attest-source dstack)")
	default:
		return nil, fmt.Errorf("--attest-source %q: want auto, tdx or mock", o.source)
	}
	return o, nil
}

func runAppliance(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] != "boot" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintln(e.stderr, applianceUsage)
			return exitOK
		}
		return usageErr(e, "appliance: want boot\n\n%s", applianceUsage)
	}
	o, err := parseApplianceBoot(args[1:], e.stderr)
	if code, done := parseResult(e, "appliance boot", err); done {
		return code
	}
	res, err := appliance.Boot(ctx, appliance.Config{
		CredentialsDir: os.Getenv("CREDENTIALS_DIRECTORY"),
		RunDir:         o.runDir,
		StateDir:       o.stateDir,
		AttestSource:   o.source,
		Console:        e.stdout,
		Logger:         e.logger,
	})
	if err != nil {
		var se *appliance.StopError
		if errors.As(err, &se) {
			fmt.Fprintf(e.stdout, "fleetbox: BOOT STOPPED: %v\n", err)
			return exitNo
		}
		fmt.Fprintf(e.stdout, "fleetbox: BOOT FAILED: %v\n", err)
		return exitRuntime
	}
	e.logger.Info("appliance boot done", "profile", res.Profile, "quotes", res.Source, "instance", res.InstanceID,
		"firstBoot", res.FirstBoot, "kmsAuditSeq", res.KMSAudit, "nodePeer", res.NodePeer)
	return exitOK
}
