package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/fleetbox/fleetbox/node"
)

const nodeUsage = `usage: fleetbox node init --home DIR [--listen ADDR,...] [--admin-addr HOST:PORT]
       fleetbox node run  --home DIR [--listen ADDR,...] [--bootstrap ADDR,...]
                          [--admin-addr HOST:PORT] [--heartbeat 30s]
                          [--init] [--store-key-file FILE | --insecure-dev-key | --kms URL [--kms-policy FILE] | --dstack-key]
                          [--attest-source auto|tdx|dstack|mock|appliance [--dstack-socket PATH] [--mock-mrtd HEX] [--mock-rtmrN HEX]]
                          [--fleet-join NS ...] [--collateral FILE | --collateral-cache DIR [--pccs-url URL]]
       fleetbox node self-purge reconcile --home DIR [store key flags]

init creates the node identity (Ed25519, also its libp2p peer id), an admin
token and a config file in DIR; run starts the daemon. The store key comes
from --store-key-file, else the systemd credential store-key
($CREDENTIALS_DIRECTORY/store-key), else, only with --insecure-dev-key, a key
generated in DIR (development only). With --kms the node gets its store key
from the KMS first, proving itself with a quote from --attest-source (tdx:
configfs-tsm; dstack: the dstack guest agent, whose event log travels with
the quote; mock). On dstack, --dstack-key derives the store key from the
agent's GetKey instead (path fleetbox/node/<peer id>/store-key). --init
creates the home first if it has none (a container's first start). --fleet-join makes the node a candidate read-only fleet replica
(ReadOnlyTee) of a namespace; --collateral* give the collateral this node uses
when it checks other replicas' quotes. self-purge reconcile finishes purges an
eviction started and a crash interrupted (run it before the node, from a
systemd oneshot).
`

// listFlag collects repeated or comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func runNode(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, nodeUsage)
		return exitUsage
	}
	switch args[0] {
	case "init":
		return nodeInit(e, args[1:])
	case "run":
		return nodeRun(ctx, e, args[1:])
	case "self-purge":
		return nodeSelfPurge(ctx, e, args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(e.stderr, nodeUsage)
		return exitOK
	}
	fmt.Fprintf(e.stderr, "fleetbox: node: unknown command %q\n\n", args[0])
	fmt.Fprint(e.stderr, nodeUsage)
	return exitUsage
}

func nodeInit(e *env, args []string) int {
	fs := flag.NewFlagSet("node init", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	home := fs.String("home", "", "node home directory (created 0700)")
	var listen listFlag
	fs.Var(&listen, "listen", "libp2p listen multiaddrs (default TCP and QUIC on port 4501)")
	adminAddr := fs.String("admin-addr", node.DefaultAdminAddr, "admin API address (loopback only)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *home == "" || fs.NArg() != 0 {
		return usageErr(e, "node init: --home DIR is required and takes no arguments")
	}
	fc := node.DefaultFileConfig()
	if len(listen) > 0 {
		fc.ListenAddrs = listen
	} else {
		fmt.Fprintf(e.stderr, "fleetbox: node init: no --listen: the node will listen on every interface (%s); pass --listen to narrow it\n", strings.Join(fc.ListenAddrs, ", "))
	}
	fc.AdminAddr = *adminAddr
	res, err := node.Init(*home, fc)
	if err != nil {
		return usageErr(e, "node init: %v", err)
	}
	for _, c := range res.Created {
		fmt.Fprintf(e.stdout, "created %s\n", c)
	}
	fmt.Fprintf(e.stdout, "peer id %s\n", res.PeerID)
	return exitOK
}

// errFlags marks an error the flag package has already printed.
var errFlags = errors.New("bad flags")

func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errFlags, err)
}

// parseResult turns a parse error into an exit: help is 0, bad flags 2
// (the flag package printed why), anything else 2 with the message.
func parseResult(e *env, cmd string, err error) (int, bool) {
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, flag.ErrHelp):
		return exitOK, true
	case errors.Is(err, errFlags):
		return exitUsage, true
	}
	return usageErr(e, "%s: %v", cmd, err), true
}

// nodeRunOpts are the flags of `node run`.
type nodeRunOpts struct {
	home, adminAddr, keyFile string
	listen, bootstrap        listFlag
	heartbeat                time.Duration
	devKey, init             bool
	ff                       fleetFlags
}

// parseNodeRun parses `node run` flags without side effects (the unit-file
// test runs systemd's ExecStart lines through it).
func parseNodeRun(args []string, stderr io.Writer) (*nodeRunOpts, error) {
	fs := flag.NewFlagSet("node run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &nodeRunOpts{}
	fs.StringVar(&o.home, "home", "", "node home directory (from node init)")
	fs.Var(&o.listen, "listen", "libp2p listen multiaddrs (overrides the config file)")
	fs.Var(&o.bootstrap, "bootstrap", "peers to dial, multiaddrs ending in /p2p/<peer id> (added to the config file's)")
	fs.StringVar(&o.adminAddr, "admin-addr", "", "admin API address, loopback only (overrides the config file)")
	fs.DurationVar(&o.heartbeat, "heartbeat", 0, "heads heartbeat interval (overrides the config file; default 30s)")
	fs.StringVar(&o.keyFile, "store-key-file", "", "file with the 32-byte store key (raw or 64 hex digits)")
	fs.BoolVar(&o.devKey, "insecure-dev-key", false, "without a key file or credential, generate a store key in the home directory (INSECURE, development only)")
	fs.BoolVar(&o.init, "init", false, "create the home first where it has no identity or config (node init with --listen and --admin-addr); for containers")
	o.ff.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, flagErr(err)
	}
	if o.home == "" || fs.NArg() != 0 {
		return nil, errors.New("--home DIR is required and takes no arguments")
	}
	if err := o.ff.quotes.check(); err != nil {
		return nil, err
	}
	return o, nil
}

func nodeRun(ctx context.Context, e *env, args []string) int {
	o, err := parseNodeRun(args, e.stderr)
	if code, done := parseResult(e, "node run", err); done {
		return code
	}
	if o.init {
		fc := node.DefaultFileConfig()
		if len(o.listen) > 0 {
			fc.ListenAddrs = o.listen
		}
		if o.adminAddr != "" {
			fc.AdminAddr = o.adminAddr
		}
		res, err := node.Init(o.home, fc)
		if err != nil {
			return usageErr(e, "node run --init: %v", err)
		}
		for _, c := range res.Created {
			e.logger.Info("node run --init: created", "file", c)
		}
	}
	fc, err := node.LoadFileConfig(o.home)
	if err != nil {
		return usageErr(e, "node run: %v (did you run `fleetbox node init --home %s`?)", err, o.home)
	}
	if len(o.listen) > 0 {
		fc.ListenAddrs = o.listen
	}
	fc.Bootstrap = append(fc.Bootstrap, o.bootstrap...)
	if o.adminAddr != "" {
		fc.AdminAddr = o.adminAddr
	}
	if o.heartbeat > 0 {
		fc.HeartbeatInterval = node.Duration(o.heartbeat)
	}
	if o.keyFile != "" {
		fc.StoreKeyFile = o.keyFile
	}
	cfg := node.Config{
		Home:           o.home,
		FileConfig:     fc,
		InsecureDevKey: o.devKey,
		Version:        version,
		Logger:         e.logger,
	}
	if err := o.ff.apply(ctx, e, &cfg); err != nil {
		return applyErr(e, "node run", err)
	}
	n, err := node.New(cfg)
	if err != nil {
		return usageErr(e, "node run: %v", err)
	}
	start := time.Now()
	if err := n.Run(ctx); err != nil {
		e.logger.Error("node stopped", "err", err)
		return exitRuntime
	}
	e.logger.Info("node stopped", "uptime", time.Since(start).Round(time.Second))
	return exitOK
}
