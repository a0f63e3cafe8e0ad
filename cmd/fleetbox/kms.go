package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/kms/audit"
	"github.com/fleetbox/fleetbox/kms/client"
	"github.com/fleetbox/fleetbox/measure"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

const kmsUsage = `usage:
  fleetbox kms serve --listen ADDR --policy FILE --state DIR [--root-secret file|dstack] [--profile NAME]
                     [--collateral FILE | --collateral-cache DIR [--pccs-url URL]] [--attest-source auto|tdx|dstack|mock] [--dstack-socket PATH]
                     [--expected-events measurements.json [--expected-profile NAME]] [--audit-witness FILE]
  fleetbox kms get-key --url URL --identity FILE [--seal] [--instance ID] [--attest-source auto|tdx|dstack|mock [--dstack-socket PATH] [--mock-mrtd HEX] [--mock-rtmrN HEX]] [--out FILE] [--receipt FILE]
  fleetbox kms audit verify (--url URL [--pubkey BASE64] | --state DIR) [--receipt FILE]... [--head FILE]...
  fleetbox kms load --url URL [--clients N] [--duration D] [--seal] [--mock-mrtd HEX] [--mock-rtmrN HEX]`

func runKMS(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		return usageErr(e, "kms: want serve, get-key or audit\n\n%s", kmsUsage)
	}
	switch args[0] {
	case "serve":
		return kmsServe(ctx, e, args[1:])
	case "get-key":
		return kmsGetKey(ctx, e, args[1:])
	case "load":
		return kmsLoad(ctx, e, args[1:])
	case "audit":
		if len(args) < 2 || args[1] != "verify" {
			return usageErr(e, "kms audit: want verify\n\n%s", kmsUsage)
		}
		return kmsAuditVerify(ctx, e, args[2:])
	case "-h", "--help", "help":
		fmt.Fprintln(e.stderr, kmsUsage)
		return exitOK
	}
	return usageErr(e, "kms: unknown command %q\n\n%s", args[0], kmsUsage)
}

func kmsServe(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("kms serve", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	listen := fs.String("listen", "127.0.0.1:8443", "listen `address` (host:port)")
	policyPath := fs.String("policy", "", "TeeAdmissionPolicy JSON `file` (required; reloaded on SIGHUP)")
	state := fs.String("state", "", "state `dir`: audit log, KMS signing key, file root secret (required)")
	rootSecret := fs.String("root-secret", "file", "root secret `provider`: file (STATE/root.secret) or dstack (the guest agent's key API)")
	dstackPath := fs.String("dstack-key-path", kms.DefaultDstackKeyPath, "key `path` asked of the dstack agent")
	profile := fs.String("profile", kms.DefaultProfile, "image profile `name` keys are derived for")
	var af attestFlags
	af.register(fs, srcAuto, srcAuto, srcTDX, srcDstack, srcMock)
	noRevocation := fs.Bool("no-revocation", false, "skip the PCK and root CRL checks")
	ttl := fs.Duration("challenge-ttl", kms.DefaultChallengeTTL, "challenge lifetime")
	maxPending := fs.Int("max-challenges", kms.DefaultMaxPendingChallenges, "cap on pending challenges")
	addrRate := fs.Float64("address-rate", 0, "POST requests per second per source address (IPv6: per /64); 0: 20, negative: no limit")
	addrBurst := fs.Int("address-burst", 0, "burst of --address-rate; 0: twice the rate")
	pendingPerAddr := fs.Int("pending-per-address", 0, "pending challenges per source address; 0: --max-challenges/20, negative: no cap")
	peerRate := fs.Float64("peer-rate", 0, "/get-key requests per second per verified peer ID; 0: 1, negative: no limit")
	witness := fs.String("audit-witness", "", "keep the newest signed audit head in this `file` on another volume; refuse to start when the log ends below it")
	addrFile := fs.String("addr-file", "", "write the bound address to this `file` once listening (for scripts with --listen :0)")
	expected := fs.String("expected-events", "", "measurements.json of the admitted image: a refusal of a quote sent with its event log names the events that differ")
	expectedProfile := fs.String("expected-profile", "", "the image `profile` in --expected-events (needed when it has several)")
	var cf collateralFlags
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 0 {
		return usageErr(e, "kms serve: unexpected arguments %q", fs.Args())
	}
	if *policyPath == "" || *state == "" {
		return usageErr(e, "kms serve: --policy and --state are required")
	}
	pol, err := attest.LoadPolicyFile(*policyPath)
	if err != nil {
		return usageErr(e, "kms serve: refusing to start: %v", err)
	}
	coll, err := cf.source(e)
	if err != nil {
		return usageErr(e, "kms serve: %v", err)
	}
	if coll == nil {
		e.logger.Warn("no collateral configured: real quotes verify as TCB Unverified, which policies refuse; pass --collateral-cache DIR --pccs-url URL")
	}
	if err := os.MkdirAll(*state, 0o700); err != nil {
		return runtimeErr(e, "kms serve: creating state dir: %v", err)
	}

	if err := af.check(); err != nil {
		return usageErr(e, "kms serve: %v", err)
	}
	var secret *kms.RootSecret
	switch *rootSecret {
	case "file":
		secret, err = kms.LoadFileRootSecret(filepath.Join(*state, kms.RootSecretFile))
	case "dstack":
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		secret, err = kms.DstackRootSecret(actx, af.agent(), *dstackPath)
		cancel()
	default:
		return usageErr(e, "kms serve: --root-secret %q: want file or dstack", *rootSecret)
	}
	if err != nil {
		return runtimeErr(e, "kms serve: refusing to start: %v", err)
	}

	src, err := af.source(e.logger)
	if err != nil {
		return runtimeErr(e, "kms serve: %v", err)
	}

	var expectedEvents []eventlog.Event
	if *expected != "" {
		if expectedEvents, err = loadExpectedEvents(*expected, *expectedProfile); err != nil {
			return usageErr(e, "kms serve: --expected-events: %v", err)
		}
	}
	srv, err := kms.NewServer(kms.Config{
		ExpectedEvents:       expectedEvents,
		StateDir:             *state,
		RootSecret:           secret,
		Verifier:             attest.NewVerifier(attest.VerifierConfig{Collateral: kms.CollateralSource(coll), SkipRevocation: *noRevocation, Logger: e.logger}),
		Policy:               pol,
		PolicyFile:           *policyPath,
		Profile:              *profile,
		Source:               src,
		ChallengeTTL:         *ttl,
		MaxPendingChallenges: *maxPending,
		AuditWitness:         *witness,
		Limits: kms.Limits{
			AddressRate: *addrRate, AddressBurst: *addrBurst, PendingPerAddress: *pendingPerAddr, PeerRate: *peerRate,
		},
		Logger: e.logger,
	})
	if err != nil {
		return runtimeErr(e, "kms serve: %v", err)
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return runtimeErr(e, "kms serve: %v", err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				// ReloadPolicy logs a failure and keeps the old policy.
				srv.ReloadPolicy()
			}
		}
	}()
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
			ln.Close()
			return runtimeErr(e, "kms serve: writing --addr-file: %v", err)
		}
	}
	e.logger.Info("kms starting", "addr", ln.Addr().String(), "profile", *profile, "rootSecret", *rootSecret,
		"publicKey", base64.StdEncoding.EncodeToString(srv.PublicKey()))
	if err := srv.Run(ctx, ln); err != nil {
		return runtimeErr(e, "kms serve: %v", err)
	}
	return exitOK
}

// loadExpectedEvents reads one profile's predicted events from
// measurements.json.
func loadExpectedEvents(path, profile string) ([]eventlog.Event, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := measure.ParseMeasurements(b)
	if err != nil {
		return nil, err
	}
	if profile == "" {
		names := m.ProfileNames()
		if len(names) != 1 {
			return nil, fmt.Errorf("%s has profiles %v: name one with --expected-profile", path, names)
		}
		profile = names[0]
	}
	p := m.Profiles[profile]
	if p == nil {
		return nil, fmt.Errorf("%s has no profile %q", path, profile)
	}
	if len(p.Events) == 0 {
		return nil, fmt.Errorf("%s records no events for profile %q", path, profile)
	}
	l, err := eventlog.ParseJSON(p.Events)
	if err != nil {
		return nil, fmt.Errorf("%s: events of %s: %w", path, profile, err)
	}
	return l.Events, nil
}

func kmsGetKey(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("kms get-key", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	url := fs.String("url", "", "KMS base `url` (required)")
	identity := fs.String("identity", "", "node identity `file` (Ed25519, PEM PKCS#8; created if missing)")
	seal := fs.Bool("seal", false, "ask for the key HPKE-sealed to an ephemeral X25519 key the quote binds")
	instance := fs.String("instance", "", "ask for the key of this instance `id` (a lowercase UUID) rather than of the identity's peer")
	var af attestFlags
	af.register(fs, srcAuto, srcAuto, srcTDX, srcDstack, srcMock)
	out := fs.String("out", "", "write the raw 32-byte key to this `file` (mode 0600) instead of hex on stdout")
	receipt := fs.String("receipt", "", "write the answer's signed receipt (no key) to this `file`, for kms audit verify --receipt")
	kmsPolicy := fs.String("kms-policy", "", "check the KMS's own quote (/attest) against this policy `file` first")
	attempts := fs.Int("attempts", 5, "tries on 5xx and network errors")
	var cf collateralFlags
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *url == "" || *identity == "" || fs.NArg() != 0 {
		return usageErr(e, "kms get-key: --url and --identity are required")
	}
	sk, created, err := client.LoadIdentity(*identity, true)
	if err != nil {
		return usageErr(e, "kms get-key: %v", err)
	}
	if err := af.check(); err != nil {
		return usageErr(e, "kms get-key: %v", err)
	}
	src, err := af.source(e.logger)
	if err != nil {
		return runtimeErr(e, "kms get-key: %v (use --attest-source mock on a machine without TDX)", err)
	}
	c, err := client.New(client.Config{URL: *url, Identity: sk, Source: src, Seal: *seal, InstanceID: *instance, MaxAttempts: *attempts, Logger: e.logger})
	if err != nil {
		return usageErr(e, "kms get-key: %v", err)
	}
	if created {
		fmt.Fprintf(e.stderr, "fleetbox: created identity %s (peer %s)\n", *identity, c.PeerID())
	}
	if *kmsPolicy != "" {
		pol, err := attest.LoadPolicyFile(*kmsPolicy)
		if err != nil {
			return usageErr(e, "kms get-key: %v", err)
		}
		coll, err := cf.source(e)
		if err != nil {
			return usageErr(e, "kms get-key: %v", err)
		}
		id, err := c.CheckKMS(ctx, attest.NewVerifier(attest.VerifierConfig{Collateral: coll, Logger: e.logger}), pol)
		if err != nil {
			fmt.Fprintf(e.stderr, "fleetbox: kms get-key: %v\n", err)
			return kmsExit(err)
		}
		fmt.Fprintf(e.stderr, "fleetbox: KMS checked: key %s, tcb %s, mock %v\n", base64.StdEncoding.EncodeToString(id.PublicKey), id.Verdict.TcbStatus, id.Verdict.Mock)
	}
	key, err := c.GetKey(ctx)
	if err != nil {
		fmt.Fprintf(e.stderr, "fleetbox: kms get-key: %v\n", err)
		return kmsExit(err)
	}
	defer key.Wipe()
	fmt.Fprintf(e.stderr, "fleetbox: key released for peer %s, profile %s, audit record %d, sealed %v\n", c.PeerID(), key.Profile, key.AuditSeq, key.Sealed)
	if *receipt != "" {
		rb, _ := json.MarshalIndent(key.Receipt, "", "  ")
		if err := os.WriteFile(*receipt, append(rb, '\n'), 0o600); err != nil {
			return runtimeErr(e, "kms get-key: writing --receipt: %v", err)
		}
	}
	b := key.Bytes()
	defer clear(b)
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err == nil {
			_, err = f.Write(b)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return runtimeErr(e, "kms get-key: writing --out: %v", err)
		}
		return exitOK
	}
	fmt.Fprintf(e.stdout, "%x\n", b)
	return exitOK
}

type auditSummary struct {
	OK        bool      `json:"ok"`
	Records   uint64    `json:"records"`
	Granted   int       `json:"granted"`
	Denied    int       `json:"denied"`
	HeadHash  string    `json:"headHash,omitempty"`
	HeadTime  time.Time `json:"headTime,omitzero"`
	PublicKey string    `json:"publicKey,omitempty"`
	Pinned    bool      `json:"publicKeyPinned"`
	Error     string    `json:"error,omitempty"`
}

func kmsAuditVerify(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("kms audit verify", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	url := fs.String("url", "", "KMS base `url`")
	state := fs.String("state", "", "KMS state `dir` (the KMS must be stopped: the database is locked while it runs)")
	pubText := fs.String("pubkey", "", "pin the KMS audit key (`base64`, from /attest or the serve log); default: the key in the state, or the one the URL serves")
	var receipts, heads listFlag
	fs.Var(&receipts, "receipt", "a /get-key receipt `file` (kms get-key --receipt); the log must still hold its grant (repeatable)")
	fs.Var(&heads, "head", "a signed head `file` (an audit witness, or the head of a saved GET /audit); the log must still hold it (repeatable)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if (*url == "") == (*state == "") || fs.NArg() != 0 {
		return usageErr(e, "kms audit verify: want exactly one of --url or --state")
	}
	var pub ed25519.PublicKey
	if *pubText != "" {
		b, err := base64.StdEncoding.DecodeString(*pubText)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return usageErr(e, "kms audit verify: --pubkey is not a base64 Ed25519 public key")
		}
		pub = b
	}
	var fetch func(after uint64) (*audit.Page, error)
	switch {
	case *state != "":
		if pub == nil {
			sk, err := kms.LoadSigningKey(filepath.Join(*state, kms.SigningKeyFile))
			if err != nil {
				return usageErr(e, "kms audit verify: %v", err)
			}
			pub = sk.Public().(ed25519.PublicKey)
		}
		path := filepath.Join(*state, kms.StateDBFile)
		if _, err := os.Stat(path); err != nil {
			return usageErr(e, "kms audit verify: %v", err)
		}
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
		if err != nil {
			return runtimeErr(e, "kms audit verify: opening %s (is the KMS still running?): %v", path, err)
		}
		defer db.Close()
		fetch = func(after uint64) (*audit.Page, error) { return audit.ReadPage(db, after, audit.MaxPage) }
	default:
		c, err := client.New(client.Config{URL: *url, Identity: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)),
			HTTPClient: &http.Client{Timeout: 30 * time.Second}, Logger: e.logger})
		if err != nil {
			return usageErr(e, "kms audit verify: %v", err)
		}
		fetch = func(after uint64) (*audit.Page, error) { return c.AuditPage(ctx, after) }
	}
	if (len(receipts) > 0 || len(heads) > 0) && pub == nil {
		return usageErr(e, "kms audit verify: --receipt and --head need the KMS key: pass --pubkey")
	}
	v := &audit.ChainVerifier{}
	for _, f := range receipts {
		b, err := os.ReadFile(f)
		if err != nil {
			return usageErr(e, "kms audit verify: %v", err)
		}
		r, err := api.ParseReceipt(b, pub)
		if err != nil {
			return usageErr(e, "kms audit verify: %s: %v", f, err)
		}
		v.Expect(r.AuditSeq, "receipt "+f, func(_ audit.Hash, rec audit.Record) error {
			if rec.Decision != audit.Granted || rec.PeerID != r.PeerID || rec.InstanceID != r.InstanceID || rec.Profile != r.Profile {
				return fmt.Errorf("record %d is %s for peer %q instance %q, the receipt says granted to %q instance %q", r.AuditSeq, rec.Decision, rec.PeerID, rec.InstanceID, r.PeerID, r.InstanceID)
			}
			return nil
		})
	}
	for _, f := range heads {
		h, err := audit.ReadWitness(f, pub)
		if err != nil {
			return usageErr(e, "kms audit verify: %s: %v", f, err)
		}
		v.ExpectHead(h, "head "+f)
	}
	head, err := v.VerifyPages(fetch, pub)
	sum := auditSummary{OK: err == nil, Records: v.Seq(), Granted: v.Granted, Denied: v.Denied, Pinned: pub != nil}
	if err != nil {
		sum.Error = err.Error()
		// A broken or rolled-back chain is a "no"; a log that cannot be
		// read (a KMS that does not answer, a corrupt file) a runtime failure.
		code := exitNo
		if !errors.Is(err, audit.ErrChain) && !errors.Is(err, audit.ErrHead) && !errors.Is(err, audit.ErrRollback) {
			code = exitRuntime
		}
		return printJSON(e, sum, code)
	}
	sum.HeadHash, sum.HeadTime = head.Hash.String(), head.Time
	if pub != nil {
		sum.PublicKey = base64.StdEncoding.EncodeToString(pub)
	}
	if !sum.Pinned {
		fmt.Fprintln(e.stderr, "fleetbox: the head was checked with the key the KMS served; pass --pubkey to pin it")
	}
	return printJSON(e, sum, exitOK)
}

// mockFlags describe the mock quote of --attest-source mock and kms load.
type mockFlags struct {
	mrtd string
	rtmr [4]string
}

func (m *mockFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.mrtd, "mock-mrtd", "", "MRTD `hex` of the mock quote (default: MockMeasurement(\"mrtd\"))")
	for i := range m.rtmr {
		fs.StringVar(&m.rtmr[i], fmt.Sprintf("mock-rtmr%d", i), "", fmt.Sprintf("RTMR%d `hex` of the mock quote (default: MockMeasurement(\"rtmr%d\"))", i, i))
	}
}

func (m *mockFlags) source() (*attest.MockSource, error) {
	mq := attest.MockQuote{MRTD: attest.MockMeasurement("mrtd")}
	var err error
	if m.mrtd != "" {
		if mq.MRTD, err = attest.ParseMRTD(m.mrtd); err != nil {
			return nil, fmt.Errorf("--mock-mrtd: %w", err)
		}
	}
	for i, s := range m.rtmr {
		mq.RTMR[i] = attest.MockMeasurement(fmt.Sprintf("rtmr%d", i))
		if s != "" {
			if mq.RTMR[i], err = attest.ParseRTMR(s); err != nil {
				return nil, fmt.Errorf("--mock-rtmr%d: %w", i, err)
			}
		}
	}
	return &attest.MockSource{Quote: mq}, nil
}

type loadResult struct {
	QuoteSource       string  `json:"quoteSource"`
	Clients           int     `json:"clients"`
	Releases          int     `json:"releases"`
	Errors            int     `json:"errors"`
	FirstError        string  `json:"firstError,omitempty"`
	Seconds           float64 `json:"seconds"`
	ReleasesPerSecond float64 `json:"releasesPerSecond"`
	P50Ms             float64 `json:"p50Ms"`
	P99Ms             float64 `json:"p99Ms"`
}

// kmsLoad drives full challenge + get-key rounds against a running KMS with
// mock quotes (the KMS policy must accept mock) and reports releases/s and
// latency. Mock quotes skip the quote's ECDSA verification: the figure with
// real-format quotes comes from BenchmarkKMSRelease.
func kmsLoad(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("kms load", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	url := fs.String("url", "", "KMS base `url` (required)")
	clients := fs.Int("clients", 8, "concurrent clients, each with its own identity")
	duration := fs.Duration("duration", 10*time.Second, "how long to run")
	seal := fs.Bool("seal", false, "ask for sealed keys")
	var mf mockFlags
	mf.register(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *url == "" || *clients < 1 || *duration <= 0 || fs.NArg() != 0 {
		return usageErr(e, "kms load: --url is required; --clients and --duration must be positive")
	}
	src, err := mf.source()
	if err != nil {
		return usageErr(e, "kms load: %v", err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * *clients, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	fmt.Fprintln(e.stderr, "fleetbox: kms load uses MOCK quotes: the KMS skips quote signature checks for them, so this measures the service around verification")
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		nErr     int
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range *clients {
		_, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return runtimeErr(e, "kms load: %v", err)
		}
		c, err := client.New(client.Config{URL: *url, Identity: sk, Source: src, Seal: *seal, HTTPClient: hc, MaxAttempts: 1})
		if err != nil {
			return usageErr(e, "kms load: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				k, err := c.GetKey(ctx)
				d := time.Since(t0)
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				if err != nil {
					nErr++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					k.Wipe()
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	res := loadResult{QuoteSource: "mock", Clients: *clients, Releases: len(lat), Errors: nErr, Seconds: elapsed.Seconds()}
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if len(lat) > 0 {
		res.ReleasesPerSecond = float64(len(lat)) / elapsed.Seconds()
		res.P50Ms = float64(lat[len(lat)/2].Microseconds()) / 1000
		res.P99Ms = float64(lat[len(lat)*99/100].Microseconds()) / 1000
	}
	code := exitOK
	if nErr > 0 {
		code = exitNo
	}
	return printJSON(e, res, code)
}
