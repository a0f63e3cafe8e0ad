package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/attest/dstack/dstacktest"
	"github.com/fleetbox/fleetbox/node"
)

// On dstack the node's store key comes from the agent: the same for a node
// after a restart (and on another CVM of the app), another for another
// node; --kms and --dstack-key are exclusive, and --kms needs a source.
func TestDstackStoreKey(t *testing.T) {
	ctx := context.Background()
	ca := attesttest.NewCA(t)
	agent := dstacktest.Start(t, ca.NewPlatform(t, attesttest.DefaultPlatform), dstacktest.App{AppID: [20]byte{1}})
	e := &env{stdout: io.Discard, stderr: io.Discard, logger: slog.New(slog.DiscardHandler)}
	keyOf := func(home string, args ...string) ([32]byte, error) {
		t.Helper()
		o, err := parseNodeRun(append([]string{"--home", home}, args...), io.Discard)
		if err != nil {
			return [32]byte{}, err
		}
		cfg := node.Config{Home: home}
		if err := o.ff.apply(ctx, e, &cfg); err != nil {
			return [32]byte{}, err
		}
		if cfg.StoreKey == nil || !strings.HasPrefix(cfg.StoreKeySource, "dstack agent GetKey fleetbox/node/12D3") {
			t.Fatalf("store key source %q", cfg.StoreKeySource)
		}
		return *cfg.StoreKey, nil
	}
	homeA, homeB := t.TempDir(), t.TempDir()
	for _, h := range []string{homeA, homeB} {
		if _, err := node.Init(h, node.DefaultFileConfig()); err != nil {
			t.Fatal(err)
		}
	}
	dstackArgs := []string{"--attest-source", "dstack", "--dstack-socket", agent.Socket, "--dstack-key"}
	a1, err := keyOf(homeA, dstackArgs...)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := keyOf(homeA, dstackArgs...)
	b1, _ := keyOf(homeB, dstackArgs...)
	if a1 != a2 || a1 == b1 || a1 == ([32]byte{}) {
		t.Fatal("the agent's store key is not stable per node and distinct between nodes")
	}

	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"kms and dstack key": {[]string{"--attest-source", "dstack", "--kms", "http://127.0.0.1:1", "--dstack-key"}, "exclusive"},
		"kms without source": {[]string{"--kms", "http://127.0.0.1:1"}, "needs a quote source"},
		"unknown source":     {[]string{"--attest-source", "sev"}, `--attest-source "sev"`},
		"no agent":           {[]string{"--attest-source", "dstack", "--dstack-socket", t.TempDir() + "/none.sock", "--dstack-key"}, "dstack guest agent"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := keyOf(homeA, c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error naming %q", err, c.want)
			}
		})
	}
}

// auto picks the dstack agent when configfs-tsm is absent and the agent's
// socket exists, and MOCK (with a warning) when neither is there.
func TestAttestSourceAuto(t *testing.T) {
	ca := attesttest.NewCA(t)
	agent := dstacktest.Start(t, ca.NewPlatform(t, attesttest.DefaultPlatform), dstacktest.App{})
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	for name, c := range map[string]struct {
		socket, kind string
	}{
		"agent present": {agent.Socket, "dstack"},
		"nothing":       {t.TempDir() + "/none.sock", "mock"},
	} {
		t.Run(name, func(t *testing.T) {
			a := attestFlags{name: srcAuto, allowed: []string{srcAuto}, socket: c.socket}
			src, err := a.source(logger)
			if err != nil {
				t.Fatal(err)
			}
			if src.Kind() != c.kind && src.Kind() != "tdx" {
				t.Fatalf("auto chose %s, want %s", src.Kind(), c.kind)
			}
			if src.Kind() == "mock" && !strings.Contains(logs.String(), "MOCK TDX") {
				t.Fatal("auto fell back to MOCK without saying so")
			}
		})
	}
}

// node run --init makes a container's first start create its home.
func TestNodeRunInit(t *testing.T) {
	home := t.TempDir() + "/node"
	o, err := parseNodeRun([]string{"--home", home, "--init", "--listen", "/ip4/127.0.0.1/tcp/0", "--admin-addr", "127.0.0.1:0"}, io.Discard)
	if err != nil || !o.init {
		t.Fatalf("parse: %v", err)
	}
	// The init step alone: run it through nodeRun with a cancelled
	// context, so the node stops as soon as it starts.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e := &env{stdout: io.Discard, stderr: io.Discard, logger: slog.New(slog.DiscardHandler)}
	nodeRun(ctx, e, []string{"--home", home, "--init", "--listen", "/ip4/127.0.0.1/tcp/0", "--admin-addr", "127.0.0.1:0", "--insecure-dev-key"})
	fc, err := node.LoadFileConfig(home)
	if err != nil {
		t.Fatalf("--init made no home: %v", err)
	}
	if strings.Join(fc.ListenAddrs, ",") != "/ip4/127.0.0.1/tcp/0" || fc.AdminAddr != "127.0.0.1:0" {
		t.Fatalf("config %+v", fc)
	}
	if _, err := node.LoadIdentity(home); err != nil {
		t.Fatal(err)
	}
}
