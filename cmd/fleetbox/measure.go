package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure"
	"github.com/fleetbox/fleetbox/measure/dstack"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/measure/tdvf"
	"github.com/fleetbox/fleetbox/measure/uki"
)

const measureUsage = `measure: want a subcommand

  fleetbox measure mrtd --firmware FILE [--order single-pass|two-pass|all-regions] [--td-hob FILE] [--json]
  fleetbox measure eventlog --log FILE [--tpm] [--quote FILE] [--expect FILE [--profile NAME]] [--json]
  fleetbox measure boot --uki FILE [--bootloader FILE] [--cmdline TEXT] [--disk FILE]
                        [--rtmr0-log FILE] [--stub-measures auto|yes|no] [--kernel-measures auto|yes|no]
                        [--no-kernel-image] [--log-out FILE] [--json]
  fleetbox measure rtmr3 --profile NAME --config FILE [--log-out FILE] [--json]
  fleetbox measure image [--firmware FILE] [--out FILE] [--rtmr0 HEX]... [--rtmr0-quote FILE]... [--rtmr0-log FILE]... DIR
  fleetbox measure compose [--json] FILE
      FILE is a dstack app-compose.json, or a tcb_info.json (an object whose "app_compose"
      member is the app-compose.json's text); prints the compose hash dstack extends into
      RTMR3 (SHA-256 of the file's exact bytes) and the MRCONFIGID it implies (0x01 || hash)`

// runMeasure computes expected MRTD and RTMRs from image artifacts.
func runMeasure(_ context.Context, e *env, args []string) int {
	if len(args) == 0 {
		return usageErr(e, "%s", measureUsage)
	}
	switch args[0] {
	case "mrtd":
		return measureMRTD(e, args[1:])
	case "eventlog":
		return measureEventlog(e, args[1:])
	case "boot":
		return measureBoot(e, args[1:])
	case "rtmr3":
		return measureRTMR3(e, args[1:])
	case "image":
		return measureImage(e, args[1:])
	case "compose":
		return measureCompose(e, args[1:])
	}
	return usageErr(e, "measure: unknown subcommand %q\n\n%s", args[0], measureUsage)
}

// measureParseAll parses flags that may come before or after positional arguments.
func measureParseAll(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// measureList collects a repeatable flag.
type measureList []string

func (l *measureList) String() string     { return strings.Join(*l, ",") }
func (l *measureList) Set(s string) error { *l = append(*l, s); return nil }

// measureTri is auto (nil), yes or no.
type measureTri struct{ v *bool }

func (t *measureTri) String() string {
	if t.v == nil {
		return "auto"
	}
	if *t.v {
		return "yes"
	}
	return "no"
}

func (t *measureTri) Set(s string) error {
	switch s {
	case "auto":
		t.v = nil
	case "yes", "true":
		v := true
		t.v = &v
	case "no", "false":
		v := false
		t.v = &v
	default:
		return errors.New("want auto, yes or no")
	}
	return nil
}

func measureWriteJSON(e *env, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		fmt.Fprintf(e.stderr, "fleetbox: encoding output: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(e.stdout, "%s\n", b)
	return exitOK
}

// measureExpected reads the expected events: a JSON or CCEL log, or a
// measurements.json, whose profile's predicted events are used.
func measureExpected(path, profile string) (*eventlog.Log, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, merr := measure.ParseMeasurements(b)
	if merr != nil {
		l, err := eventlog.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("%s is neither an event log (%v) nor measurements.json (%v)", path, err, merr)
		}
		return l, nil
	}
	if profile == "" {
		if len(m.Profiles) != 1 {
			return nil, fmt.Errorf("%s has profiles %v: choose one with --profile", path, m.ProfileNames())
		}
		profile = m.ProfileNames()[0]
	}
	p, ok := m.Profiles[profile]
	if !ok {
		return nil, fmt.Errorf("%s has no profile %q (have %v)", path, profile, m.ProfileNames())
	}
	evs, err := p.ExpectedEvents()
	if err != nil {
		return nil, err
	}
	return &eventlog.Log{Format: "predicted", Events: evs}, nil
}

func measureMRTD(e *env, args []string) int {
	fs := flag.NewFlagSet("measure mrtd", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fwPath := fs.String("firmware", "", "TDVF/OVMF firmware image")
	order := fs.String("order", "", "page order: single-pass (QEMU 9+), two-pass (QEMU 8), all-regions (Google); default: all")
	hobPath := fs.String("td-hob", "", "TD HOB `file`: the exact TD_HOB section content the platform wrote (required for all-regions)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *fwPath == "" || fs.NArg() != 0 {
		return usageErr(e, "measure mrtd: want --firmware FILE")
	}
	// all-regions (Google Cloud's order) also measures the TD HOB, which
	// that platform builds from the VM's launch options (its memory size
	// among them); a zero HOB gives an MRTD no platform reports. Without
	// the HOB's exact content the order is refused, or left out of "all".
	const noHOB = "the all-regions order measures the TD HOB, which Google Cloud builds from the VM's launch options (memory size among them); a zero HOB gives an MRTD no platform reports: pass --td-hob FILE with the HOB's exact content"
	var orders []tdvf.Order
	if *order != "" {
		o, err := tdvf.ParseOrder(*order)
		if err != nil {
			return usageErr(e, "measure mrtd: %v", err)
		}
		if o == tdvf.AllRegions && *hobPath == "" {
			return usageErr(e, "measure mrtd: %s", noHOB)
		}
		orders = []tdvf.Order{o}
	} else {
		for _, o := range tdvf.Orders {
			if o != tdvf.AllRegions || *hobPath != "" {
				orders = append(orders, o)
			}
		}
		if *hobPath == "" {
			fmt.Fprintf(e.stderr, "fleetbox: measure mrtd: all-regions left out: %s\n", noHOB)
		}
	}
	fw, err := os.ReadFile(*fwPath)
	if err != nil {
		return usageErr(e, "measure mrtd: %v", err)
	}
	opts := &tdvf.Options{}
	if *hobPath != "" {
		if opts.TDHOB, err = os.ReadFile(*hobPath); err != nil {
			return usageErr(e, "measure mrtd: %v", err)
		}
	}
	md, err := tdvf.Parse(fw)
	if err != nil {
		return usageErr(e, "measure mrtd: %s: %v", *fwPath, err)
	}
	type row struct {
		Order tdvf.Order  `json:"order"`
		MRTD  attest.MRTD `json:"mrtd"`
	}
	var rows []row
	for _, o := range orders {
		m, err := md.MRTD(fw, o, opts)
		if err != nil {
			return usageErr(e, "measure mrtd: %v", err)
		}
		rows = append(rows, row{o, m})
	}
	if *asJSON {
		return measureWriteJSON(e, map[string]any{"firmware": *fwPath, "sections": md.Sections, "mrtd": rows})
	}
	for _, s := range md.Sections {
		fmt.Fprintf(e.stdout, "section %-8s gpa 0x%09x size 0x%07x raw 0x%06x+0x%06x attr 0x%x\n",
			s.TypeName(), s.MemoryAddress, s.MemoryDataSize, s.DataOffset, s.RawDataSize, s.Attributes)
	}
	for _, r := range rows {
		fmt.Fprintf(e.stdout, "mrtd %s order=%s\n", r.MRTD, r.Order)
	}
	return exitOK
}

func measureReadLog(path string) (*eventlog.Log, error) { return measureReadLogAs(path, false) }

// measureReadLogAs reads a CCEL or JSON log, or with tpm a vTPM's
// PCR-indexed TCG2 log (mapped to RTMRs).
func measureReadLogAs(path string, tpm bool) (*eventlog.Log, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	parse := eventlog.Parse
	if tpm {
		parse = eventlog.ParseTPMLog
	}
	l, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

func measureEventlog(e *env, args []string) int {
	fs := flag.NewFlagSet("measure eventlog", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	logPath := fs.String("log", "", "event log: binary CCEL or dstack JSON")
	quotePath := fs.String("quote", "", "quote to compare the replay with")
	expectPath := fs.String("expect", "", "expected events to diff against: measurements.json, measure boot --log-out, or a reference boot's log")
	profile := fs.String("profile", "", "with --expect measurements.json: the image profile to compare with")
	tpm := fs.Bool("tpm", false, "the log is a vTPM's PCR-indexed TCG2 log (binary_bios_measurements), mapped to RTMRs")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *logPath == "" || fs.NArg() != 0 {
		return usageErr(e, "measure eventlog: want --log FILE")
	}
	l, err := measureReadLogAs(*logPath, *tpm)
	if err != nil {
		return usageErr(e, "measure eventlog: %v", err)
	}
	code := exitOK
	var changes []eventlog.Change
	if *expectPath != "" {
		want, err := measureExpected(*expectPath, *profile)
		if err != nil {
			return usageErr(e, "measure eventlog: %v", err)
		}
		// Compare only the registers the expected log covers: a prediction
		// from measure boot holds RTMR1 and RTMR2 only.
		var covered [eventlog.Registers]bool
		for _, x := range want.Events {
			covered[x.RTMR] = true
		}
		var actual []eventlog.Event
		for _, x := range l.Events {
			if covered[x.RTMR] {
				actual = append(actual, x)
			}
		}
		for i, c := range covered {
			if !c {
				fmt.Fprintf(e.stderr, "fleetbox: %s has no rtmr%d events; rtmr%d not diffed\n", *expectPath, i, i)
			}
		}
		if changes, err = eventlog.Diff(want.Events, actual); err != nil {
			return usageErr(e, "measure eventlog: %v", err)
		}
		if len(changes) > 0 {
			code = exitNo
		}
	}
	var rep *eventlog.Report
	if *quotePath != "" {
		q, err := attest.ReadQuoteFile(*quotePath)
		if err != nil {
			return usageErr(e, "measure eventlog: %v", err)
		}
		rep = eventlog.Compare(l, q.RTMR)
		if !rep.OK() {
			code = exitNo
		}
	}
	issues := eventlog.Check(l.Events)
	if len(issues) > 0 {
		code = exitNo
	}
	replay := l.Replay()
	if *asJSON {
		type ev struct {
			Seq         int    `json:"seq"`
			RTMR        int    `json:"rtmr"`
			Type        string `json:"type"`
			Digest      string `json:"digest"`
			Description string `json:"description"`
		}
		out := struct {
			Format  string         `json:"format"`
			Replay  [4]attest.RTMR `json:"replay"`
			Match   *[4]bool       `json:"match,omitempty"`
			Events  []ev           `json:"events"`
			Issues  []string       `json:"issues"`
			Changes []string       `json:"changes,omitempty"`
		}{Format: l.Format, Replay: replay, Issues: []string{}}
		for _, x := range l.Events {
			out.Events = append(out.Events, ev{x.Seq, x.RTMR, eventlog.TypeName(x.Type), x.Digest.String(), x.Description()})
		}
		for _, is := range issues {
			out.Issues = append(out.Issues, is.String())
		}
		for _, c := range changes {
			out.Changes = append(out.Changes, c.String())
		}
		if rep != nil {
			var m [4]bool
			for i, r := range rep.Registers {
				m[i] = r.Match()
			}
			out.Match = &m
		}
		if c := measureWriteJSON(e, out); c != exitOK {
			return c
		}
		return code
	}
	fmt.Fprintf(e.stdout, "%s log, %d measured events\n", l.Format, len(l.Events))
	if rep != nil {
		rep.WriteText(e.stdout)
	} else {
		for _, x := range l.Events {
			pcr := ""
			if x.PCR >= 0 {
				pcr = fmt.Sprintf(" (pcr%d)", x.PCR)
			}
			fmt.Fprintf(e.stdout, "  #%-3d rtmr%d%s %s %s\n", x.Seq, x.RTMR, pcr, x.Digest, x.Description())
		}
		for i, r := range replay {
			fmt.Fprintf(e.stdout, "rtmr%d %s\n", i, r)
		}
		for _, is := range issues {
			fmt.Fprintf(e.stdout, "! %s\n", is)
		}
	}
	if *expectPath != "" {
		if len(changes) == 0 {
			fmt.Fprintf(e.stdout, "events match %s\n", *expectPath)
		}
		for _, c := range changes {
			fmt.Fprintf(e.stdout, "diff: %s\n", c)
		}
	}
	return code
}

func measureBoot(e *env, args []string) int {
	fs := flag.NewFlagSet("measure boot", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	ukiPath := fs.String("uki", "", "unified kernel image")
	bootPath := fs.String("bootloader", "", "systemd-boot EFI binary (omit if the firmware boots the UKI directly)")
	cmdline := fs.String("cmdline", "", "command line the boot loader passes to the UKI (omit: the UKI's .cmdline)")
	diskPath := fs.String("disk", "", "raw disk image, for the GPT event the firmware measures")
	rtmr0Log := fs.String("rtmr0-log", "", "event log of a reference boot; its RTMR0 replay is reported")
	var stub, kern measureTri
	fs.Var(&stub, "stub-measures", "systemd-stub measures into RTMRs: auto (version >= 255), yes, no")
	fs.Var(&kern, "kernel-measures", "the kernel EFI stub measures into RTMRs: auto (version >= 6.9), yes, no")
	noKimg := fs.Bool("no-kernel-image", false, "predict no firmware measurement of the kernel systemd-stub loads (Secure Boot override)")
	logOut := fs.String("log-out", "", "write the predicted events as a JSON event log")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *ukiPath == "" || fs.NArg() != 0 {
		return usageErr(e, "measure boot: want --uki FILE")
	}
	in := &uki.Input{StubMeasuresCC: stub.v, KernelMeasuresCC: kern.v, KernelImageNotMeasured: *noKimg}
	var err error
	if in.UKI, err = os.ReadFile(*ukiPath); err != nil {
		return usageErr(e, "measure boot: %v", err)
	}
	if *bootPath != "" {
		if in.Bootloader, err = os.ReadFile(*bootPath); err != nil {
			return usageErr(e, "measure boot: %v", err)
		}
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "cmdline" {
			in.Cmdline = cmdline
		}
	})
	if *diskPath != "" {
		f, err := os.Open(*diskPath)
		if err != nil {
			return usageErr(e, "measure boot: %v", err)
		}
		in.GPTEvent, err = uki.GPTEventData(f, 512)
		f.Close()
		if err != nil {
			return usageErr(e, "measure boot: %s: %v", *diskPath, err)
		}
	}
	p, err := uki.Predict(in)
	if err != nil {
		return usageErr(e, "measure boot: %v", err)
	}
	rtmr0 := "not predicted: RTMR0 depends on the hypervisor's ACPI tables and TD HOB; take it from a reference boot (--rtmr0-log) or waive it in the policy"
	var r0 *attest.RTMR
	if *rtmr0Log != "" {
		l, err := measureReadLog(*rtmr0Log)
		if err != nil {
			return usageErr(e, "measure boot: %v", err)
		}
		v := l.Replay()[0]
		r0 = &v
		rtmr0 = fmt.Sprintf("%s (from the reference boot log %s)", v, *rtmr0Log)
	}
	if *logOut != "" {
		b, err := eventlog.MarshalJSON(p.Events)
		if err == nil {
			err = os.WriteFile(*logOut, b, 0o644)
		}
		if err != nil {
			return usageErr(e, "measure boot: writing %s: %v", *logOut, err)
		}
	}
	if *asJSON {
		type ev struct {
			RTMR        int    `json:"rtmr"`
			Type        string `json:"type"`
			Digest      string `json:"digest"`
			Description string `json:"description"`
		}
		out := struct {
			RTMR0             *attest.RTMR `json:"rtmr0"`
			RTMR1             attest.RTMR  `json:"rtmr1"`
			RTMR2             attest.RTMR  `json:"rtmr2"`
			Events            []ev         `json:"events"`
			Notes             []string     `json:"notes"`
			StubVersion       int          `json:"stubVersion"`
			BootloaderVersion int          `json:"bootloaderVersion"`
			KernelVersion     string       `json:"kernelVersion"`
			PCR11             *attest.RTMR `json:"pcr11,omitempty"`
		}{RTMR0: r0, RTMR1: p.RTMR1, RTMR2: p.RTMR2, Notes: p.Notes, StubVersion: p.StubVersion,
			BootloaderVersion: p.BootloaderVersion, KernelVersion: p.KernelVersion, PCR11: p.PCR11}
		for _, x := range p.Events {
			out.Events = append(out.Events, ev{x.RTMR, eventlog.TypeName(x.Type), x.Digest.String(), x.Description()})
		}
		return measureWriteJSON(e, out)
	}
	fmt.Fprintf(e.stdout, "systemd-stub %d, systemd-boot %d, kernel %s\n", p.StubVersion, p.BootloaderVersion, p.KernelVersion)
	for _, x := range p.Events {
		fmt.Fprintf(e.stdout, "  rtmr%d %s %s\n", x.RTMR, x.Digest, x.Description())
	}
	fmt.Fprintf(e.stdout, "rtmr0 %s\n", rtmr0)
	fmt.Fprintf(e.stdout, "rtmr1 %s\n", p.RTMR1)
	fmt.Fprintf(e.stdout, "rtmr2 %s\n", p.RTMR2)
	if p.PCR11 != nil {
		fmt.Fprintf(e.stdout, "pcr11 %s (UKI sections as systemd-measure computes them, sha384, no phase)\n", *p.PCR11)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(e.stdout, "note: %s\n", n)
	}
	return exitOK
}

func measureRTMR3(e *env, args []string) int {
	fs := flag.NewFlagSet("measure rtmr3", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	profile := fs.String("profile", "", "image profile the appliance runs (prod, dev, ...)")
	cfgPath := fs.String("config", "", "the appliance configuration file, as stored in the image")
	logOut := fs.String("log-out", "", "write the runtime events as a JSON event log")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *profile == "" || *cfgPath == "" || fs.NArg() != 0 {
		return usageErr(e, "measure rtmr3: want --profile NAME --config FILE")
	}
	cfg, err := os.ReadFile(*cfgPath)
	if err != nil {
		return usageErr(e, "measure rtmr3: %v", err)
	}
	evs, err := measure.BootEvents(*profile, measure.ConfigHash(cfg))
	if err != nil {
		return usageErr(e, "measure rtmr3: %v", err)
	}
	r := measure.ReplayRTMR3(evs)
	if *logOut != "" {
		b, err := measure.MarshalRuntimeLog(evs)
		if err == nil {
			err = os.WriteFile(*logOut, b, 0o644)
		}
		if err != nil {
			return usageErr(e, "measure rtmr3: writing %s: %v", *logOut, err)
		}
	}
	if *asJSON {
		type ev struct {
			Name    string `json:"name"`
			Payload string `json:"payload"`
			Digest  string `json:"digest"`
		}
		var out struct {
			Events []ev        `json:"events"`
			RTMR3  attest.RTMR `json:"rtmr3"`
		}
		for _, x := range evs {
			out.Events = append(out.Events, ev{x.Name, fmt.Sprintf("%x", x.Payload), x.Digest().String()})
		}
		out.RTMR3 = r
		return measureWriteJSON(e, out)
	}
	for _, x := range evs {
		fmt.Fprintf(e.stdout, "  %s %s payload %x\n", x.Digest(), x.Name, x.Payload)
	}
	fmt.Fprintf(e.stdout, "rtmr3 %s\n", r)
	return exitOK
}

func measureImage(e *env, args []string) int {
	fs := flag.NewFlagSet("measure image", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fw := fs.String("firmware", "/usr/share/ovmf/OVMF.fd", "TDVF/OVMF firmware the TD boots")
	out := fs.String("out", "", "where to write measurements.json (default DIR/measurements.json; - for standard output)")
	profile := fs.String("profile", "", "DIR itself is this one `profile` (build/image/PROFILE as image/build.sh writes it); default: one profile per subdirectory")
	var rtmr0s, rtmr0Logs, rtmr0Quotes measureList
	fs.Var(&rtmr0s, "rtmr0", "RTMR0 from a reference boot's quote (hex; repeatable)")
	fs.Var(&rtmr0Quotes, "rtmr0-quote", "quote of a reference boot; its RTMR0 is recorded (repeatable)")
	fs.Var(&rtmr0Logs, "rtmr0-log", "event log of a reference boot, replayed for RTMR0 (repeatable)")
	var stub, kern measureTri
	fs.Var(&stub, "stub-measures", "systemd-stub measures into RTMRs: auto, yes, no")
	fs.Var(&kern, "kernel-measures", "the kernel EFI stub measures into RTMRs: auto, yes, no")
	pos, err := measureParseAll(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		return usageErr(e, "measure image: want one DIR")
	}
	opts := &measure.ImageOptions{Firmware: *fw, FleetboxVersion: version, RTMR0Logs: rtmr0Logs,
		StubMeasuresCC: stub.v, KernelMeasuresCC: kern.v, Profile: *profile}
	for _, s := range rtmr0s {
		r, err := attest.ParseRTMR(s)
		if err != nil {
			return usageErr(e, "measure image: --rtmr0: %v", err)
		}
		opts.RTMR0 = append(opts.RTMR0, r)
	}
	for _, p := range rtmr0Quotes {
		q, err := attest.ReadQuoteFile(p)
		if err != nil {
			return usageErr(e, "measure image: --rtmr0-quote: %v", err)
		}
		opts.RTMR0 = append(opts.RTMR0, q.RTMR[0])
	}
	m, err := measure.MeasureImage(pos[0], opts)
	if err != nil {
		return usageErr(e, "measure image: %v", err)
	}
	b, err := m.Marshal()
	if err != nil {
		return usageErr(e, "measure image: %v", err)
	}
	dst := *out
	if dst == "" {
		dst = filepath.Join(pos[0], "measurements.json")
	}
	// The summary goes to stderr, so that "--out -" leaves clean JSON.
	w := e.stderr
	if dst != "-" {
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return usageErr(e, "measure image: %v", err)
		}
		fmt.Fprintf(w, "wrote %s\n", dst)
	} else {
		e.stdout.Write(b)
	}
	for _, n := range m.ProfileNames() {
		p := m.Profiles[n]
		fmt.Fprintf(w, "profile %s: mrtd(single-pass) %s rtmr1 %s rtmr2 %s", n, p.MRTD[tdvf.SinglePass], p.RTMR1, p.RTMR2)
		if p.RTMR3 != nil {
			fmt.Fprintf(w, " rtmr3 %s", *p.RTMR3)
		}
		fmt.Fprintln(w)
		for _, note := range p.Notes {
			fmt.Fprintf(w, "  note: %s\n", note)
		}
	}
	return exitOK
}

// measureReadCompose reads a dstack app-compose.json, or a tcb_info-style
// document that carries one, at most dstack.MaxDocumentSize bytes.
func measureReadCompose(path string) (*dstack.AppCompose, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, dstack.MaxDocumentSize+1))
	if err != nil {
		return nil, err
	}
	a, err := dstack.ParseComposeDocument(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

func measureCompose(e *env, args []string) int {
	fs := flag.NewFlagSet("measure compose", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	asJSON := fs.Bool("json", false, "print JSON: composeHash, mrConfigId, name, runner")
	pos, err := measureParseAll(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		return usageErr(e, "measure compose: want one app-compose.json (or tcb_info.json)")
	}
	a, err := measureReadCompose(pos[0])
	if err != nil {
		return usageErr(e, "measure compose: %v", err)
	}
	for _, n := range a.Notes {
		fmt.Fprintf(e.stderr, "fleetbox: measure compose: note: %s\n", n)
	}
	cfg := a.Hash.MRConfigIDV1()
	if *asJSON {
		return measureWriteJSON(e, struct {
			ComposeHash dstack.ComposeHash `json:"composeHash"`
			MRConfigID  attest.MRConfigID  `json:"mrConfigId"`
			Name        string             `json:"name"`
			Runner      string             `json:"runner"`
		}{a.Hash, cfg, a.Name, a.Runner})
	}
	fmt.Fprintf(e.stdout, "compose-hash %s\n", a.Hash)
	fmt.Fprintf(e.stdout, "mr-config-id %s (version 1: 0x01 || compose hash; a host may set none, all zeros, or another version)\n", cfg)
	if !a.KMSEnabled {
		id := a.Hash.AppIDWithoutKMS()
		fmt.Fprintf(e.stdout, "app-id %x (kms_enabled is false: the compose hash's first 20 bytes)\n", id)
	}
	dc := "no docker_compose_file"
	if a.HasDockerComposeFile {
		dc = "docker_compose_file present"
	}
	fmt.Fprintf(e.stdout, "name %q runner %q, %s\n", a.Name, a.Runner, dc)
	return exitOK
}
