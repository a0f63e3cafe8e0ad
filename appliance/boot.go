package appliance

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/client"
	"github.com/fleetbox/fleetbox/measure"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/node"
)

// Defaults of the image (systemd/ and image/ use the same paths).
const (
	DefaultRunDir   = "/run/fleetbox"
	DefaultStateDir = "/var/lib/fleetbox"
	// NodeHomeDir is the node's home under the state directory.
	NodeHomeDir = "node"
	// CredStoreDir under the run directory holds the store key for
	// LoadCredential= (tmpfs, root only).
	CredStoreDir = "credstore"
	// StoreKeyCredential is the credential file the node units load.
	StoreKeyCredential = "store-key"
	// NodeUser owns the node's home; fleetbox-node.service runs as it.
	NodeUser = "fleetbox"
	// MapperName is the unlocked data volume (/dev/mapper/fleetbox-data).
	MapperName = "fleetbox-data"
)

// Config configures Boot. The zero value of each field means the image's
// real thing; tests replace them.
type Config struct {
	// Root prefixes the image paths that are read (fleetbox.conf,
	// /proc/cmdline, fw_cfg). Empty: "/".
	Root string
	// CredentialsDir holds the unit's imported credentials
	// ($CREDENTIALS_DIRECTORY); empty: none.
	CredentialsDir string
	// RunDir (tmpfs) gets the event log, the attestation file and the store
	// key credential. Empty: DefaultRunDir.
	RunDir string
	// StateDir is where the data volume is mounted. Empty: DefaultStateDir.
	StateDir string
	// Volume is the data volume. Nil: LUKSVolume on the configured device.
	Volume Volume
	// Quotes is the quote source. Nil: configfs-tsm when the machine has
	// TDX, else (dev profile only) mock quotes.
	Quotes attest.Source
	// AttestSource narrows the choice: "auto" or "" (TDX, else mock where
	// the profile allows it), "tdx" (TDX or stop), "mock" (mock, only
	// where the profile allows it; TDX is not tried).
	AttestSource string
	// Extender extends RTMR3. Nil: the kernel's RTMR3 file on TDX, none in
	// a mock boot.
	Extender Extender
	// HTTPClient talks to the KMS. Nil: a client with a 30 s timeout.
	HTTPClient *http.Client
	// KMSBackoff is the first retry delay (zero: 1 s, doubling to 30 s).
	KMSBackoff time.Duration
	// NodeUser owns the node's home. Empty: NodeUser; "-": no chown (tests).
	NodeUser string
	// Console gets the boot's human-readable lines (journal+console in the
	// image). Nil: discarded.
	Console io.Writer
	Logger  *slog.Logger
}

// Result is what a boot established.
type Result struct {
	Profile    string `json:"profile"`
	Source     string `json:"quoteSource"`
	InstanceID string `json:"instanceId"`
	FirstBoot  bool   `json:"firstBoot"`
	RTMR3      string `json:"rtmr3"`
	KMSAudit   uint64 `json:"kmsAuditSeq"`
	NodeHome   string `json:"nodeHome"`
	NodePeer   string `json:"nodePeer"`
}

// StopError is a boot that must not go on for a reason an operator must
// act on (a KMS refusal, a volume the key does not open, no TDX in prod).
// The node never starts after one.
type StopError struct{ Err error }

func (e *StopError) Error() string { return e.Err.Error() }
func (e *StopError) Unwrap() error { return e.Err }

func stop(format string, a ...any) error { return &StopError{fmt.Errorf(format, a...)} }

// booter carries one boot's state.
type booter struct {
	cfg Config
	out io.Writer
	log *slog.Logger
	// src is the quote source's kind; fwEvents the firmware's events a
	// mock boot replayed (nil otherwise).
	src      string
	fwEvents []eventlog.Event
}

func (b *booter) say(format string, a ...any) {
	fmt.Fprintf(b.out, "fleetbox: "+format+"\n", a...)
}

// Boot runs the appliance's boot sequence: settings from measured places
// (and operational ones from unmeasured places), the quote source, RTMR3,
// the KMS (checked first, then the key for this instance), the data volume
// (formatted only when blank), and the hand-over to the node (its home on
// the volume, its store key as a credential in tmpfs). It returns a
// *StopError for refusals the node must not start after.
func Boot(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.RunDir == "" {
		cfg.RunDir = DefaultRunDir
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.NodeUser == "" {
		cfg.NodeUser = NodeUser
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.KMSBackoff <= 0 {
		cfg.KMSBackoff = time.Second
	}
	b := &booter{cfg: cfg, out: cfg.Console, log: cfg.Logger}
	return b.boot(ctx)
}

func (b *booter) boot(ctx context.Context) (*Result, error) {
	start := time.Now()
	s, err := LoadSettings(b.cfg.Root, b.cfg.CredentialsDir)
	if err != nil {
		return nil, stop("settings: %w", err)
	}
	b.reportSettings(s)
	res := &Result{Profile: s.Profile.Value}
	if err := os.MkdirAll(b.cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", b.cfg.RunDir, err)
	}

	src, mock, err := b.quoteSource(ctx, s)
	if err != nil {
		return nil, err
	}
	res.Source = src.Kind()
	b.src = res.Source

	// RTMR3 before anything is asked of anyone: a quote taken from here on
	// shows the profile and configuration this boot runs with.
	x, err := b.extender(src, s)
	if err != nil {
		return nil, err
	}
	rtmr3, events, err := extendBootEvents(x, b.cfg.RunDir, s.Profile.Value, s.ConfigHash)
	if err != nil {
		return nil, fmt.Errorf("measuring the boot into RTMR3: %w", err)
	}
	res.RTMR3 = rtmr3.String()
	how := "extended"
	if x == nil {
		how = "replayed into the MOCK quote"
	}
	for _, e := range events {
		b.say("RTMR3 event %s (%d-byte payload) %s", e.Name, len(e.Payload), how)
	}
	b.say("RTMR3 %s…; event log %s", res.RTMR3[:16], filepath.Join(b.cfg.RunDir, RTMR3LogFile))
	if mock != nil {
		mock.RTMR[3] = rtmr3
		src = &attest.MockSource{Quote: *mock}
	}
	att, _ := json.MarshalIndent(attestationFor(src, mock), "", "  ")
	if err := writeFileAtomic(filepath.Join(b.cfg.RunDir, AttestationFile), append(att, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("writing the attestation file: %w", err)
	}

	vol := b.cfg.Volume
	if vol == nil {
		vol = &LUKSVolume{Device: s.Image.DataDevice, Mapper: MapperName}
	}
	if err := vol.Wait(ctx); err != nil {
		return nil, stop("data volume: %w", err)
	}
	state, instance, err := vol.Inspect(ctx)
	if err != nil {
		return nil, fmt.Errorf("data volume: %w", err)
	}
	switch state {
	case Foreign:
		return nil, stop("data volume %s holds data that is not a fleetbox volume (not blank, no fleetbox LUKS2 header); refusing to format or open it", s.Image.DataDevice)
	case Blank:
		if instance, err = newInstanceID(); err != nil {
			return nil, err
		}
		res.FirstBoot = true
		b.say("data volume %s is blank: first boot of a new instance %s", s.Image.DataDevice, instance)
	default:
		if err := instanceIDOK(instance); err != nil {
			return nil, stop("data volume %s: its LUKS2 UUID cannot name an instance: %w", s.Image.DataDevice, err)
		}
		b.say("data volume %s: instance %s (%s)", s.Image.DataDevice, instance, state)
	}
	res.InstanceID = instance

	key, seq, err := b.fetchKey(ctx, s, src, instance, b.fullEventLog(measure.RuntimeLogEvents(events)))
	if err != nil {
		return nil, err
	}
	res.KMSAudit = seq
	keys, err := deriveKeys(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	defer keys.wipe()

	switch state {
	case Blank:
		b.say("formatting the data volume (LUKS2, key from the KMS)")
		if err := vol.Format(ctx, keys.volume[:], instance); err != nil {
			return nil, err
		}
		fallthrough
	case Formatting:
		if err := vol.Open(ctx, keys.volume[:]); err != nil {
			return nil, b.openErr(err, s)
		}
		if err := vol.MakeFS(ctx); err != nil {
			return nil, err
		}
		b.say("data volume formatted and opened")
	case Sealed:
		if err := vol.Open(ctx, keys.volume[:]); err != nil {
			return nil, b.openErr(err, s)
		}
		b.say("data volume opened with the instance's key")
	}
	if err := vol.Mount(ctx, b.cfg.StateDir); err != nil {
		return nil, err
	}
	b.say("data volume mounted at %s", b.cfg.StateDir)

	home, peer, err := b.prepareNode(s)
	if err != nil {
		return nil, err
	}
	if res.Source == "tdx" && b.cfg.NodeUser != "-" {
		b.shareTSM()
	}
	res.NodeHome, res.NodePeer = home, peer
	if err := b.handStoreKey(keys.store[:]); err != nil {
		return nil, err
	}
	b.say("store key handed to the node as the credential %s (tmpfs, never on disk)", StoreKeyCredential)
	b.say("boot ready in %s: node %s may start (profile %s, quotes %s, instance %s)",
		time.Since(start).Round(time.Millisecond), peer, res.Profile, strings.ToUpper(res.Source), instance)
	return res, nil
}

func (b *booter) openErr(err error, s *Settings) error {
	if errors.Is(err, ErrWrongKey) {
		return stop("%w: the KMS released this instance's key, but it does not unlock %s; nothing was changed "+
			"(another instance's disk, or a KMS with another root secret or profile?)", err, s.Image.DataDevice)
	}
	return err
}

func (b *booter) reportSettings(s *Settings) {
	b.say("profile %s (%s)", s.Profile.Value, s.Profile.From)
	b.say("configuration sha256 %x (%s)", s.ConfigHash, fromImage)
	b.say("mock quotes %s (%s)", allowedOrRefused(s.AllowMock.Value), s.AllowMock.From)
	if s.KMSPolicy.Value != nil {
		b.say("KMS trust: its own quote must satisfy the KMS policy (%s)", s.KMSPolicy.From)
	}
	if s.KMSKey.Value != nil {
		b.say("KMS trust: signing key %s pinned (%s)", base64.StdEncoding.EncodeToString(s.KMSKey.Value), s.KMSKey.From)
	}
	b.say("KMS URL %s (%s)", s.KMSURL.Value, s.KMSURL.From)
	b.say("bootstrap peers %s (%s)", listOrNone(s.Bootstrap.Value), s.Bootstrap.From)
	b.say("fleet-join %s (%s)", listOrNone(s.FleetJoin.Value), s.FleetJoin.From)
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

// quoteSource picks configfs-tsm, or mock where the profile allows it.
func (b *booter) quoteSource(ctx context.Context, s *Settings) (attest.Source, *attest.MockQuote, error) {
	src := b.cfg.Quotes
	var detectErr, err error
	switch b.cfg.AttestSource {
	case "", "auto", "tdx":
		if src == nil {
			src, detectErr = detectTDX(ctx)
		}
		if b.cfg.AttestSource == "tdx" && (src == nil || src.Kind() == "mock") {
			if detectErr == nil {
				detectErr = errors.New("the quote source is a mock")
			}
			return nil, nil, stop("no TDX (%v), and --attest-source tdx asks for TDX", detectErr)
		}
	case "mock":
		src, detectErr = nil, errors.New("--attest-source mock")
	default:
		return nil, nil, fmt.Errorf("attest source %q: want auto, tdx or mock", b.cfg.AttestSource)
	}
	if src != nil && src.Kind() != "mock" {
		b.say("TDX: quotes from configfs-tsm (provider tdx_guest)")
		return src, nil, nil
	}
	if !s.AllowMock.Value || s.Profile.Value == ProfileProd {
		if detectErr == nil {
			detectErr = errors.New("the quote source is a mock")
		}
		return nil, nil, stop("no TDX (%v): the %s profile does not boot without TDX (mock quotes %s by %s)",
			detectErr, s.Profile.Value, allowedOrRefused(s.AllowMock.Value), s.AllowMock.From)
	}
	var q attest.MockQuote
	if s.Image.Mock.Replay {
		if err := b.replayMock(&q); err != nil {
			return nil, nil, stop("%w", err)
		}
	} else if q, err = s.Image.Mock.quote(); err != nil {
		return nil, nil, stop("mock: %w", err)
	}
	if detectErr != nil {
		b.say("MOCK TDX: no TDX quote provider (%v); this boot uses MOCK quotes, which only a policy with acceptMock admits", detectErr)
	} else {
		b.say("MOCK TDX: this boot uses MOCK quotes, which only a policy with acceptMock admits")
	}
	return &attest.MockSource{Quote: q}, &q, nil
}

// extender returns how RTMR3 is extended: the kernel's register file on
// TDX, nothing in a mock boot (the mock quote carries the replayed value).
func (b *booter) extender(src attest.Source, s *Settings) (Extender, error) {
	if b.cfg.Extender != nil {
		return b.cfg.Extender, nil
	}
	if src.Kind() == "mock" {
		return nil, nil
	}
	path := filepath.Join(b.cfg.Root, RTMR3Path)
	if _, err := os.Stat(path); err != nil {
		if s.Profile.Value == ProfileProd {
			return nil, stop("cannot extend RTMR3: %s is missing (a kernel before 6.16, or without the tdx-guest driver); "+
				"the prod profile does not boot unmeasured", path)
		}
		b.say("WARNING: cannot extend RTMR3 (%s is missing); quotes will not show this boot's events", path)
		return nil, nil
	}
	return SysfsExtender{Path: path}, nil
}

// fetchKey gets the instance's key from the KMS with a fresh boot identity,
// checking the KMS first (policy and/or pinned key).
func (b *booter) fetchKey(ctx context.Context, s *Settings, src attest.Source, instance string, eventLog []byte) ([]byte, uint64, error) {
	_, bootKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, 0, err
	}
	defer clear(bootKey)
	wait := time.Duration(s.Image.KMS.WaitSeconds) * time.Second
	if wait == 0 {
		wait = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	lg := slog.New(&consoleHandler{b: b})
	c, err := client.New(client.Config{
		URL: s.KMSURL.Value, Identity: bootKey, Source: src, Seal: true, InstanceID: instance, EventLog: eventLog,
		KMSPublicKey: s.KMSKey.Value, HTTPClient: b.cfg.HTTPClient,
		MaxAttempts: 1 << 30, InitialBackoff: b.cfg.KMSBackoff, MaxBackoff: 30 * time.Second,
		Logger: lg,
	})
	if err != nil {
		return nil, 0, stop("KMS client: %w", err)
	}
	trust := client.Trust{Policy: s.KMSPolicy.Value}
	if s.Image.KMS.PCCSURL != "" {
		trust.Verifier = attest.NewVerifier(attest.VerifierConfig{
			Collateral: attest.NewCollateralCache(attest.CollateralCacheConfig{
				Dir: filepath.Join(b.cfg.RunDir, "collateral"), URL: s.Image.KMS.PCCSURL, Logger: b.log}),
			Logger: b.log,
		})
	}
	b.say("asking the KMS at %s for instance %s's key (boot peer %s, sealed to a key the quote binds)", s.KMSURL.Value, instance, c.PeerID())
	key, _, err := c.Fetch(ctx, trust)
	if err != nil {
		var ae *client.APIError
		switch {
		case errors.As(err, &ae) && !ae.Temporary():
			return nil, 0, stop("the KMS refused the key: %s: %s", ae.Code, strings.Join(ae.Details, "; "))
		case errors.Is(err, client.ErrKMSNotTrusted):
			return nil, 0, stop("%w", err)
		case ctx.Err() != nil:
			return nil, 0, stop("no key from the KMS within %s: %w", wait, err)
		}
		return nil, 0, stop("%w", err)
	}
	defer key.Wipe()
	b.say("key released by the KMS (profile %s, audit record %d, HPKE-sealed)", key.Profile, key.AuditSeq)
	return key.Bytes(), key.AuditSeq, nil
}

// prepareNode makes the node's home on the volume on first boot, writes
// this boot's operational settings into its config, and gives it to the
// node's user.
func (b *booter) prepareNode(s *Settings) (home, peer string, err error) {
	home = filepath.Join(b.cfg.StateDir, NodeHomeDir)
	fc := node.DefaultFileConfig()
	if prev, err := node.LoadFileConfig(home); err == nil {
		fc = prev
	}
	fc.ListenAddrs = s.Image.Node.ListenAddrs
	fc.Bootstrap = s.Bootstrap.Value
	fc.FleetJoin = s.FleetJoin.Value
	fc.AdminAddr = node.DefaultAdminAddr
	fc.StoreKeyFile = ""
	init, err := node.Init(home, fc)
	if err != nil {
		return "", "", fmt.Errorf("node home: %w", err)
	}
	if err := node.SaveFileConfig(home, fc); err != nil {
		return "", "", fmt.Errorf("node home: %w", err)
	}
	if len(init.Created) > 0 {
		b.say("node home created at %s (identity, admin token, config on the encrypted volume)", home)
	}
	if b.cfg.NodeUser != "-" {
		if err := chownTree(home, b.cfg.NodeUser); err != nil {
			return "", "", fmt.Errorf("node home: %w", err)
		}
	}
	return home, init.PeerID, nil
}

// TSMReportDir is configfs-tsm's report directory, where a quote is asked
// for by making an entry (Documentation/ABI/testing/configfs-tsm-report).
const TSMReportDir = "/sys/kernel/config/tsm/report"

// shareTSM lets the node's group make report entries: the node takes a
// quote for each fleet announce, as user fleetbox. configfs keeps the
// owner and mode set on its directories.
func (b *booter) shareTSM() {
	path := filepath.Join(b.cfg.Root, TSMReportDir)
	g, err := user.LookupGroup(b.cfg.NodeUser)
	if err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err = os.Chown(path, 0, gid); err == nil {
			err = os.Chmod(path, 0o770)
		}
	}
	if err != nil {
		b.say("WARNING: the node cannot take quotes for fleet announces: giving %s to group %s: %v", path, b.cfg.NodeUser, err)
		return
	}
	b.say("configfs-tsm reports (%s) open to group %s for the node's announces", path, b.cfg.NodeUser)
}

// handStoreKey writes the store key where fleetbox-node.service and
// fleetbox-self-purge.service load it from (LoadCredential=): a root-only
// file on tmpfs. systemd copies it into each unit's private credentials
// directory; it never reaches a disk.
func (b *booter) handStoreKey(k []byte) error {
	dir := filepath.Join(b.cfg.RunDir, CredStoreDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, StoreKeyCredential), k, 0o400)
}

func chownTree(root, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("looking up user %s: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chmod(root, 0o700); err != nil {
		return err
	}
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// consoleHandler turns the KMS client's log records into console lines, so
// each retry while the boot waits for its KMS shows as one line.
type consoleHandler struct {
	b     *booter
	attrs []slog.Attr
}

func (h *consoleHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *consoleHandler) Handle(_ context.Context, r slog.Record) error {
	var sb strings.Builder
	sb.WriteString("KMS: ")
	sb.WriteString(r.Message)
	emit := func(a slog.Attr) bool {
		fmt.Fprintf(&sb, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		emit(a)
	}
	r.Attrs(emit)
	h.b.say("%s", sb.String())
	return nil
}

func (h *consoleHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &consoleHandler{b: h.b, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *consoleHandler) WithGroup(string) slog.Handler { return h }

func allowedOrRefused(ok bool) string {
	if ok {
		return "allowed"
	}
	return "refused"
}
