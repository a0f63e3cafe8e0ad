package appliance

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/measure"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/node"
)

// The dev mock registers of these tests (any distinct values do).
var (
	testMRTD  = attest.MockMeasurement("appliance test mrtd")
	testRTMR0 = attest.MockMeasurement("appliance test rtmr0")
	testRTMR1 = attest.MockMeasurement("appliance test rtmr1")
	testRTMR2 = attest.MockMeasurement("appliance test rtmr2")
	kmsMock   = attest.MockQuote{MRTD: attest.MockMeasurement("test kms mrtd")}
)

func hexOf(b [48]byte) string { return attest.MRTD(b).String() }

// kmsPolicyJSON pins the test KMS's mock quote.
func kmsPolicyJSON() string {
	r := hexOf(kmsMock.RTMR[0])
	return `{"allowedMrtd":["` + hexOf(kmsMock.MRTD) + `"],"allowedRtmr0":["` + r + `"],"allowedRtmr1":["` + r +
		`"],"allowedRtmr2":["` + r + `"],"allowedRtmr3":["` + r + `"],"acceptMock":true}`
}

func devConfig(kmsURL string) string {
	return `{
  "profile": "dev",
  "allowMock": true,
  "mock": {"mrtd": "` + hexOf(testMRTD) + `", "rtmr0": "` + hexOf(testRTMR0) + `", "rtmr1": "` + hexOf(testRTMR1) + `", "rtmr2": "` + hexOf(testRTMR2) + `"},
  "kms": {"url": "` + kmsURL + `", "policy": ` + kmsPolicyJSON() + `},
  "dataDevice": "/dev/vdb",
  "node": {"listenAddrs": ["/ip4/127.0.0.1/tcp/0"]}
}`
}

// imagePolicy admits exactly the dev boot of config conf.
func imagePolicy(conf []byte, rtmr2 attest.RTMR) *attest.Policy {
	ev, _ := measure.BootEvents("dev", measure.ConfigHash(conf))
	return &attest.Policy{
		AllowedMrtd: []string{hexOf(testMRTD)}, AllowedRtmr0: []string{hexOf(testRTMR0)},
		AllowedRtmr1: []string{hexOf(testRTMR1)}, AllowedRtmr2: []string{rtmr2.String()},
		AllowedRtmr3: []string{measure.ReplayRTMR3(ev).String()}, AcceptMock: true,
	}
}

// testKMS is a real KMS on loopback with a mock /attest quote.
type testKMS struct {
	srv     *kms.Server
	url     string
	polFile string
	stop    func()
}

func startKMS(t *testing.T, pol *attest.Policy) *testKMS {
	t.Helper()
	state := t.TempDir()
	secret, err := kms.LoadFileRootSecret(filepath.Join(state, kms.RootSecretFile))
	if err != nil {
		t.Fatal(err)
	}
	k := &testKMS{polFile: filepath.Join(t.TempDir(), "policy.json")}
	b, _ := pol.Marshal()
	os.WriteFile(k.polFile, b, 0o600)
	k.srv, err = kms.NewServer(kms.Config{StateDir: state, RootSecret: secret, Policy: pol, PolicyFile: k.polFile,
		Verifier: attest.NewVerifier(attest.VerifierConfig{}), Source: &attest.MockSource{Quote: kmsMock}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.srv.Run(ctx, ln); close(done) }()
	k.url = "http://" + ln.Addr().String()
	k.stop = func() { cancel(); <-done; k.srv.Close() }
	t.Cleanup(k.stop)
	return k
}

func (k *testKMS) setPolicy(t *testing.T, pol *attest.Policy) {
	b, _ := pol.Marshal()
	os.WriteFile(k.polFile, b, 0o600)
	if err := k.srv.ReloadPolicy(); err != nil {
		t.Fatal(err)
	}
}

// fakeVolume is an in-memory data volume that records what was done to it.
type fakeVolume struct {
	mu      sync.Mutex
	state   VolumeState
	uuid    string
	key     []byte
	opened  bool
	ops     []string
	missing bool
}

func (f *fakeVolume) Wait(context.Context) error {
	if f.missing {
		return errors.New("data device /dev/vdb did not appear")
	}
	return nil
}
func (f *fakeVolume) Inspect(context.Context) (VolumeState, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "inspect")
	return f.state, f.uuid, nil
}
func (f *fakeVolume) Format(_ context.Context, key []byte, uuid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "format")
	f.state, f.uuid, f.key = Formatting, uuid, bytes.Clone(key)
	return nil
}
func (f *fakeVolume) Open(_ context.Context, key []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "open")
	if !bytes.Equal(key, f.key) {
		return ErrWrongKey
	}
	f.opened = true
	return nil
}
func (f *fakeVolume) MakeFS(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "mkfs")
	f.state = Sealed
	return nil
}
func (f *fakeVolume) Mount(_ context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "mount")
	return os.MkdirAll(target, 0o755)
}

// rig is a boot environment in temporary directories.
type rig struct {
	t       *testing.T
	root    string
	run     string
	state   string
	creds   string
	vol     *fakeVolume
	console bytes.Buffer
	conf    []byte
	source  string // Config.AttestSource
}

func newRig(t *testing.T, conf string) *rig {
	r := &rig{t: t, root: t.TempDir(), run: t.TempDir(), state: t.TempDir(), vol: &fakeVolume{state: Blank}, conf: []byte(conf)}
	r.write(ImageConfigPath, conf)
	r.write(CmdlinePath, "console=ttyS0 quiet\n")
	return r
}

func (r *rig) write(path, data string) {
	p := filepath.Join(r.root, path)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) boot() (*Result, error) {
	r.console.Reset()
	return Boot(context.Background(), Config{
		Root: r.root, RunDir: r.run, StateDir: r.state, CredentialsDir: r.creds, Volume: r.vol,
		Quotes: &attest.MockSource{}, NodeUser: "-", Console: &r.console, KMSBackoff: 10 * time.Millisecond,
		HTTPClient: &http.Client{Timeout: 5 * time.Second}, AttestSource: r.source,
	})
}

// --attest-source narrows the boot's choice: tdx stops where there is no
// TDX even in dev; mock boots with MOCK quotes where the profile allows it.
func TestBootAttestSource(t *testing.T) {
	k := startKMS(t, &attest.Policy{AllowedMrtd: []string{"*"}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true})
	r := newRig(t, devConfig(k.url))
	r.source = "tdx"
	_, err := r.boot()
	var se *StopError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "--attest-source tdx asks for TDX") {
		t.Fatalf("tdx without TDX: %v", err)
	}
	r.source = "mock"
	res, err := r.boot()
	if err != nil || res.Source != "mock" {
		t.Fatalf("mock in dev: %+v %v", res, err)
	}
	r.source = "dstack"
	if _, err := r.boot(); err == nil || !strings.Contains(err.Error(), `attest source "dstack"`) {
		t.Fatalf("dstack: %v", err)
	}
}

func TestBootFirstThenSameInstance(t *testing.T) {
	k := startKMS(t, &attest.Policy{AllowedMrtd: []string{"*"}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true})
	r := newRig(t, devConfig(k.url))
	k.setPolicy(t, imagePolicy(r.conf, testRTMR2))

	res, err := r.boot()
	if err != nil {
		t.Fatalf("first boot: %v\n%s", err, r.console.String())
	}
	if !res.FirstBoot || res.Source != "mock" || strings.Join(r.vol.ops, ",") != "inspect,format,open,mkfs,mount" {
		t.Fatalf("first boot: %+v ops %v", res, r.vol.ops)
	}
	if err := instanceIDOK(res.InstanceID); err != nil || r.vol.uuid != res.InstanceID {
		t.Fatalf("instance %q, volume uuid %q: %v", res.InstanceID, r.vol.uuid, err)
	}
	for _, want := range []string{
		"profile dev (image /etc/fleetbox/fleetbox.conf, measured)",
		"MOCK TDX", "RTMR3 event fleetbox.config-sha256",
		"KMS URL " + k.url + " (image /etc/fleetbox/fleetbox.conf, measured)",
		"KMS checked", "key released by the KMS", "first boot of a new instance " + res.InstanceID,
	} {
		if !strings.Contains(r.console.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, r.console.String())
		}
	}
	// The store key: a 0400 file in the run dir, the derivation of the
	// released key, never the volume key.
	credPath := filepath.Join(r.run, CredStoreDir, StoreKeyCredential)
	st, err := os.Stat(credPath)
	if err != nil || st.Mode().Perm() != 0o400 {
		t.Fatalf("store key credential: %v %v", st, err)
	}
	storeKey, _ := os.ReadFile(credPath)
	if len(storeKey) != 32 || bytes.Equal(storeKey, r.vol.key) {
		t.Fatal("the store key is missing or equals the volume key")
	}
	// The node's home: config with the listen address, and the attestation
	// file the node reads.
	home := filepath.Join(r.state, NodeHomeDir)
	fc, err := node.LoadFileConfig(home)
	if err != nil || fc.ListenAddrs[0] != "/ip4/127.0.0.1/tcp/0" || fc.StoreKeyFile != "" {
		t.Fatalf("node config: %+v %v", fc, err)
	}
	src, err := LoadAttestation(filepath.Join(r.run, AttestationFile))
	if err != nil {
		t.Fatal(err)
	}
	q, _ := src.GetQuote(context.Background(), attest.ReportData{})
	pq, err := attest.ParseQuote(q)
	if err != nil || pq.RTMR[3].String() != res.RTMR3 || pq.MRTD != testMRTD {
		t.Fatalf("the node's mock quote does not carry the boot's registers: %v", err)
	}
	// The RTMR3 log replays to the value the quote carries.
	logb, _ := os.ReadFile(filepath.Join(r.run, RTMR3LogFile))
	if !bytes.Contains(logb, []byte(measure.EventConfig)) {
		t.Fatalf("event log: %s", logb)
	}

	// Second boot: same instance, same key, the volume opens; nothing is
	// formatted.
	r.vol.ops = nil
	res2, err := r.boot()
	if err != nil {
		t.Fatalf("second boot: %v\n%s", err, r.console.String())
	}
	if res2.FirstBoot || res2.InstanceID != res.InstanceID || strings.Join(r.vol.ops, ",") != "inspect,open,mount" {
		t.Fatalf("second boot: %+v ops %v", res2, r.vol.ops)
	}
	storeKey2, _ := os.ReadFile(credPath)
	if !bytes.Equal(storeKey, storeKey2) {
		t.Fatal("the store key differs between two boots of one instance")
	}
	if res2.NodePeer != res.NodePeer {
		t.Fatal("the node identity changed between boots")
	}
}

// Every stop leaves the volume as it was: a KMS refusal, an untrusted KMS,
// a key that does not open the volume, a foreign disk, prod without TDX.
func TestBootStops(t *testing.T) {
	k := startKMS(t, &attest.Policy{AllowedMrtd: []string{"*"}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true})
	base := devConfig(k.url)
	cases := map[string]struct {
		conf    string
		setup   func(r *rig)
		want    string
		vol     VolumeState
		wantOps string
	}{
		"kms refuses another rtmr2": {
			setup: func(r *rig) { k.setPolicy(t, imagePolicy(r.conf, attest.RTMR(attest.MockMeasurement("other")))) },
			want:  "the KMS refused the key: measurement_policy_rejected: rtmr2 ", vol: Blank, wantOps: "inspect",
		},
		"kms not the pinned one": {
			conf: strings.Replace(base, `"policy": `+kmsPolicyJSON(), `"policy": `+strings.Replace(kmsPolicyJSON(), hexOf(kmsMock.MRTD), strings.Repeat("ab", 48), 1), 1),
			want: "kms is not trusted", vol: Blank, wantOps: "inspect",
		},
		"pinned kms key differs": {
			setup: func(r *rig) {
				r.write(CmdlinePath, "console=ttyS0 fleetbox.kms_key="+base64.StdEncoding.EncodeToString(make([]byte, 32)))
			},
			want: "kms is not trusted", vol: Blank, wantOps: "inspect",
		},
		"key does not open the volume": {
			setup: func(r *rig) {
				r.vol.state, r.vol.uuid, r.vol.key = Sealed, "3f2a6c1e-7b4d-4c2a-9e1f-0a1b2c3d4e5f", []byte("another key")
			},
			want: "the key does not open the data volume", vol: Sealed, wantOps: "inspect,open",
		},
		"foreign disk": {
			setup: func(r *rig) { r.vol.state = Foreign },
			want:  "holds data that is not a fleetbox volume", vol: Foreign, wantOps: "inspect",
		},
		"no data disk": {
			setup: func(r *rig) { r.vol.missing = true },
			want:  "did not appear", vol: Blank,
		},
		"unknown fleetbox option": {
			setup: func(r *rig) { r.write(CmdlinePath, "fleetbox.kms_uri=http://x") },
			want:  `unknown option "fleetbox.kms_uri"`, vol: Blank,
		},
		"mock turned off on the command line": {
			setup: func(r *rig) { r.write(CmdlinePath, "fleetbox.mock=off") },
			want:  "does not boot without TDX", vol: Blank,
		},
		"prod never mocks": {
			conf: strings.Replace(strings.Replace(base, `"profile": "dev"`, `"profile": "prod"`, 1), `"allowMock": true,`, ``, 1),
			want: "the prod profile does not boot without TDX", vol: Blank,
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			conf := c.conf
			if conf == "" {
				conf = base
			}
			r := newRig(t, conf)
			k.setPolicy(t, imagePolicy(r.conf, testRTMR2))
			if c.setup != nil {
				c.setup(r)
			}
			_, err := r.boot()
			var se *StopError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a stop with %q\n%s", err, c.want, r.console.String())
			}
			if r.vol.state != c.vol || r.vol.opened || strings.Join(r.vol.ops, ",") != c.wantOps {
				t.Fatalf("volume touched: state %v opened %v ops %v", r.vol.state, r.vol.opened, r.vol.ops)
			}
			if _, err := os.Stat(filepath.Join(r.run, CredStoreDir, StoreKeyCredential)); err == nil {
				t.Fatal("a store key was handed over in a stopped boot")
			}
		})
	}
}

// A boot waiting for its KMS prints one line per attempt and gets its key
// once the KMS answers.
func TestBootWaitsForKMS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens yet
	r := newRig(t, devConfig("http://"+addr))
	type result struct {
		res *Result
		err error
	}
	done := make(chan result, 1)
	var console syncBuffer
	go func() {
		res, err := Boot(context.Background(), Config{
			Root: r.root, RunDir: r.run, StateDir: r.state, Volume: r.vol, Quotes: &attest.MockSource{},
			NodeUser: "-", Console: &console, KMSBackoff: 20 * time.Millisecond,
		})
		done <- result{res, err}
	}()
	for strings.Count(console.String(), "retrying") < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	// Now the KMS comes up on that address.
	state := t.TempDir()
	secret, _ := kms.LoadFileRootSecret(filepath.Join(state, kms.RootSecretFile))
	srv, err := kms.NewServer(kms.Config{StateDir: state, RootSecret: secret, Policy: imagePolicy(r.conf, testRTMR2),
		Verifier: attest.NewVerifier(attest.VerifierConfig{}), Source: &attest.MockSource{Quote: kmsMock}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("could not listen on %s again: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Run(ctx, ln)
	got := <-done
	if got.err != nil {
		t.Fatalf("%v\n%s", got.err, console.String())
	}
	if !regexp.MustCompile(`KMS: kms request failed; retrying what=checking the KMS attempt=1 .*connection refused`).MatchString(console.String()) {
		t.Fatalf("no per-attempt console line:\n%s", console.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Operational settings may come from unmeasured places (fw_cfg, then
// credentials, then the measured command line wins); security settings only
// from measured ones. The console names each source.
func TestSettingsSources(t *testing.T) {
	conf := devConfig("http://image:1")
	key := base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey))
	cases := map[string]struct {
		fwcfg, cmdline string
		creds          map[string]string
		wantURL        string
		wantFrom       string
		wantErr        string
		check          func(t *testing.T, s *Settings)
	}{
		"image default": {wantURL: "http://image:1", wantFrom: "image /etc/fleetbox/fleetbox.conf, measured"},
		"fw_cfg overrides the image": {
			fwcfg: `{"kmsUrl":"http://fwcfg:2","bootstrap":["/ip4/10.0.2.2/tcp/1/p2p/x"]}`, wantURL: "http://fwcfg:2",
			wantFrom: "fw_cfg opt/fleetbox/config, unmeasured",
			check: func(t *testing.T, s *Settings) {
				if s.Bootstrap.From != fromFwCfg || len(s.Bootstrap.Value) != 1 {
					t.Fatalf("bootstrap %+v", s.Bootstrap)
				}
			},
		},
		"credential overrides fw_cfg": {
			fwcfg: `{"kmsUrl":"http://fwcfg:2"}`, creds: map[string]string{"fleetbox.kms_url": "http://cred:3\n"},
			wantURL: "http://cred:3", wantFrom: "systemd credential fleetbox.kms_url, unmeasured",
		},
		"command line overrides all": {
			fwcfg: `{"kmsUrl":"http://fwcfg:2"}`, creds: map[string]string{"fleetbox.kms_url": "http://cred:3"},
			cmdline: `console=ttyS0 fleetbox.kms_url=http://cmdline:4 fleetbox.fleet_join=aa,bb`,
			wantURL: "http://cmdline:4", wantFrom: "kernel command line, measured",
			check: func(t *testing.T, s *Settings) {
				if strings.Join(s.FleetJoin.Value, ",") != "aa,bb" {
					t.Fatalf("fleet join %v", s.FleetJoin)
				}
			},
		},
		"pinned kms key on the command line": {
			cmdline: "fleetbox.kms_key=" + key, wantURL: "http://image:1", wantFrom: "image /etc/fleetbox/fleetbox.conf, measured",
			check: func(t *testing.T, s *Settings) {
				if s.KMSKey.From != fromCmdline || base64.StdEncoding.EncodeToString(s.KMSKey.Value) != key {
					t.Fatalf("kms key %+v", s.KMSKey)
				}
			},
		},
		"fw_cfg may not set the kms policy":   {fwcfg: `{"kmsUrl":"http://x:1","kmsPolicy":{}}`, wantErr: `unknown object member name "kmsPolicy"`},
		"fw_cfg key in another case":          {fwcfg: `{"kmsurl":"http://x:1"}`, wantErr: `unknown object member name "kmsurl"`},
		"fw_cfg duplicate key":                {fwcfg: `{"kmsUrl":"http://a:1","kmsUrl":"http://b:1"}`, wantErr: `duplicate object member name "kmsUrl"`},
		"fw_cfg trailing data":                {fwcfg: `{"kmsUrl":"http://a:1"}{"kmsUrl":"http://b:1"}`, wantErr: "after top-level value"},
		"credential may not pin the kms key":  {creds: map[string]string{"fleetbox.kms_key": key}, wantErr: "credential fleetbox.kms_key: not an operational setting"},
		"credential may not turn mock on":     {creds: map[string]string{"fleetbox.mock": "on"}, wantErr: "credential fleetbox.mock: not an operational setting"},
		"command line may only turn mock off": {cmdline: "fleetbox.mock=on", wantErr: "only off is allowed"},
		"command line option without value":   {cmdline: "fleetbox.kms_url", wantErr: "needs a value"},
		"not a kms url":                       {cmdline: "fleetbox.kms_url=file:///etc/passwd", wantErr: "is not http:// or https://"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, conf)
			if c.fwcfg != "" {
				r.write(FwCfgPath, c.fwcfg)
			}
			if c.cmdline != "" {
				r.write(CmdlinePath, c.cmdline)
			}
			creds := ""
			if c.creds != nil {
				creds = t.TempDir()
				for k, v := range c.creds {
					os.WriteFile(filepath.Join(creds, k), []byte(v), 0o600)
				}
			}
			s, err := LoadSettings(r.root, creds)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.KMSURL.Value != c.wantURL || s.KMSURL.From.String() != c.wantFrom {
				t.Fatalf("kms url %q from %q, want %q from %q", s.KMSURL.Value, s.KMSURL.From, c.wantURL, c.wantFrom)
			}
			if !s.KMSPolicy.From.Measured || !s.Profile.From.Measured || !s.AllowMock.From.Measured {
				t.Fatal("a security setting came from an unmeasured place")
			}
			if c.check != nil {
				c.check(t, s)
			}
		})
	}
}

func TestParseImageConfig(t *testing.T) {
	good := devConfig("http://kms:1")
	if _, err := ParseImageConfig([]byte(good)); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct{ conf, want string }{
		"duplicate key":               {strings.Replace(good, `"allowMock": true,`, `"allowMock": false, "allowMock": true,`, 1), `duplicate object member name "allowMock"`},
		"key in another case":         {strings.Replace(good, `"allowMock": true,`, `"allowMock": true, "allowmock": true,`, 1), `unknown object member name "allowmock"`},
		"unknown key":                 {strings.Replace(good, `"allowMock": true,`, `"allowMock": true, "debugShell": true,`, 1), `unknown object member name "debugShell"`},
		"nested case":                 {strings.Replace(good, `"dataDevice"`, `"datadevice"`, 1), `unknown object member name "datadevice"`},
		"prod with mock":              {strings.Replace(good, `"profile": "dev"`, `"profile": "prod"`, 1), "only dev may use mock"},
		"unknown profile":             {strings.Replace(good, `"profile": "dev"`, `"profile": "test"`, 1), `profile "test"`},
		"no kms trust anchor":         {strings.Replace(good, `"policy": `+kmsPolicyJSON(), `"policy": null`, 1), "needs a trust anchor"},
		"kms policy leaves rtmr open": {strings.Replace(good, `"allowedRtmr3":["`+hexOf(kmsMock.RTMR[0])+`"],`, ``, 1), "kms.policy"},
		"bad kms key":                 {strings.Replace(good, `"url": "http://kms:1",`, `"url": "http://kms:1", "publicKey": "AAAA",`, 1), "kms.publicKey"},
		"bad mock register":           {strings.Replace(good, hexOf(testRTMR1), "00", 1), "mock.rtmr1"},
		"relative data device":        {strings.Replace(good, `"/dev/vdb"`, `"vdb"`, 1), "not an absolute path"},
		"trailing object":             {good + `{}`, "after top-level value"},
		"oversize":                    {good + strings.Repeat(" ", MaxConfigSize), "exceeds"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseImageConfig([]byte(c.conf))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

// The profiles shipped in image/profiles parse (prod's is a template the
// build completes with the KMS trust anchor).
func TestShippedProfileConfigs(t *testing.T) {
	dev, err := os.ReadFile("../image/profiles/dev/tree/etc/fleetbox/fleetbox.conf")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseImageConfig(dev)
	if err != nil || c.Profile != ProfileDev || !c.AllowMock {
		t.Fatalf("dev profile: %+v %v", c, err)
	}
	tmpl, err := os.ReadFile("../image/profiles/prod/fleetbox.conf.in")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(tmpl, &m); err != nil {
		t.Fatal(err)
	}
	m["kms"] = map[string]any{"publicKey": base64.StdEncoding.EncodeToString(make([]byte, 32))}
	b, _ := json.Marshal(m)
	c, err = ParseImageConfig(b)
	if err != nil || c.Profile != ProfileProd || c.AllowMock {
		t.Fatalf("prod profile: %+v %v", c, err)
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline("a=1  b=\"x y\" fleetbox.kms_url=http://h:1\n")
	if strings.Join(got, "|") != "a=1|b=x y|fleetbox.kms_url=http://h:1" {
		t.Fatalf("%q", got)
	}
}

func TestDeriveKeysAreSeparate(t *testing.T) {
	released := bytes.Repeat([]byte{9}, 32)
	k, err := deriveKeys(released)
	if err != nil {
		t.Fatal(err)
	}
	if k.volume == k.store || bytes.Equal(k.volume[:], released) || bytes.Equal(k.store[:], released) {
		t.Fatal("derived keys are not separate")
	}
	k2, _ := deriveKeys(released)
	if *k2 != *k {
		t.Fatal("derivation is not deterministic")
	}
	id, err := newInstanceID()
	if err != nil || instanceIDOK(id) != nil || id[14] != '4' {
		t.Fatalf("instance id %q: %v", id, err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A dev boot with mock.replay carries the firmware's MRTD from fw_cfg and
// RTMR0-2 replayed from the vTPM's event log (here a real OVMF log), and
// sends the whole event log with the quote.
func TestBootMockReplay(t *testing.T) {
	k := startKMS(t, &attest.Policy{AllowedMrtd: []string{"*"}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true})
	conf := strings.Replace(devConfig(k.url), `"mock": {"mrtd": "`+hexOf(testMRTD)+`", "rtmr0": "`+hexOf(testRTMR0)+`", "rtmr1": "`+hexOf(testRTMR1)+`", "rtmr2": "`+hexOf(testRTMR2)+`"}`, `"mock": {"replay": true}`, 1)
	if !strings.Contains(conf, `"replay": true`) {
		t.Fatal("test config not rewritten")
	}
	r := newRig(t, conf)
	tpmLog, err := os.ReadFile("../measure/eventlog/testdata/ovmf-vtpm-boot.bin")
	if err != nil {
		t.Fatal(err)
	}
	r.write(TPMLogPath, string(tpmLog))
	mrtd := attest.MockMeasurement("firmware the host gave QEMU")
	r.write(MockMRTDPath, attest.MRTD(mrtd).String()+"\n")
	res, err := r.boot()
	if err != nil {
		t.Fatalf("%v\n%s", err, r.console.String())
	}
	l, _ := eventlog.ParseTPMLog(tpmLog)
	want := eventlog.Replay(eventlog.TDXFromTPM(l.Events))
	src, err := LoadAttestation(filepath.Join(r.run, AttestationFile))
	if err != nil {
		t.Fatal(err)
	}
	q, _ := src.GetQuote(context.Background(), attest.ReportData{})
	pq, _ := attest.ParseQuote(q)
	if pq.MRTD != attest.MRTD(mrtd) || pq.RTMR[0] != want[0] || pq.RTMR[1] != want[1] || pq.RTMR[2] != want[2] || pq.RTMR[3].String() != res.RTMR3 {
		t.Fatal("the mock quote does not carry the replayed registers")
	}
	// The whole log (firmware and RTMR3 events) replays to the quote: what
	// the KMS checks.
	full, err := os.ReadFile(filepath.Join(r.run, EventLogFile))
	if err != nil {
		t.Fatal(err)
	}
	fl, err := eventlog.ParseJSON(full)
	if err != nil || !eventlog.Compare(fl, pq.RTMR).OK() {
		t.Fatalf("the event log does not replay to the quote: %v", err)
	}
	for _, want := range []string{"from fw_cfg opt/fleetbox/mock-mrtd", "replayed from the firmware's event log"} {
		if !strings.Contains(r.console.String(), want) {
			t.Errorf("console lacks %q", want)
		}
	}

	// Without the vTPM log the replay stops the boot, naming what is missing.
	r2 := newRig(t, conf)
	r2.write(MockMRTDPath, attest.MRTD(mrtd).String())
	if _, err := r2.boot(); err == nil || !strings.Contains(err.Error(), "the firmware's event log") {
		t.Fatalf("no vTPM log: %v", err)
	}
}

// The node's quotes carry this boot's event log, so a namespace policy can
// pin fleetbox's own RTMR3 events (here fleetbox.profile) and leave RTMR3
// itself open for events that differ per instance.
func TestBootEventsPinnable(t *testing.T) {
	k := startKMS(t, &attest.Policy{AllowedMrtd: []string{"*"}, AllowedRtmr0: []string{"*"}, AllowedRtmr1: []string{"*"},
		AllowedRtmr2: []string{"*"}, AllowedRtmr3: []string{"*"}, AcceptMock: true})
	r := newRig(t, devConfig(k.url))
	if _, err := r.boot(); err != nil {
		t.Fatal(err)
	}
	src, err := LoadAttestation(filepath.Join(r.run, AttestationFile))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ev, err := attest.GetEvidence(ctx, src, attest.ReportData{1})
	if err != nil || len(ev.EventLog) == 0 {
		t.Fatalf("the node's evidence carries no event log: %v", err)
	}
	judge := func(profile string) error {
		v, err := attest.NewVerifier(attest.VerifierConfig{}).Verify(ctx, ev.Quote)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := eventlog.Bind(ev.EventLog, v); err != nil {
			t.Fatalf("the boot's log does not bind to the node's quote: %v", err)
		}
		p := attest.DefaultPolicy()
		p.AcceptMock = true
		p.Rtmr3Events = map[string][]string{measure.EventProfile: {hex.EncodeToString([]byte(profile))}, measure.EventConfig: {"*"}}
		return p.Evaluate(v)
	}
	if err := judge("dev"); err != nil {
		t.Fatalf("pinning the boot's own profile: %v", err)
	}
	vs := attest.Violations(judge("prod"))
	if len(vs) != 1 || vs[0].Reason != attest.ReasonEventNotAllowed || !strings.Contains(vs[0].Message, "fleetbox.profile") {
		t.Fatalf("pinning another profile: %v", vs)
	}
}
