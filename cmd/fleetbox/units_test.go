package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// execParsers are the verbs systemd units may run, each with its flag
// parser (no side effects).
var execParsers = map[string]func(args []string) error{
	"appliance boot": func(a []string) error { _, err := parseApplianceBoot(a, io.Discard); return err },
	"node run":       func(a []string) error { _, err := parseNodeRun(a, io.Discard); return err },
	"node self-purge reconcile": func(a []string) error {
		_, err := parseSelfPurge(a, io.Discard)
		return err
	},
}

// unitExecStarts returns every ExecStart= command line of the unit files in
// systemd/, by file.
func unitExecStarts(t *testing.T) map[string][]string {
	t.Helper()
	files, err := filepath.Glob("../../systemd/*.service")
	if err != nil || len(files) == 0 {
		t.Fatalf("no unit files in systemd/: %v", err)
	}
	out := map[string][]string{}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if v, ok := strings.CutPrefix(line, "ExecStart="); ok && v != "" {
				// Prefixes systemd.service(5) allows before the path.
				out[filepath.Base(f)] = append(out[filepath.Base(f)], strings.TrimLeft(v, "-@:+!"))
			}
		}
		fh.Close()
	}
	return out
}

// A renamed or removed flag fails here, not at boot: every unit's ExecStart
// goes through the same parser the binary uses.
func TestUnitExecStartsParse(t *testing.T) {
	starts := unitExecStarts(t)
	for _, unit := range []string{"fleetbox-appliance.service", "fleetbox-self-purge.service", "fleetbox-node.service"} {
		if len(starts[unit]) != 1 {
			t.Errorf("%s: want one ExecStart, have %d", unit, len(starts[unit]))
		}
	}
	for unit, cmds := range starts {
		for _, cmd := range cmds {
			argv := strings.Fields(cmd)
			if argv[0] != "/usr/bin/fleetbox" {
				t.Errorf("%s: ExecStart runs %s, not /usr/bin/fleetbox", unit, argv[0])
				continue
			}
			matched := false
			for verb, parse := range execParsers {
				words := strings.Fields(verb)
				if len(argv) > len(words) && strings.Join(argv[1:1+len(words)], " ") == verb {
					matched = true
					if err := parse(argv[1+len(words):]); err != nil {
						t.Errorf("%s: %q: %v", unit, cmd, err)
					}
				}
			}
			if !matched {
				t.Errorf("%s: %q runs no verb the test knows; add its parser to execParsers", unit, cmd)
			}
		}
	}
}

// The parsers refuse what a unit must not say: they are real checks.
func TestExecParsersRefuse(t *testing.T) {
	for name, c := range map[string]struct {
		verb string
		args []string
	}{
		"renamed flag":         {"node run", []string{"--home", "/h", "--attest", "appliance"}},
		"bad attest source":    {"node run", []string{"--home", "/h", "--attest-source", "appliances"}},
		"dstack for appliance": {"appliance boot", []string{"--attest-source", "dstack"}},
		"no home":              {"node self-purge reconcile", nil},
		"stray argument":       {"appliance boot", []string{"now"}},
		"unknown boot flag":    {"appliance boot", []string{"--profile", "dev"}},
		"purge with argument":  {"node self-purge reconcile", []string{"--home", "/h", "x"}},
	} {
		if err := execParsers[c.verb](c.args); err == nil {
			t.Errorf("%s: %s %q was accepted", name, c.verb, c.args)
		}
	}
}

// systemd-analyze verify passes on the units (where the host has it), in a
// root that holds the host's own units (for sysinit.target and the units
// ours name) and, as /usr/bin/fleetbox, a copy of this test's executable.
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	hostUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(hostUnits, "sysinit.target")); err != nil {
		t.Skip("the host has no systemd units to verify against")
	}
	root := t.TempDir()
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	binDir := filepath.Join(root, "usr/bin")
	for _, d := range []string{binDir, filepath.Dir(unitDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", hostUnits, filepath.Dir(unitDir)+"/").CombinedOutput(); err != nil {
		t.Fatalf("copying the host's units: %v %s", err, out)
	}
	self, _ := os.Executable()
	if out, err := exec.Command("cp", self, filepath.Join(binDir, "fleetbox")).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	files, _ := filepath.Glob("../../systemd/*.service")
	var units []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(unitDir, filepath.Base(f))
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, dst)
	}
	cmd := exec.Command(sa, append([]string{"verify", "--root=" + root, "--man=no"}, units...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
