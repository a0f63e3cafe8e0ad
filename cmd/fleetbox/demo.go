package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms"
	kmsclient "github.com/fleetbox/fleetbox/kms/client"
	"github.com/fleetbox/fleetbox/node"
	"github.com/fleetbox/fleetbox/node/governance"
)

const demoUsage = `usage: fleetbox demo [--keep] [--dir DIR]

Runs the whole story on this machine, on loopback, with MOCK TDX: a KMS; two
full members that create a namespace pinning the image's measurements; a fleet
replica that gets its store key from the KMS, announces, is admitted as
ReadOnlyTee, receives the group key and syncs; member-a installs the key-value
application and writes, and the replica answers a query with the value while
its own writes are refused; a replica
with the wrong MRTD refused by the KMS and by the namespace; the next image
pinned, so that fleet-replicas finds the replica outside the policy and
evicts it; the replica purging itself. It prints a timeline and a verdict and exits 0
when every step held. --keep leaves everything running and prints how to talk
to each node.
`

// demoImage is the mock "image" the demo pins: recognisable mock values.
func demoImage(label string) attest.MockQuote {
	mq := attest.MockQuote{MRTD: attest.MockMeasurement(label + " mrtd")}
	for i := range mq.RTMR {
		mq.RTMR[i] = attest.MockMeasurement(fmt.Sprintf("%s rtmr%d", label, i))
	}
	return mq
}

func demoPolicy(mq attest.MockQuote) *attest.Policy {
	return &attest.Policy{
		AllowedMrtd:  []string{mq.MRTD.String()},
		AllowedRtmr0: []string{mq.RTMR[0].String()}, AllowedRtmr1: []string{mq.RTMR[1].String()},
		AllowedRtmr2: []string{mq.RTMR[2].String()}, AllowedRtmr3: []string{mq.RTMR[3].String()},
		AcceptMock: true,
	}
}

// demo holds the running parts and the timeline.
type demo struct {
	e     *env
	dir   string
	start time.Time
	log   *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errMu  sync.Mutex
	errs   []error

	steps, passed int
}

func (d *demo) say(format string, a ...any) {
	fmt.Fprintf(d.e.stdout, "[%6.2fs] MOCK TDX       %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, a...))
}

// check records one step of the verdict.
func (d *demo) check(ok bool, format string, a ...any) bool {
	d.steps++
	mark := "FAIL"
	if ok {
		d.passed++
		mark = "ok"
	}
	fmt.Fprintf(d.e.stdout, "[%6.2fs] MOCK TDX %-4s  %s\n", time.Since(d.start).Seconds(), mark, fmt.Sprintf(format, a...))
	return ok
}

func (d *demo) goRun(name string, fn func(ctx context.Context) error) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := fn(d.ctx); err != nil && d.ctx.Err() == nil {
			d.errMu.Lock()
			d.errs = append(d.errs, fmt.Errorf("%s: %w", name, err))
			d.errMu.Unlock()
		}
	}()
}

// waitFor polls cond until it holds or the timeout passes.
func (d *demo) waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		select {
		case <-d.ctx.Done():
			return false
		case <-time.After(25 * time.Millisecond):
		}
	}
	return cond()
}

func runDemo(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() { fmt.Fprint(e.stderr, demoUsage) }
	keep := fs.Bool("keep", false, "keep everything running after the story and print how to reach it")
	dir := fs.String("dir", "", "working directory (default: a new temporary directory, removed at the end)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 0 {
		return usageErr(e, "demo: no arguments")
	}
	work := *dir
	if work == "" {
		t, err := os.MkdirTemp("", "fleetbox-demo-")
		if err != nil {
			return runtimeErr(e, "demo: %v", err)
		}
		work = t
		if !*keep {
			defer os.RemoveAll(work)
		}
	}
	logFile, err := os.OpenFile(filepath.Join(work, "demo.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return runtimeErr(e, "demo: %v", err)
	}
	defer logFile.Close()
	dctx, cancel := context.WithCancel(ctx)
	d := &demo{e: e, dir: work, start: time.Now(), ctx: dctx, cancel: cancel,
		log: slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	fmt.Fprintf(e.stdout, "fleetbox demo: everything on loopback with MOCK TDX (no hardware; quotes are fleetbox mock quotes)\nlogs: %s\n\n", filepath.Join(work, "demo.log"))
	ok := d.story(*keep)
	if *keep && ok {
		fmt.Fprintln(e.stdout, "\n--keep: running until interrupted (Ctrl-C)")
		<-ctx.Done()
	}
	cancel()
	d.wg.Wait()
	for _, err := range d.errs {
		fmt.Fprintf(e.stderr, "fleetbox demo: %v\n", err)
	}
	verdict := "PASS"
	if !ok || d.passed != d.steps || len(d.errs) > 0 {
		verdict = "FAIL"
	}
	fmt.Fprintf(e.stdout, "\nverdict: %s (%d of %d checks held, %.1fs, MOCK TDX)\n", verdict, d.passed, d.steps, time.Since(d.start).Seconds())
	if verdict != "PASS" {
		return exitNo
	}
	return exitOK
}

type demoNode struct {
	name   string
	n      *node.Node
	client *node.Client
}

// startKMS runs a KMS whose policy pins the image's mock measurements.
func (d *demo) startKMS(pol *attest.Policy) (string, *prometheus.Registry, error) {
	state := filepath.Join(d.dir, "kms")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", nil, err
	}
	secret, err := kms.LoadFileRootSecret(filepath.Join(state, kms.RootSecretFile))
	if err != nil {
		return "", nil, err
	}
	reg := prometheus.NewRegistry()
	srv, err := kms.NewServer(kms.Config{StateDir: state, RootSecret: secret, Policy: pol, Profile: "demo",
		Verifier: attest.NewVerifier(attest.VerifierConfig{Logger: d.log}), Registry: reg, Logger: d.log.With("component", "kms")})
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return "", nil, err
	}
	d.goRun("kms", func(ctx context.Context) error {
		defer srv.Close()
		return srv.Run(ctx, ln)
	})
	return "http://" + ln.Addr().String(), reg, nil
}

// startNode initialises a node home and runs the node.
func (d *demo) startNode(name string, mod func(*node.Config) error) (*demoNode, error) {
	home := filepath.Join(d.dir, name)
	fc := node.FileConfig{
		ListenAddrs:       []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		AdminAddr:         "127.0.0.1:0",
		HeartbeatInterval: node.Duration(time.Second),
	}
	if _, err := node.Init(home, fc); err != nil {
		return nil, err
	}
	cfg := node.Config{Home: home, FileConfig: fc, Version: version, Logger: d.log.With("node", name)}
	cfg.Fleet.Window = time.Minute
	cfg.Fleet.AnnounceMinBackoff, cfg.Fleet.AnnounceMaxBackoff = 200*time.Millisecond, 2*time.Second
	if err := mod(&cfg); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	n, err := node.New(cfg)
	if err != nil {
		return nil, err
	}
	failed := make(chan error, 1)
	d.goRun("node "+name, func(ctx context.Context) error {
		err := n.Run(ctx)
		failed <- err
		return err
	})
	select {
	case <-n.Ready():
	case err := <-failed:
		return nil, fmt.Errorf("node %s: %w", name, err)
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("node %s did not start", name)
	}
	return &demoNode{name: name, n: n, client: &node.Client{BaseURL: n.AdminURL(), Token: n.Token()}}, nil
}

func (d *demo) connect(a, b *demoNode) error {
	return a.n.Network().Connect(d.ctx, b.n.Network().Addrs()[0])
}

func counterValue(reg *prometheus.Registry, name, label string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					match = true
				}
			}
			if match {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// story runs the steps; it returns false at the first step that cannot go on.
func (d *demo) story(keep bool) bool {
	image := demoImage("fleetbox demo image")
	pol := demoPolicy(image)
	imageSource := func() attest.Source { return &attest.MockSource{Quote: image} }

	kmsURL, kmsReg, err := d.startKMS(pol)
	if !d.check(err == nil, "KMS serving on %s; its policy pins the image (mrtd %s…) and accepts mock quotes", kmsURL, pol.AllowedMrtd[0][:12]) {
		d.say("KMS: %v", err)
		return false
	}
	fromKMS := func(c *node.Config) error {
		c.Fleet.QuoteSource = imageSource()
		return fetchStoreKey(d.ctx, &env{logger: d.log}, c, kmsURL, "", true)
	}

	a, err := d.startNode("member-a", fromKMS)
	if err == nil {
		var b *demoNode
		b, err = d.startNode("member-b", fromKMS)
		if err == nil {
			err = d.connect(b, a)
		}
		if !d.check(err == nil, "two full members running, store keys released by the KMS (HPKE-sealed) after their mock quotes passed its policy") {
			d.say("%v", err)
			return false
		}
		return d.namespaceStory(a, b, image, pol, imageSource, fromKMS, kmsURL, kmsReg, keep)
	}
	d.check(false, "start member-a: %v", err)
	return false
}

func (d *demo) namespaceStory(a, b *demoNode, image attest.MockQuote, pol *attest.Policy, imageSource func() attest.Source,
	fromKMS func(*node.Config) error, kmsURL string, kmsReg *prometheus.Registry, keep bool) bool {
	ctx := d.ctx
	created, err := a.client.CreateNamespace(ctx)
	if err != nil {
		d.check(false, "create namespace: %v", err)
		return false
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	short := created.ID[:12] + "…"
	jb, err := b.client.JoinNamespace(ctx, created.ID)
	if err == nil {
		_, err = a.client.AddMember(ctx, created.ID, "", node.MemberAddRequest{Member: jb.MemberKeys, Role: "Member", Capabilities: "MANAGE_MEMBERS"})
	}
	if err == nil {
		_, err = a.client.SetPolicy(ctx, created.ID, pol)
	}
	synced := err == nil && d.waitFor(20*time.Second, func() bool { return sameHeads(a, b, ns) })
	if !d.check(synced, "namespace %s created by member-a; member-b added with MANAGE_MEMBERS; TeeAdmissionPolicy pins the image", short) {
		d.say("%v", err)
		return false
	}

	// The replica: store key from the KMS, then fleet-join.
	t0 := time.Now()
	r, err := d.startNode("replica", fromKMS)
	if err == nil {
		err = errors.Join(d.connect(r, a), d.connect(r, b))
	}
	if !d.check(err == nil, "replica got its store key from the KMS and started (%s)", time.Since(t0).Round(time.Millisecond)) {
		d.say("%v", err)
		return false
	}
	t1 := time.Now()
	if _, err := r.client.FleetJoin(ctx, created.ID); err != nil {
		d.check(false, "fleet-join: %v", err)
		return false
	}
	admitted := d.waitFor(30*time.Second, func() bool {
		st, err := r.client.FleetStatus(ctx, created.ID)
		return err == nil && st.Admitted && st.HasGroupKey
	})
	role := ""
	if info, err := a.n.Namespace(ns, true); err == nil && admitted {
		keys, _ := r.n.Engine().Identity(ns)
		for _, g := range info.Groups {
			for _, m := range g.Members {
				if m.Key == keys.Signing.String() {
					role = m.Role
				}
			}
		}
	}
	if !d.check(admitted && role == "ReadOnlyTee", "replica announced, was admitted as %s and received the group key (%s after fleet-join)", role, time.Since(t1).Round(time.Millisecond)) {
		return false
	}
	d.check(d.waitFor(20*time.Second, func() bool { return sameHeads(a, r, ns) }), "replica synced the namespace DAG (heads equal member-a's)")
	if !d.contextsStory(a, b, r, created.ID) {
		return false
	}

	_, outsider, _ := ed25519.GenerateKey(rand.Reader)
	var mk governance.MemberKeys
	copy(mk.Signing[:], outsider.Public().(ed25519.PublicKey))
	_, werr := r.client.AddMember(ctx, created.ID, "", node.MemberAddRequest{Member: mk.String(), Role: "Member"})
	d.check(werr != nil && strings.Contains(strings.ToLower(werr.Error()), "read"), "replica's write refused: %v", firstLine(werr))

	// The wrong image: refused by the KMS and by the namespace.
	wrong := image
	wrong.MRTD = attest.MockMeasurement("some other image mrtd")
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	kc, err := kmsclient.New(kmsclient.Config{URL: kmsURL, Identity: sk, Source: &attest.MockSource{Quote: wrong}, MaxAttempts: 1})
	var kerr error
	if err == nil {
		_, kerr = kc.GetKey(ctx)
	}
	var apiErr *kmsclient.APIError
	d.check(errors.As(kerr, &apiErr) && apiErr.Code == "measurement_policy_rejected",
		"KMS refused the wrong-MRTD replica its key: %s", firstLine(kerr))
	var throwaway [32]byte
	rand.Read(throwaway[:])
	w, err := d.startNode("wrong-replica", func(c *node.Config) error {
		c.Fleet.QuoteSource = &attest.MockSource{Quote: wrong}
		c.StoreKey = &throwaway // no KMS key for it: a throwaway local key
		return nil
	})
	refused := false
	if err == nil {
		err = errors.Join(d.connect(w, a), d.connect(w, b))
	}
	if err == nil {
		_, err = w.client.FleetJoin(ctx, created.ID)
	}
	if err == nil {
		refused = d.waitFor(20*time.Second, func() bool {
			return counterValue(a.n.Metrics(), "fleet_announces_refused_total", attest.ReasonMrtdNotAllowed)+
				counterValue(b.n.Metrics(), "fleet_announces_refused_total", attest.ReasonMrtdNotAllowed) > 0
		})
	}
	st, _ := w.client.FleetStatus(ctx, created.ID)
	d.check(refused && st != nil && !st.Admitted, "namespace refused the wrong-MRTD replica's announce (mrtd_not_allowed)")

	// An image roll: member-a pins the next image. The policy change removes
	// no one by itself; the operator's fleet-replicas names the replica it
	// no longer covers and evicts it. The replica then purges itself.
	keys, _ := r.n.Engine().Identity(ns)
	storePath := filepath.Join(d.dir, "replica", node.StoreFile)
	next := image // the next image: new firmware, same kernel and configuration
	next.MRTD = attest.MockMeasurement("fleetbox demo image v2 mrtd")
	_, err = a.client.SetPolicy(ctx, created.ID, demoPolicy(next))
	listing, code := d.ctl("member-a", "fleet-replicas", "--namespace", created.ID)
	d.check(err == nil && code == exitNo && strings.Contains(listing, "mrtd_not_allowed") && strings.Contains(listing, keys.Signing.String()[:16]),
		"member-a pinned the next image (mrtd %s…); the replica stays a member until evicted, and `fleetbox ctl fleet-replicas` names it outside the policy (mrtd_not_allowed, exit %d)",
		demoPolicy(next).AllowedMrtd[0][:12], code)
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		d.say("  %s", line)
	}
	t2 := time.Now()
	evicted, code := d.ctl("member-a", "fleet-replicas", "--namespace", created.ID, "--evict-outside-policy")
	purged := code == exitOK && strings.Contains(evicted, "evicted") && d.waitFor(30*time.Second, func() bool {
		return counterValue(r.n.Metrics(), "self_purge_completed_total", "") > 0
	})
	raw, _ := os.ReadFile(storePath)
	nss, _ := r.n.Engine().Namespaces()
	d.check(purged && len(nss) == 0 && counterValue(r.n.Metrics(), "self_purge_failures_total", "") == 0 && !bytes.Contains(raw, ns[:]), "`fleetbox ctl fleet-replicas --evict-outside-policy` evicted the replica (group key rotated); the replica self-purged: no namespace rows, no trace of the namespace in its compacted store file (%s)", time.Since(t2).Round(time.Millisecond))
	if !d.dstackStory(a, b) {
		return false
	}
	d.say("KMS: %v keys released, %v refused; every decision is in its signed, hash-chained audit log (%s)",
		counterValue(kmsReg, "fleetbox_kms_key_grants_total", ""), counterValue(kmsReg, "fleetbox_kms_key_denials_total", ""), filepath.Join(d.dir, "kms"))

	if keep {
		fmt.Fprintln(d.e.stdout, "\nreach the nodes with fleetbox ctl:")
		for _, n := range []*demoNode{a, b, r, w} {
			if n == nil {
				continue
			}
			fmt.Fprintf(d.e.stdout, "  %-14s fleetbox ctl --home %s status\n", n.name, filepath.Join(d.dir, n.name))
		}
		fmt.Fprintf(d.e.stdout, "  KMS            curl %s/health\n  namespace      %s\n", kmsURL, created.ID)
	}
	return true
}

// ctl runs `fleetbox ctl --home <node home> args...` as an operator would
// and returns what it printed (stdout, then stderr) and its exit code.
func (d *demo) ctl(nodeName string, args ...string) (string, int) {
	var out, errb bytes.Buffer
	code := run(d.ctx, append([]string{"ctl", "--home", filepath.Join(d.dir, nodeName)}, args...), &out, &errb)
	return out.String() + errb.String(), code
}

func sameHeads(a, b *demoNode, ns governance.NamespaceID) bool {
	ha, na, err1 := a.n.Engine().Heads(ns)
	hb, nb, err2 := b.n.Engine().Heads(ns)
	if err1 != nil || err2 != nil || na != nb || len(ha) != len(hb) {
		return false
	}
	for i := range ha {
		if ha[i] != hb[i] {
			return false
		}
	}
	return true
}

func firstLine(err error) string {
	if err == nil {
		return "no error"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
