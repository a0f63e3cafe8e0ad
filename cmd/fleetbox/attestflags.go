package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/fleetbox/fleetbox/appliance"
	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/dstack"
)

// Quote sources, one spelling for every command (--attest-source).
const (
	srcAuto      = "auto"      // tdx, else dstack, else mock (with a warning)
	srcTDX       = "tdx"       // configfs-tsm
	srcDstack    = "dstack"    // the dstack guest agent, with its event log
	srcMock      = "mock"      // MOCK quotes with --mock-* measurements
	srcAppliance = "appliance" // what `appliance boot` chose for this boot
)

// attestFlags choose where a command's quotes come from.
type attestFlags struct {
	name    string
	allowed []string
	socket  string
	m       mockFlags
}

// register adds --attest-source (default def; "" means no source unless
// asked), --dstack-socket and the mock measurement flags.
func (a *attestFlags) register(fs *flag.FlagSet, def string, allowed ...string) {
	a.allowed = allowed
	fs.StringVar(&a.name, "attest-source", def, "where quotes come from: "+a.describe())
	fs.StringVar(&a.socket, "dstack-socket", dstack.DefaultSocket, "the dstack guest agent's unix `socket` (--attest-source dstack)")
	a.m.register(fs)
}

func (a *attestFlags) describe() string {
	var parts []string
	for _, s := range a.allowed {
		switch s {
		case srcAuto:
			parts = append(parts, "auto (configfs-tsm if present, else the dstack agent if its socket exists, else MOCK)")
		case srcTDX:
			parts = append(parts, "tdx (configfs-tsm)")
		case srcDstack:
			parts = append(parts, "dstack (the guest agent, quotes with their event log)")
		case srcMock:
			parts = append(parts, "mock (MOCK quotes, --mock-*; only acceptMock policies admit them)")
		case srcAppliance:
			parts = append(parts, "appliance (what `fleetbox appliance boot` chose: "+appliance.DefaultRunDir+"/"+appliance.AttestationFile+")")
		}
	}
	return strings.Join(parts, ", ")
}

// set reports whether a source was chosen.
func (a *attestFlags) set() bool { return a.name != "" }

// check validates the choice without touching anything.
func (a *attestFlags) check() error {
	if a.name == "" || slices.Contains(a.allowed, a.name) {
		return nil
	}
	return fmt.Errorf("--attest-source %q: want %s", a.name, strings.Join(a.allowed, ", "))
}

// agent is the dstack agent client of --dstack-socket.
func (a *attestFlags) agent() *dstack.Agent { return dstack.New(a.socket) }

// source opens the chosen source (nil when none was chosen). auto falls
// back to MOCK only with a warning; a MOCK source is always named in logs
// and verdicts.
func (a *attestFlags) source(logger *slog.Logger) (attest.Source, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	var src attest.Source
	var err error
	switch a.name {
	case "":
		return nil, nil
	case srcTDX:
		src, err = attest.NewTSMSource()
	case srcDstack:
		src = a.agent().Source()
	case srcMock:
		src, err = a.m.source()
	case srcAppliance:
		src, err = appliance.LoadAttestation(appliance.DefaultRunDir + "/" + appliance.AttestationFile)
	case srcAuto:
		if s, terr := attest.NewTSMSource(); terr == nil {
			src = s
		} else if _, serr := os.Stat(a.socket); serr == nil {
			src = a.agent().Source()
		} else {
			logger.Warn("MOCK TDX: no TDX quote provider and no dstack agent; quotes are MOCK quotes",
				"tdx", terr.Error(), "dstack", a.socket+" not found")
			src, err = a.m.source()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("--attest-source %s: %w", a.name, err)
	}
	if src.Kind() == "mock" {
		logger.Warn("MOCK TDX: quotes are mock quotes; no hardware backs them")
	}
	return src, nil
}

// errNoSource is what a command that needs quotes says without one.
var errNoSource = errors.New("needs a quote source: --attest-source tdx, dstack, or mock on a machine without TDX")
