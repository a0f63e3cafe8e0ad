package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/dstack"
	"github.com/fleetbox/fleetbox/kms/client"
	"github.com/fleetbox/fleetbox/node"
)

// fleetFlags are the node's fleet-replica and KMS settings.
type fleetFlags struct {
	quotes    attestFlags
	coll      collateralFlags
	kmsURL    string
	kmsPolicy string
	kmsSeal   bool
	dstackKey bool
	join      listFlag
}

func (f *fleetFlags) register(fs *flag.FlagSet) {
	f.quotes.register(fs, "", srcAuto, srcTDX, srcDstack, srcMock, srcAppliance)
	f.coll.register(fs)
	fs.StringVar(&f.kmsURL, "kms", "", "get the store key from the KMS at this `url` (needs --attest-source)")
	fs.BoolVar(&f.dstackKey, "dstack-key", false, "derive the store key from the dstack agent's GetKey for a path named by this node's identity (--dstack-socket)")
	fs.StringVar(&f.kmsPolicy, "kms-policy", "", "check the KMS's own quote against this policy `file` before trusting it")
	fs.BoolVar(&f.kmsSeal, "kms-seal", true, "ask the KMS for the key HPKE-sealed to a key the quote binds")
	fs.Var(&f.join, "fleet-join", "fleet-join this namespace `id` at start (repeatable; adds to the config file's)")
}

// apply fills the node config from the flags; with --kms it fetches the
// store key (the node's home must hold its identity).
func (f *fleetFlags) apply(ctx context.Context, e *env, cfg *node.Config) error {
	if f.kmsURL != "" && f.dstackKey {
		return errors.New("--kms and --dstack-key are exclusive: the store key comes from one place")
	}
	if f.kmsURL != "" && !f.quotes.set() {
		return fmt.Errorf("--kms %w", errNoSource)
	}
	src, err := f.quotes.source(e.logger)
	if err != nil {
		return err
	}
	cfg.Fleet.QuoteSource = src
	coll, err := f.coll.source(e)
	if err != nil {
		return err
	}
	if coll != nil {
		cfg.Fleet.Verifier = attest.NewVerifier(attest.VerifierConfig{Collateral: coll, Logger: e.logger})
	}
	cfg.FleetJoin = append(cfg.FleetJoin, f.join...)
	if f.dstackKey {
		if err := dstackStoreKey(ctx, e, cfg, f.quotes.agent()); err != nil {
			return &runtimeError{err}
		}
	}
	if f.kmsURL != "" {
		if err := fetchStoreKey(ctx, e, cfg, f.kmsURL, f.kmsPolicy, f.kmsSeal); err != nil {
			return &runtimeError{err}
		}
	}
	return nil
}

// runtimeError marks a failure of something outside the command line (the
// KMS, the network) so the caller exits 1 or 3 rather than 2.
type runtimeError struct{ err error }

func (e *runtimeError) Error() string { return e.err.Error() }
func (e *runtimeError) Unwrap() error { return e.err }

// fetchStoreKey gets the node's store key from the KMS with the node's own
// identity and quote source (kms/client.Fetch, the path the appliance uses
// too) and puts it in cfg.
func fetchStoreKey(ctx context.Context, e *env, cfg *node.Config, url, policyFile string, seal bool) error {
	sk, err := node.LoadIdentity(cfg.Home)
	if err != nil {
		return err
	}
	c, err := client.New(client.Config{URL: url, Identity: sk, Source: cfg.Fleet.QuoteSource, Seal: seal,
		Logger: e.logger.With("component", "kms-client")})
	if err != nil {
		return err
	}
	trust := client.Trust{Verifier: cfg.Fleet.Verifier}
	if policyFile != "" {
		if trust.Policy, err = attest.LoadPolicyFile(policyFile); err != nil {
			return err
		}
	}
	key, _, err := c.Fetch(ctx, trust)
	if err != nil {
		return err
	}
	defer key.Wipe()
	b := key.Bytes()
	defer clear(b)
	var sk32 [32]byte
	copy(sk32[:], b)
	if sk32 == ([32]byte{}) {
		return errors.New("the KMS returned an all-zero key")
	}
	cfg.StoreKey, cfg.StoreKeySource = &sk32, "kms "+url
	return nil
}

// dstackStoreKey derives the node's store key from the dstack agent: GetKey
// for a path named by the node's peer id, so that each node of a dstack app
// has its own key, the same after every restart of that app (the agent
// derives it from the app identity). HKDF separates it from the agent's key.
func dstackStoreKey(ctx context.Context, e *env, cfg *node.Config, agent *dstack.Agent) error {
	sk, err := node.LoadIdentity(cfg.Home)
	if err != nil {
		return err
	}
	id, err := node.PeerID(sk)
	if err != nil {
		return err
	}
	path := "fleetbox/node/" + id + "/store-key"
	k, err := agent.DeriveKey(ctx, path, "fleetbox-store-key", "fleetbox/v1/dstack/store-key")
	if err != nil {
		return fmt.Errorf("store key from the dstack agent: %w", err)
	}
	if k == ([32]byte{}) {
		return errors.New("the dstack agent's key derived to zero")
	}
	cfg.StoreKey, cfg.StoreKeySource = &k, "dstack agent GetKey "+path
	return nil
}

// applyErr reports a fleetFlags.apply failure: bad flags exit 2, a KMS that
// refused exits 1, one that could not be reached 3.
func applyErr(e *env, cmd string, err error) int {
	var re *runtimeError
	if errors.As(err, &re) {
		fmt.Fprintf(e.stderr, "fleetbox: %s: %v\n", cmd, err)
		return kmsExit(err)
	}
	return usageErr(e, "%s: %v", cmd, err)
}

// selfPurgeOpts are the flags of `node self-purge reconcile`.
type selfPurgeOpts struct {
	home, keyFile string
	devKey        bool
	ff            fleetFlags
}

// parseSelfPurge parses `node self-purge reconcile` flags (args after
// "reconcile") without side effects.
func parseSelfPurge(args []string, stderr io.Writer) (*selfPurgeOpts, error) {
	fs := flag.NewFlagSet("node self-purge reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &selfPurgeOpts{}
	fs.StringVar(&o.home, "home", "", "node home directory")
	fs.StringVar(&o.keyFile, "store-key-file", "", "file with the 32-byte store key")
	fs.BoolVar(&o.devKey, "insecure-dev-key", false, "use the development key in the home directory (INSECURE)")
	o.ff.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, flagErr(err)
	}
	if o.home == "" || fs.NArg() != 0 {
		return nil, errors.New("--home DIR is required")
	}
	if err := o.ff.quotes.check(); err != nil {
		return nil, err
	}
	return o, nil
}

// nodeSelfPurge runs `fleetbox node self-purge reconcile`.
func nodeSelfPurge(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] != "reconcile" {
		return usageErr(e, "node self-purge: want reconcile\n\n  fleetbox node self-purge reconcile --home DIR [store key flags]")
	}
	o, err := parseSelfPurge(args[1:], e.stderr)
	if code, done := parseResult(e, "node self-purge reconcile", err); done {
		return code
	}
	fc, err := node.LoadFileConfig(o.home)
	if err != nil {
		return usageErr(e, "node self-purge reconcile: %v", err)
	}
	if o.keyFile != "" {
		fc.StoreKeyFile = o.keyFile
	}
	cfg := node.Config{Home: o.home, FileConfig: fc, InsecureDevKey: o.devKey, Version: version, Logger: e.logger}
	if err := o.ff.apply(ctx, e, &cfg); err != nil {
		return applyErr(e, "node self-purge reconcile", err)
	}
	rep, err := node.Reconcile(ctx, cfg)
	if rep != nil {
		printJSON(e, rep, exitOK)
	}
	if err != nil {
		e.logger.Error("self-purge reconcile incomplete; markers kept for the next run", "err", err)
		return exitRuntime
	}
	return exitOK
}
