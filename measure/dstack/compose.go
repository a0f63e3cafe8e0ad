// Package dstack computes what a dstack (Dstack-TEE/dstack, Phala Cloud)
// CVM measures about the app it runs, so that a TeeAdmissionPolicy can pin a
// dstack app by its identity rather than by per-instance register values.
//
// dstack runs a docker-compose app described by app-compose.json. At boot,
// dstack-util extends RTMR3 with runtime events (type 0x08000001), among them
// "compose-hash", whose payload is the app's compose hash: SHA-256 over the
// app-compose.json file exactly as the host provisioned it. See ComposeHashOf
// for where that is defined.
package dstack

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/fleetbox/fleetbox/attest/measurement"
	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// MaxDocumentSize bounds an app-compose.json, or a document that carries one
// (tcb_info.json), as this package reads it.
const MaxDocumentSize = 1 << 20

// GuestCopyLimit is the largest app-compose.json dstack boots: dstack-util
// copies it out of the host-shared directory with a 256 KiB limit and fails
// the boot above it (Dstack-TEE/dstack, dstack-util/src/system_setup.rs,
// HostShared::copy, `copy(APP_COMPOSE, SZ_1KB * 256, false)`).
const GuestCopyLimit = 256 << 10

// Runners dstack knows (dstack-types AppCompose.runner; "bash" is legacy).
var knownRunners = []string{"docker-compose", "nerdctl-compose", "bash"}

// ComposeHash is the SHA-256 compose hash of an app-compose.json: the
// payload of dstack's "compose-hash" RTMR3 event.
type ComposeHash [sha256.Size]byte

func (h ComposeHash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText writes the hash as lowercase hex.
func (h ComposeHash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// ParseComposeHash parses 64 hex digits, in any case, with or without 0x.
func ParseComposeHash(s string) (ComposeHash, error) {
	var h ComposeHash
	err := measurement.ParseHex(h[:], s, "compose hash")
	return h, err
}

// ComposeHashOf returns the compose hash of an app-compose.json's bytes.
//
// dstack hashes the file as provisioned, byte for byte, with no
// normalization: dstack-util's measure_app_info computes
// sha256_file(app_compose_file()) and emits it as the "compose-hash" event
// (Dstack-TEE/dstack, dstack-util/src/system_setup.rs), and the VMM writes
// the compose_file string of the CreateVm request to that file unchanged
// (vmm/src/app.rs, prepare_work_dir). The SDKs' "deterministic JSON"
// (sdk/js/src/get-compose-hash.ts: keys sorted, compact) is a way to
// produce such a file reproducibly; it is the compose hash only when the
// file uploaded is exactly that serialization. So hash the bytes that were
// uploaded, never a re-serialization of them: the near-mpc fixture, indented
// the way Python's json.dumps(indent=4) writes it (as dstack's vmm-cli.py
// compose does), hashes to its logged compose hash only as is.
func ComposeHashOf(appCompose []byte) ComposeHash { return sha256.Sum256(appCompose) }

// MRConfigIDV1 returns the MRCONFIGID a dstack host sets for an app in the
// version-1 form: 0x01 || compose hash, zero padded to 48 bytes.
//
// dstack-util checks MRCONFIGID at boot (Dstack-TEE/dstack,
// dstack-util/src/system_setup/config_id_verifier.rs): all zeros means the
// host set none; the first byte is the form's version: 1 is the compose
// hash, 2 is keccak256 over compose hash, app-id, key provider kind and id,
// 3 hashes a JSON document the host shares. Only version 1 follows from the
// app-compose.json alone.
func (h ComposeHash) MRConfigIDV1() measurement.MRConfigID {
	var m measurement.MRConfigID
	m[0] = 0x01
	copy(m[1:], h[:])
	return m
}

// AppIDWithoutKMS is the app-id dstack extends for an app that does not use
// the KMS: the compose hash truncated to 20 bytes (dstack-util
// measure_app_info: `truncate(&compose_hash, 20)`). With the KMS the app-id
// is the app's registered id instead.
func (h ComposeHash) AppIDWithoutKMS() [20]byte {
	var id [20]byte
	copy(id[:], h[:20])
	return id
}

// AppCompose is what fleetbox reads of an app-compose.json.
type AppCompose struct {
	// Raw is the app-compose.json exactly as hashed.
	Raw []byte
	// Hash is ComposeHashOf(Raw).
	Hash ComposeHash
	// ManifestVersion is manifest_version as written (a number or a string).
	ManifestVersion string
	Name            string
	// Runner is "docker-compose", "nerdctl-compose" or (legacy) "bash".
	Runner string
	// HasDockerComposeFile is true when docker_compose_file is a string.
	HasDockerComposeFile bool
	// KMSEnabled and NoInstanceID are kms_enabled and no_instance_id
	// (absent: false): without the KMS the app-id is AppIDWithoutKMS, and
	// with no_instance_id the instance-id event has an empty payload.
	KMSEnabled   bool
	NoInstanceID bool
	// Notes are things the reader should know: an unknown runner, a compose
	// runner without a compose file, a file over GuestCopyLimit.
	Notes []string
}

// appComposeJSON is the part of dstack's AppCompose (dstack-types) fleetbox
// checks. dstack ignores members it does not know, so this does too; a member
// given twice is refused, as serde refuses a duplicate struct field.
type appComposeJSON struct {
	ManifestVersion   any     `json:"manifest_version"`
	Name              *string `json:"name"`
	Runner            *string `json:"runner"`
	DockerComposeFile *string `json:"docker_compose_file"`
	KMSEnabled        *bool   `json:"kms_enabled"`
	NoInstanceID      *bool   `json:"no_instance_id"`
}

// ErrTooLarge is wrapped when a document exceeds MaxDocumentSize.
var ErrTooLarge = errors.New("over the size limit")

// ParseAppCompose reads an app-compose.json. The hash covers b exactly; the
// parse checks that b is the JSON object dstack requires (manifest_version,
// name and runner present, with their types) so that a wrong file is
// reported rather than hashed.
func ParseAppCompose(b []byte) (*AppCompose, error) {
	if len(b) > MaxDocumentSize {
		return nil, fmt.Errorf("app-compose.json: %d bytes: %w of %d bytes", len(b), ErrTooLarge, MaxDocumentSize)
	}
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' {
		return nil, errors.New("app-compose.json: not a JSON object")
	}
	var j appComposeJSON
	if err := strictjson.UnmarshalKnown(b, &j); err != nil {
		return nil, fmt.Errorf("app-compose.json: %w", err)
	}
	a := &AppCompose{Raw: bytes.Clone(b), Hash: ComposeHashOf(b)}
	var missing []string
	switch v := j.ManifestVersion.(type) {
	case nil:
		missing = append(missing, "manifest_version")
	case float64:
		if v < 0 || v != float64(uint32(v)) {
			return nil, fmt.Errorf("app-compose.json: manifest_version %v is not a version number", v)
		}
		a.ManifestVersion = fmt.Sprint(uint32(v))
	case string:
		a.ManifestVersion = v
	default:
		return nil, fmt.Errorf("app-compose.json: manifest_version is a %T, want a number or a string", v)
	}
	if j.Name == nil {
		missing = append(missing, "name")
	} else {
		a.Name = *j.Name
	}
	if j.Runner == nil {
		missing = append(missing, "runner")
	} else {
		a.Runner = *j.Runner
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("app-compose.json: missing %v (dstack requires manifest_version, name and runner)", missing)
	}
	a.HasDockerComposeFile = j.DockerComposeFile != nil
	a.KMSEnabled = j.KMSEnabled != nil && *j.KMSEnabled
	a.NoInstanceID = j.NoInstanceID != nil && *j.NoInstanceID
	known := false
	for _, r := range knownRunners {
		known = known || a.Runner == r
	}
	switch {
	case !known:
		a.Notes = append(a.Notes, fmt.Sprintf("runner %q is not one dstack knows (%v)", a.Runner, knownRunners))
	case a.Runner != "bash" && !a.HasDockerComposeFile:
		a.Notes = append(a.Notes, fmt.Sprintf("runner %s but no docker_compose_file", a.Runner))
	}
	if len(b) > GuestCopyLimit {
		a.Notes = append(a.Notes, fmt.Sprintf("%d bytes: dstack refuses to boot an app-compose.json over %d bytes", len(b), GuestCopyLimit))
	}
	return a, nil
}

// ParseComposeDocument reads an app-compose.json, or a document that
// carries one as a string: a tcb_info.json (an object whose "app_compose"
// member is the app-compose.json's text, as dstack's guest agent reports
// it), or an object whose "tcb_info" member is such a document as a string
// (the guest agent's Info answer). The hash covers the carried string's
// UTF-8 bytes, which are the bytes dstack hashed.
func ParseComposeDocument(b []byte) (*AppCompose, error) {
	if len(b) > MaxDocumentSize {
		return nil, fmt.Errorf("%d bytes: %w of %d bytes", len(b), ErrTooLarge, MaxDocumentSize)
	}
	inner, err := carried(b, 0)
	if err != nil {
		return nil, err
	}
	if inner == nil {
		return ParseAppCompose(b)
	}
	a, err := ParseAppCompose(inner)
	if err != nil {
		return nil, fmt.Errorf("app_compose: %w", err)
	}
	return a, nil
}

// carried returns the app_compose a wrapper document carries, or nil when b
// is not such a wrapper.
func carried(b []byte, depth int) ([]byte, error) {
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' {
		return nil, nil
	}
	var w struct {
		AppCompose *string `json:"app_compose"`
		TcbInfo    any     `json:"tcb_info"`
		Runner     any     `json:"runner"`
	}
	if err := strictjson.UnmarshalKnown(b, &w); err != nil {
		return nil, fmt.Errorf("JSON object: %w", err)
	}
	switch {
	case w.Runner != nil:
		return nil, nil // an app-compose.json itself
	case w.AppCompose != nil:
		return []byte(*w.AppCompose), nil
	}
	if s, ok := w.TcbInfo.(string); ok && depth == 0 {
		inner, err := carried([]byte(s), depth+1)
		if err != nil {
			return nil, fmt.Errorf("tcb_info: %w", err)
		}
		if inner == nil {
			return nil, errors.New(`tcb_info carries no "app_compose"`)
		}
		return inner, nil
	}
	return nil, nil
}
