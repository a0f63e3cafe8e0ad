package appliance_test

// The appliance end to end in QEMU: a KMS and an admin node on the host's
// 127.0.0.1, the dev image booted with OVMF, and the guest reaching them
// through QEMU's user network. Run it with image/e2e.sh (which builds the
// image first) or:
//
//	FLEETBOX_E2E=1 go test ./appliance -run TestApplianceQEMU -v -timeout 30m
//
// It asserts no time; it prints each step with the time it took.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
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

// e2e is one run: the host side and the step clock.
type e2e struct {
	t     *testing.T
	dir   string
	repo  string
	image string
	start time.Time
	last  time.Time
	ctx   context.Context

	kmsURL, kmsPolicy string
	kmsSrv            *kms.Server
	admin             *node.Node
	adminClient       *node.Client
	ns                string
	data              string
	boots             int
	figures           []string
}

func (e *e2e) step(format string, a ...any) {
	now := time.Now()
	line := fmt.Sprintf("[%6.1fs +%5.1fs] %s", now.Sub(e.start).Seconds(), now.Sub(e.last).Seconds(), fmt.Sprintf(format, a...))
	e.last = now
	fmt.Println(line)
}

func (e *e2e) figure(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	e.figures = append(e.figures, s)
	e.step("FIGURE %s", s)
}

func TestApplianceQEMU(t *testing.T) {
	if os.Getenv("FLEETBOX_E2E") != "1" {
		t.Skip("the QEMU end-to-end test runs with FLEETBOX_E2E=1 after image/build.sh dev (image/e2e.sh does both)")
	}
	repo, _ := filepath.Abs("..")
	image := os.Getenv("FLEETBOX_E2E_IMAGE")
	if image == "" {
		image = filepath.Join(repo, "build", "image", "dev")
	}
	if _, err := os.Stat(filepath.Join(image, "fleetbox.raw")); err != nil {
		t.Fatalf("no dev image in %s: run image/build.sh dev first (%v)", image, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Logs (serial consoles, the KMS state) stay in build/e2e/RUN for a
	// look after a failure.
	dir := filepath.Join(repo, "build", "e2e", time.Now().UTC().Format("20060102T150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fmt.Println("e2e: logs in", dir)
	e := &e2e{t: t, dir: dir, repo: repo, image: image, start: time.Now(), ctx: ctx}
	e.last = e.start
	e.data = filepath.Join(e.dir, "data.raw")

	// Pin exactly what a TD booting this image shows: measurements.json
	// from `fleetbox measure image` (image/measure.sh), policies from
	// `fleetbox policy from-measurements`. RTMR0 depends on the VMM and is
	// waived; the dev image's quotes are MOCK (accepted, and marked).
	good, expected := e.policyFromMeasurements(image, "good")
	e.step("policy from %s/measurements.json: mrtd %s… rtmr1 %s… rtmr2 %s… rtmr3 %s… (rtmr0 waived, acceptMock: MOCK TDX)",
		image, good.AllowedMrtd[0][:12], good.AllowedRtmr1[0][:12], good.AllowedRtmr2[0][:12], good.AllowedRtmr3[0][:12])

	e.startKMS(good, expected)
	e.startAdmin(good)

	// Boot 1: first boot of a new instance.
	vm := e.boot("boot 1 (first boot)", image, e.data)
	vm.waitFor(`key released by the KMS`, 4*time.Minute)
	e.step("boot 1: key fetched from the KMS")
	instance := vm.match(`first boot of a new instance ([0-9a-f-]{36})`, 1)
	vm.waitFor(`data volume formatted and opened`, time.Minute)
	vm.waitFor(`data volume mounted at /var/lib/fleetbox`, time.Minute)
	e.step("boot 1: volume formatted (LUKS2) and mounted; instance %s", instance)
	vm.waitFor(`msg="node running"`, 2*time.Minute)
	e.figure("boot to node ready (QEMU start to the node's \"node running\", %s): %.1f s", vm.accel, time.Since(vm.started).Seconds())
	e.step("boot 1: node started")
	peer := vm.match(`msg="node running" peer=(\S+)`, 1)

	replicaKey := e.waitAdmitted(peer)
	e.step("boot 1: admitted as ReadOnlyTee by the admin node (member %s…)", replicaKey[:16])
	sh := vm.shell()
	st := e.waitGuestFleetStatus(sh, func(s *node.FleetStatus) bool { return s.Admitted && s.HasGroupKey })
	e.step("boot 1: the replica reports admitted=%v, group key received=%v", st.Admitted, st.HasGroupKey)
	e.measureGuest(sh)
	identity := e.guestIdentity(sh)

	// Evict: the replica purges its copy.
	if _, err := e.adminClient.RemoveMember(ctx, e.ns, "", replicaKey); err != nil {
		t.Fatalf("evicting the replica: %v", err)
	}
	e.step("evicted the replica (member removed, group key rotated)")
	vm.waitFor(`self-purge complete`, 2*time.Minute)
	e.step("boot 1: the replica purged itself")
	e.waitGuestFleetStatus(sh, func(s *node.FleetStatus) bool { return *s == node.FleetStatus{} })
	e.step("boot 1: the replica no longer knows the namespace")
	vm.poweroff(sh)
	e.step("boot 1: powered off")

	// Boot 2: the same volume opens with the same key; reconcile runs.
	vm = e.boot("boot 2 (same instance)", image, e.data)
	vm.waitFor(`data volume /dev/vdb: instance `+instance+` \(sealed\)`, 4*time.Minute)
	vm.waitFor(`data volume opened with the instance's key`, 2*time.Minute)
	e.step("boot 2: the volume opened with the same instance's key (instance %s)", instance)
	vm.waitFor(`Finished .*fleetbox-self-purge`, time.Minute)
	e.step("boot 2: fleetbox-self-purge.service (reconcile) ran before the node")
	vm.waitFor(`msg="node running" peer=`+regexp.QuoteMeta(peer), 2*time.Minute)
	e.step("boot 2: node started with the same identity %s…", peer[:20])
	sh = vm.shell()
	if id2 := e.guestIdentity(sh); !bytes.Equal(id2, identity) {
		t.Fatal("the node's identity changed across boots")
	}
	st = e.waitGuestFleetStatus(sh, func(*node.FleetStatus) bool { return true })
	if *st != (node.FleetStatus{}) {
		t.Fatalf("the evicted replica knows the namespace again after a reboot: %+v", st)
	}
	e.step("boot 2: still evicted, not announcing (an evicted replica does not re-join by itself)")
	vm.poweroff(sh)
	e.step("boot 2: powered off")

	// Boot 3: the KMS refuses (its policy pins another RTMR2): no key, no
	// node, the volume untouched.
	bad := *good
	bad.AllowedRtmr2 = []string{strings.Repeat("5e", 48)}
	e.setKMSPolicy(&bad, "pins another RTMR2 (the image no longer matches)")
	before := fileSHA256(t, e.data)
	vm = e.boot("boot 3 (KMS refuses)", image, e.data)
	line := vm.waitFor(`BOOT STOPPED: the KMS refused the key: measurement_policy_rejected: .*`, 4*time.Minute)
	e.step("boot 3: %s", strings.TrimSpace(line[strings.Index(line, "BOOT STOPPED"):]))
	if !strings.Contains(line, "rtmr2") || !strings.Contains(line, "not in allowedRtmr2") {
		t.Fatalf("the refusal does not name the register: %s", line)
	}
	vm.waitFor(`Dependency failed for .*fleetbox-node.service`, time.Minute)
	sh = vm.shell()
	out := sh.run("systemctl is-active fleetbox-node.service; mountpoint -q /var/lib/fleetbox && echo mounted || echo not-mounted; ls /dev/mapper")
	if !strings.Contains(out, "inactive") || !strings.Contains(out, "not-mounted") || strings.Contains(out, "fleetbox-data") {
		t.Fatalf("after the refusal: %s", out)
	}
	e.step("boot 3: the node never started; the volume was neither opened nor mounted")
	vm.poweroff(sh)
	if after := fileSHA256(t, e.data); after != before {
		t.Fatal("the data disk changed in a boot the KMS refused")
	}
	e.step("boot 3: the data disk is byte-identical to before the boot")
	if n := vm.count(`msg="node running"`); n != 0 {
		t.Fatalf("node running appears %d times in boot 3", n)
	}

	// The raw disk: no namespace id, no identity key in plaintext.
	e.checkRawDisk(identity)
	e.step("raw data disk: no namespace id (raw or hex), no node identity key (PEM, DER or seed)")
	e.checkAudit(instance)

	if changed := os.Getenv("FLEETBOX_E2E_CHANGED_IMAGE"); changed != "" {
		e.pinning(filepath.Join(repo, changed), good)
	} else {
		e.step("pinning with a changed image skipped: FLEETBOX_E2E_CHANGED_IMAGE is not set (image/e2e.sh sets it)")
	}
	for _, f := range e.figures {
		fmt.Println("FIGURE", f)
	}
}

// policyFromMeasurements runs the commands an operator runs on a built
// image and returns the KMS policy and the predicted events.
func (e *e2e) policyFromMeasurements(image, name string) (*attest.Policy, []eventlog.Event) {
	ms := filepath.Join(image, "measurements.json")
	ns, kp := filepath.Join(e.dir, name+"-ns-policy.json"), filepath.Join(e.dir, name+"-kms-policy.json")
	cmd := exec.Command(filepath.Join(image, "fleetbox.bin"), "policy", "from-measurements", "--profile", "dev",
		"--waive", "rtmr0", "--accept-mock", "--order", "single-pass", "--out", ns, "--kms-out", kp, ms)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("policy from-measurements: %v\n%s", err, out)
	}
	pol, err := attest.LoadPolicyFile(kp)
	if err != nil {
		e.t.Fatal(err)
	}
	nsPol, err := attest.LoadPolicyFile(ns)
	if err != nil {
		e.t.Fatal(err)
	}
	if a, _ := pol.Marshal(); string(a) != func() string { b, _ := nsPol.Marshal(); return string(b) }() {
		e.t.Fatal("the namespace and KMS policies from one measurements.json differ")
	}
	b, err := os.ReadFile(ms)
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := measure.ParseMeasurements(b)
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := eventlog.ParseJSON(m.Profiles["dev"].Events)
	if err != nil {
		e.t.Fatal(err)
	}
	return pol, l.Events
}

func (e *e2e) startKMS(pol *attest.Policy, expected []eventlog.Event) {
	state := filepath.Join(e.dir, "kms")
	os.MkdirAll(state, 0o700)
	secret, err := kms.LoadFileRootSecret(filepath.Join(state, kms.RootSecretFile))
	if err != nil {
		e.t.Fatal(err)
	}
	e.kmsPolicy = filepath.Join(e.dir, "kms-policy.json")
	e.writePolicy(pol)
	srv, err := kms.NewServer(kms.Config{StateDir: state, RootSecret: secret, Policy: pol, PolicyFile: e.kmsPolicy,
		Verifier: attest.NewVerifier(attest.VerifierConfig{}), ExpectedEvents: expected, Logger: testLogger(e.t, "kms")})
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	go srv.Run(e.ctx, ln)
	e.t.Cleanup(func() { srv.Close() })
	e.kmsSrv = srv
	port := ln.Addr().(*net.TCPAddr).Port
	e.kmsURL = fmt.Sprintf("http://10.0.2.2:%d", port)
	e.step("KMS serving on 127.0.0.1:%d (the guest reaches it as %s); MOCK /attest quote", port, e.kmsURL)
}

func (e *e2e) writePolicy(pol *attest.Policy) {
	b, err := pol.Marshal()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.kmsPolicy, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *e2e) setKMSPolicy(pol *attest.Policy, why string) {
	e.writePolicy(pol)
	if err := e.kmsSrv.ReloadPolicy(); err != nil {
		e.t.Fatalf("reloading the KMS policy: %v", err)
	}
	e.step("KMS policy: %s", why)
}

func (e *e2e) startAdmin(pol *attest.Policy) {
	home := filepath.Join(e.dir, "admin")
	fc := node.FileConfig{
		ListenAddrs:       []string{"/ip4/127.0.0.1/tcp/0"},
		AdminAddr:         "127.0.0.1:0",
		HeartbeatInterval: node.Duration(2 * time.Second),
	}
	if _, err := node.Init(home, fc); err != nil {
		e.t.Fatal(err)
	}
	var key [32]byte
	copy(key[:], bytes.Repeat([]byte{7}, 32))
	cfg := node.Config{Home: home, FileConfig: fc, StoreKey: &key, Logger: testLogger(e.t, "admin")}
	cfg.Fleet.Window = 5 * time.Minute
	n, err := node.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(e.ctx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		e.t.Fatalf("admin node: %v", err)
	case <-time.After(30 * time.Second):
		e.t.Fatal("admin node did not start")
	}
	e.admin = n
	e.adminClient = &node.Client{BaseURL: n.AdminURL(), Token: n.Token()}
	created, err := e.adminClient.CreateNamespace(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	e.ns = created.ID
	if _, err := e.adminClient.SetPolicy(e.ctx, e.ns, pol); err != nil {
		e.t.Fatal(err)
	}
	e.step("admin node %s… on 127.0.0.1; namespace %s… with the TeeAdmissionPolicy", n.Network().ID().String()[:20], e.ns[:12])
}

// pinning boots an image that differs from the pinned one in one kernel
// command line option: the KMS refuses its key naming the registers and,
// in its audit record, the events that changed; with a KMS that admits
// both images, the node starts and the namespace refuses its announce by
// register. The good image's policy stays on the namespace throughout.
func (e *e2e) pinning(changed string, good *attest.Policy) {
	e.setKMSPolicy(good, "back to the policy written from the good image's measurements.json")
	other, _ := e.policyFromMeasurements(changed, "changed")
	for i, pair := range [][2][]string{{good.AllowedRtmr1, other.AllowedRtmr1}, {good.AllowedRtmr2, other.AllowedRtmr2}} {
		if pair[0][0] == pair[1][0] {
			e.t.Fatalf("the changed image predicts the same rtmr%d", i+1)
		}
	}
	e.step("changed image (one more kernel command line option): predicted rtmr1 %s…, rtmr2 %s…", other.AllowedRtmr1[0][:12], other.AllowedRtmr2[0][:12])

	data := filepath.Join(e.dir, "data-changed.raw")
	before := func() int { pg, _ := e.kmsSrv.AuditPage(0, 1000); return len(pg.Entries) }()
	vm := e.boot("boot 4 (changed image, pinned KMS)", changed, data)
	line := vm.waitFor(`BOOT STOPPED: the KMS refused the key: measurement_policy_rejected: .*`, 4*time.Minute)
	for _, want := range []string{"not in allowedRtmr1", "not in allowedRtmr2"} {
		if !strings.Contains(line, want) {
			e.t.Fatalf("boot 4: the refusal does not say %q: %s", want, line)
		}
	}
	e.step("boot 4: KMS refused: %s", strings.TrimSpace(line[strings.Index(line, "measurement_policy_rejected"):]))
	pg, err := e.kmsSrv.AuditPage(uint64(before), 10)
	if err != nil || len(pg.Entries) != 1 {
		e.t.Fatalf("boot 4: KMS audit: %v, %d new records", err, len(pg.Entries))
	}
	var rec struct {
		Reason  string
		Details []string
	}
	json.Unmarshal(pg.Entries[0].Record, &rec)
	var diffs []string
	for _, d := range rec.Details {
		if strings.HasPrefix(d, "event diff: ") {
			diffs = append(diffs, d)
		}
	}
	joined := strings.Join(diffs, "\n")
	if !strings.Contains(joined, `rtmr2: changed`) || !strings.Contains(joined, `".cmdline"`) || !strings.Contains(joined, "rtmr1: changed") {
		e.t.Fatalf("boot 4: the audit record does not name the changed events: %q", rec.Details)
	}
	for _, d := range diffs {
		e.step("boot 4: KMS audit record %d: %s", pg.Entries[0].Seq, d)
	}
	sh := vm.shell()
	vm.poweroff(sh)

	// A KMS that admits both images: the node starts; the namespace still
	// pins the good one.
	both := *good
	both.AllowedRtmr1 = append(append([]string(nil), good.AllowedRtmr1...), other.AllowedRtmr1...)
	both.AllowedRtmr2 = append(append([]string(nil), good.AllowedRtmr2...), other.AllowedRtmr2...)
	e.setKMSPolicy(&both, "admits the good and the changed image (the namespace pins the good one only)")
	refusedBefore := e.refused("rtmr2_not_allowed")
	vm = e.boot("boot 5 (changed image, namespace pinned)", changed, data)
	vm.waitFor(`msg="node running"`, 4*time.Minute)
	e.step("boot 5: key released, node started")
	deadline := time.Now().Add(3 * time.Minute)
	for e.refused("rtmr2_not_allowed") == refusedBefore && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	if e.refused("rtmr2_not_allowed") == refusedBefore || e.refused("rtmr1_not_allowed") == 0 {
		e.t.Fatal("boot 5: the namespace did not refuse the changed image's announce by register")
	}
	if reps, _ := e.adminClient.FleetReplicas(e.ctx, e.ns); len(reps) != 1 {
		e.t.Fatalf("boot 5: the namespace has %d replica records, want only boot 1's", len(reps))
	}
	e.step("boot 5: the namespace refused the announce: fleet_announces_refused_total{reason=\"rtmr1_not_allowed\"} %v, {reason=\"rtmr2_not_allowed\"} %v",
		e.refused("rtmr1_not_allowed"), e.refused("rtmr2_not_allowed"))
	sh = vm.shell()
	vm.poweroff(sh)
}

// refused reads the admin node's fleet_announces_refused_total{reason}.
func (e *e2e) refused(reason string) float64 {
	mfs, err := e.admin.Metrics().Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != "fleet_announces_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// bootstrapAddr is the admin node's libp2p address as the guest dials it.
func (e *e2e) bootstrapAddr() string {
	for _, s := range e.admin.Network().Addrs() {
		if strings.HasPrefix(s, "/ip4/127.0.0.1/tcp/") {
			port := strings.Split(strings.TrimPrefix(s, "/ip4/127.0.0.1/tcp/"), "/")[0]
			return fmt.Sprintf("/ip4/10.0.2.2/tcp/%s/p2p/%s", port, e.admin.Network().ID())
		}
	}
	e.t.Fatal("admin node has no TCP address on 127.0.0.1")
	return ""
}

// waitAdmitted waits until the admin node lists the guest as an admitted
// ReadOnlyTee member and returns its member key.
func (e *e2e) waitAdmitted(peer string) string {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		reps, err := e.adminClient.FleetReplicas(e.ctx, e.ns)
		if err == nil {
			for _, r := range reps {
				if r.Member && r.Mock {
					return r.Key
				}
			}
		}
		time.Sleep(time.Second)
	}
	e.t.Fatalf("the guest (peer %s) was not admitted within 3 minutes", peer)
	return ""
}

// waitGuestFleetStatus polls the replica's own fleet status through the
// dev root shell until ok accepts it. A namespace the node no longer knows
// (after a self-purge) is the zero status.
func (e *e2e) waitGuestFleetStatus(sh *shell, ok func(*node.FleetStatus) bool) *node.FleetStatus {
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		out := sh.run("fleetbox ctl --home /var/lib/fleetbox/node --json fleet-status --namespace " + e.ns + " 2>&1")
		last = out
		if strings.Contains(out, "unknown namespace") {
			if st := (&node.FleetStatus{}); ok(st) {
				return st
			}
		} else if i := strings.Index(out, "{"); i >= 0 {
			var st node.FleetStatus
			if json.NewDecoder(strings.NewReader(out[i:])).Decode(&st) == nil && ok(&st) {
				return &st
			}
		}
		time.Sleep(2 * time.Second)
	}
	e.t.Fatalf("guest fleet status never reached the expected state; last: %s", last)
	return nil
}

// measureGuest records the booted system's memory and the node's RSS.
func (e *e2e) measureGuest(sh *shell) {
	out := sh.run(`awk '/MemTotal|MemAvailable/{print $1, $2}' /proc/meminfo; for p in /proc/[0-9]*; do ` +
		`[ "$(cat $p/comm 2>/dev/null)" = fleetbox ] && grep VmRSS $p/status; done`)
	var total, avail, rss int
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		var v int
		fmt.Sscan(f[1], &v)
		switch f[0] {
		case "MemTotal:":
			total = v
		case "MemAvailable:":
			avail = v
		case "VmRSS:":
			rss += v
		}
	}
	e.figure("booted system memory in use (MemTotal - MemAvailable, the OS lives in RAM): %d MiB of %d MiB; node RSS %d MiB",
		(total-avail)/1024, total/1024, rss/1024)
}

// guestIdentity reads the node's identity key through the dev root shell
// and returns its 32-byte seed (to look for it on the raw disk later).
func (e *e2e) guestIdentity(sh *shell) []byte {
	out := sh.run("cat /var/lib/fleetbox/node/node.key")
	i, j := strings.Index(out, "-----BEGIN"), strings.Index(out, "-----END PRIVATE KEY-----")
	if i < 0 || j < 0 {
		e.t.Fatalf("reading the node identity: %q", out)
	}
	blk, _ := pem.Decode([]byte(strings.ReplaceAll(out[i:j+len("-----END PRIVATE KEY-----")], "\r", "")))
	if blk == nil {
		e.t.Fatalf("node identity is not PEM: %q", out)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		e.t.Fatal(err)
	}
	return k.(ed25519.PrivateKey).Seed()
}

func (e *e2e) checkRawDisk(seed []byte) {
	raw, err := os.ReadFile(e.data)
	if err != nil {
		e.t.Fatal(err)
	}
	nsRaw, _ := hex.DecodeString(e.ns)
	sk := ed25519.NewKeyFromSeed(seed)
	der, _ := x509.MarshalPKCS8PrivateKey(sk)
	for name, needle := range map[string][]byte{
		"namespace id (raw)":          nsRaw,
		"namespace id (hex)":          []byte(e.ns),
		"namespace id (HEX)":          []byte(strings.ToUpper(e.ns)),
		"identity key PEM header":     []byte("PRIVATE KEY"),
		"identity key (PKCS#8 DER)":   der,
		"identity key seed":           seed,
		"identity public key":         sk.Public().(ed25519.PublicKey),
		"fleetbox config file marker": []byte(`"listenAddrs"`),
	} {
		if bytes.Contains(raw, needle) {
			e.t.Errorf("the raw data disk contains the %s in plaintext", name)
		}
	}
	if !bytes.HasPrefix(raw, []byte("LUKS\xba\xbe")) {
		e.t.Error("the data disk does not start with a LUKS header")
	}
}

func (e *e2e) checkAudit(instance string) {
	pg, err := e.kmsSrv.AuditPage(0, 100)
	if err != nil {
		e.t.Fatal(err)
	}
	var grants, denials int
	for _, en := range pg.Entries {
		var r struct {
			InstanceID, Decision, Reason string
		}
		json.Unmarshal(en.Record, &r)
		if r.InstanceID != instance {
			e.t.Errorf("audit record %d names instance %q, want %q", en.Seq, r.InstanceID, instance)
		}
		switch r.Decision {
		case "granted":
			grants++
		default:
			denials++
		}
	}
	if grants != 2 || denials != 1 {
		e.t.Errorf("KMS audit: %d grants and %d denials, want 2 and 1", grants, denials)
	}
	e.step("KMS audit log: %d grants and %d denial, every record for instance %s", grants, denials, instance)
}

func fileSHA256(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// vm is one QEMU boot.
type vm struct {
	e       *e2e
	name    string
	cmd     *exec.Cmd
	log     string
	sock    string
	accel   string
	started time.Time
	done    chan struct{}
}

func (e *e2e) boot(name, image, data string) *vm {
	e.boots++
	run := filepath.Join(e.dir, fmt.Sprintf("boot%d", e.boots))
	os.MkdirAll(run, 0o755)
	v := &vm{e: e, name: name, log: filepath.Join(run, "serial.log"), sock: filepath.Join(run, "serial.sock"), done: make(chan struct{})}
	op := map[string]any{"kmsUrl": e.kmsURL, "bootstrap": []string{e.bootstrapAddr()}, "fleetJoin": []string{e.ns}}
	b, _ := json.Marshal(op)
	fw := filepath.Join(run, "operational.json")
	os.WriteFile(fw, b, 0o644)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	v.cmd = exec.Command("bash", filepath.Join(e.repo, "image", "qemu.sh"), "dev", "--image", image, "--data", data,
		"--fw-cfg", fw, "--node-port", fmt.Sprint(port), "--serial-socket", v.sock, "--serial-log", v.log)
	var stderr bytes.Buffer
	v.cmd.Stderr = &stderr
	v.cmd.Stdout = &stderr
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.done) }()
	e.t.Cleanup(func() {
		select {
		case <-v.done:
		default:
			v.cmd.Process.Kill()
			<-v.done
		}
	})
	// qemu.sh says which accelerator it chose on its first line.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(stderr.String(), "booting") {
		time.Sleep(100 * time.Millisecond)
	}
	if m := regexp.MustCompile(`\((\w+), (\w+)\)`).FindStringSubmatch(stderr.String()); m != nil {
		v.accel = m[2]
	}
	e.step("%s: QEMU started (%s), serial log %s", name, v.accel, v.log)
	return v
}

func (v *vm) read() string {
	b, _ := os.ReadFile(v.log)
	return string(b)
}

// waitFor waits until the serial log has a line matching re and returns it.
func (v *vm) waitFor(re string, d time.Duration) string {
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, l := range strings.Split(v.read(), "\n") {
			if rx.MatchString(l) {
				return l
			}
		}
		select {
		case <-v.done:
			v.e.t.Fatalf("%s: QEMU exited before %q appeared; serial log tail:\n%s", v.name, re, tail(v.read(), 40))
		case <-time.After(500 * time.Millisecond):
		}
	}
	v.e.t.Fatalf("%s: %q did not appear within %s; serial log tail:\n%s", v.name, re, d, tail(v.read(), 60))
	return ""
}

func (v *vm) match(re string, group int) string {
	m := regexp.MustCompile(re).FindStringSubmatch(v.read())
	if m == nil {
		v.e.t.Fatalf("%s: no match for %q", v.name, re)
	}
	return m[group]
}

func (v *vm) count(re string) int { return len(regexp.MustCompile(re).FindAllString(v.read(), -1)) }

func (v *vm) poweroff(sh *shell) {
	sh.send("systemctl poweroff")
	select {
	case <-v.done:
	case <-time.After(2 * time.Minute):
		v.e.t.Logf("%s: no clean power-off within 2 minutes; killing QEMU", v.name)
		v.cmd.Process.Kill()
		<-v.done
	}
	sh.close()
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// shell is the dev image's root shell on the serial console.
type shell struct {
	v    *vm
	conn net.Conn
	mu   sync.Mutex
	buf  bytes.Buffer
	n    int
}

func (v *vm) shell() *shell {
	v.waitFor(`login: root \(automatic login\)`, 2*time.Minute)
	var c net.Conn
	var err error
	for i := 0; i < 50; i++ {
		if c, err = net.Dial("unix", v.sock); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		v.e.t.Fatalf("%s: serial socket: %v", v.name, err)
	}
	sh := &shell{v: v, conn: c}
	go func() {
		r := bufio.NewReader(c)
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			sh.mu.Lock()
			sh.buf.Write(b[:n])
			sh.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	// The kernel's console messages share the line: keep them out of the
	// way of command output.
	sh.run("dmesg -n 1; export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0")
	return sh
}

func (s *shell) send(cmd string) { s.conn.Write([]byte(cmd + "\r")) }

// run runs one command and returns its output, delimited by markers. The
// command must be safe to run twice: a line typed while login is still
// setting the terminal up is discarded (seen: the first command of a boot
// echoed, then lost when bash started), so a command whose begin marker has
// not appeared within 10 s is typed again.
func (s *shell) run(cmd string) string {
	s.n++
	begin, end := fmt.Sprintf("__B%d__", s.n), fmt.Sprintf("__E%d__", s.n)
	s.mu.Lock()
	s.buf.Reset()
	s.mu.Unlock()
	// The markers are typed split by an empty quote, so the terminal's
	// echo of the command line never matches them; only the output does.
	line := fmt.Sprintf("echo __B''%d__; %s; echo __E''%d__", s.n, cmd, s.n)
	s.send(line)
	deadline := time.Now().Add(90 * time.Second)
	resend := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		out := s.buf.String()
		s.mu.Unlock()
		i := strings.Index(out, begin)
		if i >= 0 {
			if j := strings.Index(out[i:], end); j >= 0 {
				return strings.ReplaceAll(out[i+len(begin):i+j], "\r", "")
			}
		} else if time.Now().After(resend) {
			s.send(line)
			resend = time.Now().Add(10 * time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.v.e.t.Fatalf("%s: shell command %q did not finish", s.v.name, cmd)
	return ""
}

func (s *shell) close() { s.conn.Close() }

func testLogger(t *testing.T, name string) *slog.Logger {
	if os.Getenv("FLEETBOX_E2E_VERBOSE") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("host", name)
}
