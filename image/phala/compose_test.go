package phala

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/fleetbox/fleetbox/attest"
)

// dstackSocket is the one host path a compose file may mount.
const dstackSocket = "/var/run/dstack.sock"

// digestPlaceholder stands where the operator puts the digest that
// reproducible/oci.sh printed; anything else after "@sha256:" must be a digest.
const digestPlaceholder = "DIGEST_FROM_OCI_SH"

var imageByDigest = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*(:[0-9]+)?/[A-Za-z0-9./_-]+@sha256:([0-9a-f]{64}|` + digestPlaceholder + `)$`)

// The compose keys these files may use. Decoding refuses any other
// (privileged, devices, env_file, environment, network_mode, pid, build, ...),
// so that adding one makes its author extend this list and think about
// whether it lets unmeasured input in.
type composeFile struct {
	Services map[string]service   `yaml:"services"`
	Volumes  map[string]*struct{} `yaml:"volumes"`
	Configs  map[string]configDef `yaml:"configs"`
}

type service struct {
	Image       string          `yaml:"image"`
	Restart     string          `yaml:"restart"`
	Command     []string        `yaml:"command"`
	Volumes     []yaml.Node     `yaml:"volumes"`
	Configs     []serviceConfig `yaml:"configs"`
	Ports       []string        `yaml:"ports"`
	CapDrop     []string        `yaml:"cap_drop"`
	SecurityOpt []string        `yaml:"security_opt"`
}

type serviceConfig struct {
	Source string `yaml:"source"`
	Target string `yaml:"target"`
}

type configDef struct {
	Content     *string `yaml:"content"`
	File        string  `yaml:"file"`
	Environment string  `yaml:"environment"`
	External    bool    `yaml:"external"`
}

// spec is what one compose file must hold.
type spec struct {
	command []string
	// policyFlag names the flag whose value is the inline policy's path;
	// empty when the file has no policy.
	policyFlag string
	// pinnedEvent is the RTMR3 event the policy pins the peer app by.
	pinnedEvent string
}

var files = map[string]spec{
	"fleet-replica.compose.yml": {
		command: []string{"node", "run", "--init", "--home", "/data/node", "--listen", "/ip4/0.0.0.0/tcp/4001",
			"--admin-addr", "127.0.0.1:7777", "--attest-source", "dstack", "--dstack-socket", dstackSocket,
			"--kms", "https://KMS_HOST:8443", "--kms-policy", "/etc/fleetbox/kms-policy.json",
			"--fleet-join", "<NAMESPACE_ID>", "--bootstrap", "<MULTIADDR>"},
		policyFlag:  "--kms-policy",
		pinnedEvent: "app-id",
	},
	"fleet-replica-dstack-key.compose.yml": {
		command: []string{"node", "run", "--init", "--home", "/data/node", "--listen", "/ip4/0.0.0.0/tcp/4001",
			"--admin-addr", "127.0.0.1:7777", "--attest-source", "dstack", "--dstack-socket", dstackSocket,
			"--dstack-key", "--fleet-join", "<NAMESPACE_ID>", "--bootstrap", "<MULTIADDR>"},
	},
	"kms.compose.yml": {
		command: []string{"kms", "serve", "--listen", "0.0.0.0:8443", "--policy", "/etc/fleetbox/kms-policy.json",
			"--state", "/data/kms", "--root-secret", "dstack", "--attest-source", "dstack", "--dstack-socket", dstackSocket,
			"--collateral-cache", "/data/kms/collateral", "--pccs-url", "https://api.trustedservices.intel.com"},
		policyFlag:  "--policy",
		pinnedEvent: "compose-hash",
	},
}

func TestComposeFiles(t *testing.T) {
	for name, sp := range files {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range check(data, sp) {
				t.Error(err)
			}
		})
	}
}

// TestCheckRefuses feeds check edited copies of the files: each edit lets
// unmeasured input in or drops a pin, and must be named.
func TestCheckRefuses(t *testing.T) {
	replica, err := os.ReadFile("fleet-replica.compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	kms, err := os.ReadFile("kms.compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		file      []byte
		spec      spec
		old, new_ string
		want      string
	}{
		"image by tag": {replica, files["fleet-replica.compose.yml"],
			"fleetbox@sha256:DIGEST_FROM_OCI_SH", "fleetbox:v1.2.3", "not by digest"},
		"image by tag and digest": {replica, files["fleet-replica.compose.yml"],
			"fleetbox@sha256:DIGEST_FROM_OCI_SH", "fleetbox:latest@sha256:DIGEST_FROM_OCI_SH", "not by digest"},
		"short digest": {replica, files["fleet-replica.compose.yml"],
			"@sha256:DIGEST_FROM_OCI_SH", "@sha256:0123abcd", "not by digest"},
		"host directory bind-mounted": {replica, files["fleet-replica.compose.yml"],
			"- node-data:/data", "- /srv/fleetbox:/data", "bind mount of /srv/fleetbox"},
		"relative bind mount": {kms, files["kms.compose.yml"],
			"- kms-data:/data", "- ./state:/data", "bind mount of ./state"},
		"long-syntax bind mount": {kms, files["kms.compose.yml"],
			"- kms-data:/data", "- {type: bind, source: /etc/fleetbox, target: /etc/fleetbox}", "bind mount of /etc/fleetbox"},
		"socket mounted elsewhere": {kms, files["kms.compose.yml"],
			"/var/run/dstack.sock:/var/run/dstack.sock", "/var/run/dstack.sock:/run/agent.sock", "bind mount of /var/run/dstack.sock"},
		"policy from a host file": {kms, files["kms.compose.yml"],
			"  kms-policy:\n    content: |", "  kms-policy:\n    file: ./kms-policy.json\n  unused:\n    content: |", "not inline"},
		"quotes from configfs-tsm": {replica, files["fleet-replica.compose.yml"],
			`"--attest-source", "dstack"`, `"--attest-source", "tdx"`, "--attest-source"},
		"policy accepting mock quotes": {kms, files["kms.compose.yml"],
			`"acceptMock": false`, `"acceptMock": true`, "acceptMock"},
		"peer app not pinned": {kms, files["kms.compose.yml"],
			`"compose-hash": [`, `"app-id": [`, `pins no "compose-hash"`},
		"misspelt policy key": {replica, files["fleet-replica.compose.yml"],
			`"allowedTcbStatuses"`, `"allowedTCBStatuses"`, "kms-policy"},
		"privileged": {kms, files["kms.compose.yml"],
			"    restart: unless-stopped", "    restart: unless-stopped\n    privileged: true", "privileged"},
		"secrets from the environment": {kms, files["kms.compose.yml"],
			"    restart: unless-stopped", "    restart: unless-stopped\n    environment: [ROOT_SECRET]", "environment"},
		"capabilities kept": {replica, files["fleet-replica.compose.yml"],
			"    cap_drop: [ALL]\n", "", "cap_drop"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(tc.file, []byte(tc.old)) {
				t.Fatalf("the file no longer contains %q; update this case", tc.old)
			}
			edited := bytes.Replace(tc.file, []byte(tc.old), []byte(tc.new_), 1)
			errs := check(edited, tc.spec)
			if len(errs) == 0 {
				t.Fatalf("check accepted the edit %q -> %q", tc.old, tc.new_)
			}
			if !strings.Contains(errors.Join(errs...).Error(), tc.want) {
				t.Errorf("errors %v do not mention %q", errs, tc.want)
			}
		})
	}
}

// check returns every way data misses sp.
func check(data []byte, sp spec) []error {
	var cf composeFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil {
		return []error{fmt.Errorf("compose file: %w", err)}
	}
	if len(cf.Services) != 1 {
		return []error{fmt.Errorf("%d services, want 1", len(cf.Services))}
	}
	var errs []error
	for name, svc := range cf.Services {
		if !imageByDigest.MatchString(svc.Image) {
			errs = append(errs, fmt.Errorf("%s: image %q is not by digest (REGISTRY/NAME@sha256:<64 hex>): a tag is not measured", name, svc.Image))
		}
		if !slices.Equal(svc.Command, sp.command) {
			errs = append(errs, fmt.Errorf("%s: command\n  %q\nwant\n  %q", name, svc.Command, sp.command))
		}
		if v := flagValue(svc.Command, "--attest-source"); v != "dstack" {
			errs = append(errs, fmt.Errorf("%s: --attest-source %q, want dstack", name, v))
		}
		if !slices.Contains(svc.CapDrop, "ALL") || !slices.Contains(svc.SecurityOpt, "no-new-privileges:true") {
			errs = append(errs, fmt.Errorf("%s: want cap_drop [ALL] and security_opt no-new-privileges:true", name))
		}
		errs = append(errs, checkVolumes(name, svc.Volumes, cf.Volumes)...)
		errs = append(errs, checkPolicy(name, svc, cf.Configs, sp)...)
	}
	return errs
}

func flagValue(cmd []string, flag string) string {
	i := slices.Index(cmd, flag)
	if i < 0 || i+1 >= len(cmd) {
		return ""
	}
	return cmd[i+1]
}

// checkVolumes allows named volumes that the file declares, and the dstack
// socket at its own path; any other host path is unmeasured input.
func checkVolumes(svc string, vols []yaml.Node, declared map[string]*struct{}) []error {
	var errs []error
	socket := false
	for _, n := range vols {
		var typ, src, dst string
		switch n.Kind {
		case yaml.ScalarNode:
			parts := strings.Split(n.Value, ":")
			if len(parts) < 2 {
				errs = append(errs, fmt.Errorf("%s: volume %q: anonymous volumes are not declared; name it", svc, n.Value))
				continue
			}
			src, dst = parts[0], parts[1]
			typ = "volume"
			if strings.HasPrefix(src, "/") || strings.HasPrefix(src, ".") || strings.HasPrefix(src, "~") {
				typ = "bind"
			}
		case yaml.MappingNode:
			var long struct{ Type, Source, Target string }
			if err := n.Decode(&long); err != nil {
				errs = append(errs, fmt.Errorf("%s: volume: %w", svc, err))
				continue
			}
			typ, src, dst = long.Type, long.Source, long.Target
		default:
			errs = append(errs, fmt.Errorf("%s: volume at line %d: neither a string nor a mapping", svc, n.Line))
			continue
		}
		switch {
		case typ == "bind" && src == dstackSocket && dst == dstackSocket:
			socket = true
		case typ == "bind":
			errs = append(errs, fmt.Errorf("%s: bind mount of %s at %s: host files are not measured; only %s may be mounted, at its own path", svc, src, dst, dstackSocket))
		case typ == "volume":
			if _, ok := declared[src]; !ok {
				errs = append(errs, fmt.Errorf("%s: volume %q is not declared under the top-level volumes", svc, src))
			}
		default:
			errs = append(errs, fmt.Errorf("%s: volume of type %q at %s: want a named volume", svc, typ, dst))
		}
	}
	if !socket {
		errs = append(errs, fmt.Errorf("%s: the dstack agent socket %s is not mounted", svc, dstackSocket))
	}
	return errs
}

var hexPlaceholder = regexp.MustCompile(`<([0-9]+) hex[^>]*>`)

// checkPolicy requires the policy the command reads to be an inline config
// (content: in the file, so measured) that, with its placeholders filled,
// is a valid TeeAdmissionPolicy refusing mock quotes and pinning the peer
// app by an RTMR3 event.
func checkPolicy(svc string, s service, configs map[string]configDef, sp spec) []error {
	if sp.policyFlag == "" {
		if len(s.Configs) != 0 || len(configs) != 0 {
			return []error{fmt.Errorf("%s: configs present, but the command reads none", svc)}
		}
		return nil
	}
	path := flagValue(s.Command, sp.policyFlag)
	var source string
	for _, c := range s.Configs {
		if c.Target == path {
			source = c.Source
		}
	}
	if source == "" {
		return []error{fmt.Errorf("%s: %s %s is not a config target of the service", svc, sp.policyFlag, path)}
	}
	def, ok := configs[source]
	if !ok || def.Content == nil || def.File != "" || def.Environment != "" || def.External {
		return []error{fmt.Errorf("%s: config %q (%s) is not inline: want content: | in the file, which the compose hash covers", svc, source, path)}
	}
	filled := hexPlaceholder.ReplaceAllStringFunc(*def.Content, func(m string) string {
		var n int
		fmt.Sscanf(hexPlaceholder.FindStringSubmatch(m)[1], "%d", &n)
		return strings.Repeat("a", n)
	})
	p, err := attest.ParsePolicy([]byte(filled))
	if err != nil {
		return []error{fmt.Errorf("%s: config %q (%s): %w", svc, source, sp.policyFlag, err)}
	}
	var errs []error
	if p.AcceptMock {
		errs = append(errs, fmt.Errorf("%s: config %q: acceptMock is true: a policy on dstack admits real quotes only", svc, source))
	}
	if vals := p.Rtmr3Events[sp.pinnedEvent]; len(vals) == 0 || slices.Contains(vals, attest.Wildcard) {
		errs = append(errs, fmt.Errorf("%s: config %q pins no %q RTMR3 event value: with allowedRtmr3 waived, any app would pass", svc, source, sp.pinnedEvent))
	}
	return errs
}
