package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/boundedio"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

func runQuote(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		return usageErr(e, "quote: want inspect or verify\n\n  fleetbox quote inspect FILE\n  fleetbox quote verify FILE [--collateral FILE | --collateral-cache DIR [--pccs-url URL]] [--policy FILE] [--at RFC3339] [--no-revocation]")
	}
	switch args[0] {
	case "inspect":
		return quoteInspect(e, args[1:])
	case "verify":
		return quoteVerify(ctx, e, args[1:])
	}
	return usageErr(e, "quote: unknown subcommand %q (want inspect or verify)", args[0])
}

// quoteValues are the decoded values both subcommands print.
type quoteValues struct {
	Version      int                 `json:"version"`
	Mock         bool                `json:"mock"`
	MRTD         attest.MRTD         `json:"mrtd"`
	RTMR         [4]attest.RTMR      `json:"rtmr"`
	ReportData   attest.ReportData   `json:"reportData"`
	MRConfigID   attest.MRConfigID   `json:"mrConfigId"`
	TDAttributes attest.TDAttributes `json:"tdAttributes"`
	Debug        bool                `json:"debug"`
	FMSPC        *attest.FMSPC       `json:"fmspc"`
	TeeTcbSvn    attest.TeeTcbSvn    `json:"teeTcbSvn"`
	QuoteHash    attest.QuoteHash    `json:"quoteHash"`
}

func valuesOf(q *attest.Quote) quoteValues {
	v := quoteValues{
		Version: q.Version, Mock: q.Mock, MRTD: q.MRTD, RTMR: q.RTMR, ReportData: q.ReportData,
		MRConfigID: q.MRConfigID, TDAttributes: q.TDAttributes, Debug: q.Debug(), TeeTcbSvn: q.TeeTcbSvn, QuoteHash: q.Hash,
	}
	if f, err := q.UnverifiedFMSPC(); err == nil {
		v.FMSPC = &f
	}
	return v
}

func quoteInspect(e *env, args []string) int {
	fs := flag.NewFlagSet("quote inspect", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		return usageErr(e, "quote inspect: want one FILE (or - for standard input)")
	}
	q, err := attest.ReadQuoteFile(fs.Arg(0))
	if err != nil {
		return usageErr(e, "quote inspect: %v", err)
	}
	return printJSON(e, valuesOf(q), exitOK)
}

// verdictJSON is what `quote verify` prints.
type verdictJSON struct {
	Accepted bool `json:"accepted"`
	quoteValues
	TcbStatus          attest.TcbStatus `json:"tcbStatus"`
	TcbDetail          string           `json:"tcbDetail,omitempty"`
	TdxModuleTcbStatus attest.TcbStatus `json:"tdxModuleTcbStatus,omitempty"`
	QeTcbStatus        attest.TcbStatus `json:"qeTcbStatus,omitempty"`
	AdvisoryIDs        []string         `json:"advisoryIds"`
	CollateralChecked  bool             `json:"collateralChecked"`
	RevocationChecked  bool             `json:"revocationChecked"`
	VerifiedAt         time.Time        `json:"verifiedAt"`
	// EventLogChecked: --event-log replayed to the quote; Rtmr3Events are
	// its RTMR3 runtime events (name -> payloads, hex), what a policy's
	// rtmr3Events judged.
	EventLogChecked bool                `json:"eventLogChecked"`
	Rtmr3Events     map[string][]string `json:"rtmr3Events,omitempty"`
	Reasons         []string            `json:"reasons"`
	ReasonCodes     []string            `json:"reasonCodes"`
}

func quoteVerify(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("quote verify", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var cf collateralFlags
	cf.register(fs)
	policyPath := fs.String("policy", "", "TeeAdmissionPolicy JSON `file` (default: any measurements, UpToDate, not debug, not mock)")
	atText := fs.String("at", "", "verify at this `time` (RFC 3339) instead of now")
	noRevocation := fs.Bool("no-revocation", false, "skip the PCK and root CRL checks")
	logPath := fs.String("event-log", "", "the quote's event log `file` (dstack JSON, a dstack GetQuote answer or quote report, or a binary CCEL): it must replay to the quote, and its RTMR3 events meet the policy's rtmr3Events")
	file, rest := splitFirstArg(args)
	if err := fs.Parse(rest); err != nil {
		return exitUsage
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	} else if file == "" || fs.NArg() != 0 {
		return usageErr(e, "quote verify: want one FILE (or - for standard input)")
	}
	at := time.Now()
	if *atText != "" {
		t, err := time.Parse(time.RFC3339, *atText)
		if err != nil {
			return usageErr(e, "quote verify: --at: %v", err)
		}
		at = t
	}
	pol := attest.DefaultPolicy()
	if *policyPath != "" {
		var err error
		if pol, err = attest.LoadPolicyFile(*policyPath); err != nil {
			return usageErr(e, "quote verify: %v", err)
		}
	}
	coll, err := cf.source(e)
	if err != nil {
		return usageErr(e, "quote verify: %v", err)
	}
	q, err := attest.ReadQuoteFile(file)
	if err != nil {
		return usageErr(e, "quote verify: %v", err)
	}
	var logRaw []byte
	if *logPath != "" {
		if logRaw, err = boundedio.ReadFile(*logPath, eventlog.MaxLogSize); err != nil {
			return usageErr(e, "quote verify: --event-log: %v", err)
		}
	}
	v := attest.NewVerifier(attest.VerifierConfig{Collateral: coll, SkipRevocation: *noRevocation, Logger: e.logger})
	out := verdictJSON{quoteValues: valuesOf(q), AdvisoryIDs: []string{}, Reasons: []string{}, ReasonCodes: []string{}, VerifiedAt: at.UTC()}
	verdict, err := v.VerifyQuoteAt(ctx, q, at)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, attest.ErrRevocationRequired) {
			msg += " (pass --no-revocation to verify without CRLs)"
		}
		out.Reasons = append(out.Reasons, msg)
		code := attest.CollateralReason(err)
		if code == "" {
			code = "attestation_invalid"
		}
		out.ReasonCodes = append(out.ReasonCodes, code)
		return printJSON(e, out, exitNo)
	}
	out.TcbStatus, out.TcbDetail = verdict.TcbStatus, verdict.TcbDetail
	out.TdxModuleTcbStatus, out.QeTcbStatus = verdict.TdxModuleTcbStatus, verdict.QeTcbStatus
	out.CollateralChecked, out.RevocationChecked = verdict.CollateralChecked, verdict.RevocationChecked
	if verdict.AdvisoryIDs != nil {
		out.AdvisoryIDs = verdict.AdvisoryIDs
	}
	if logRaw != nil {
		_, err := eventlog.Bind(logRaw, verdict)
		var me *eventlog.MismatchError
		switch {
		case errors.As(err, &me):
			out.Reasons = append(out.Reasons, me.Details...)
			out.ReasonCodes = append(out.ReasonCodes, attest.ReasonEventLogMismatch)
			return printJSON(e, out, exitNo)
		case err != nil:
			return usageErr(e, "quote verify: --event-log: %v", err)
		}
		out.EventLogChecked, out.Rtmr3Events = true, attest.Rtmr3EventMap(verdict.Rtmr3Events)
	}
	for _, vi := range attest.Violations(pol.Evaluate(verdict)) {
		out.Reasons = append(out.Reasons, vi.Message)
		out.ReasonCodes = append(out.ReasonCodes, vi.Reason)
	}
	out.Accepted = len(out.Reasons) == 0
	code := exitOK
	if !out.Accepted {
		code = exitNo
	}
	if verdict.Mock {
		fmt.Fprintln(e.stderr, "fleetbox: MOCK quote: no TDX hardware signed it; nothing was verified")
	}
	return printJSON(e, out, code)
}

// splitFirstArg lets FILE come before the flags: `quote verify FILE --at T`.
func splitFirstArg(args []string) (string, []string) {
	if len(args) > 0 && (len(args[0]) == 0 || args[0][0] != '-' || args[0] == "-") {
		return args[0], args[1:]
	}
	return "", args
}

// collateralFlags select a collateral source: one file, or a cache
// directory refreshed from a PCS/PCCS.
type collateralFlags struct {
	file, cacheDir, pccsURL string
}

func (c *collateralFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.file, "collateral", "", "collateral `file` (dcap-qvl QuoteCollateralV3 JSON)")
	fs.StringVar(&c.cacheDir, "collateral-cache", "", "collateral cache `dir`, refreshed from --pccs-url")
	fs.StringVar(&c.pccsURL, "pccs-url", "", "PCS or PCCS base `url` that refreshes --collateral-cache (e.g. "+attest.IntelPCS+")")
}

// source returns the selected source, or nil for chain-only verification.
func (c *collateralFlags) source(e *env) (attest.CollateralSource, error) {
	switch {
	case c.file != "" && c.cacheDir != "":
		return nil, errors.New("--collateral and --collateral-cache are exclusive")
	case c.file != "":
		coll, err := attest.LoadCollateralFile(c.file)
		if err != nil {
			return nil, err
		}
		return attest.StaticCollateral{C: coll}, nil
	case c.cacheDir != "":
		return attest.NewCollateralCache(attest.CollateralCacheConfig{Dir: c.cacheDir, URL: c.pccsURL, Logger: e.logger}), nil
	case c.pccsURL != "":
		return nil, errors.New("--pccs-url needs --collateral-cache DIR")
	}
	return nil, nil
}

func printJSON(e *env, v any, code int) int {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(e.stderr, "fleetbox: writing output: %v\n", err)
		return exitUsage
	}
	return code
}
