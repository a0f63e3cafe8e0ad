package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node"
)

// TestNodeInitAndCtl runs `node init`, starts the node in-process, and drives
// it with `ctl` as an operator would.
func TestNodeInitAndCtl(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	var out, errb bytes.Buffer
	ctx := context.Background()
	if code := run(ctx, []string{"node", "init", "--home", home, "--listen", "/ip4/127.0.0.1/tcp/0", "--admin-addr", "127.0.0.1:0"}, &out, &errb); code != exitOK {
		t.Fatalf("node init: %d %s", code, errb.String())
	}
	for _, f := range []string{node.IdentityFile, node.AdminTokenFile, node.ConfigFile} {
		st, err := os.Stat(filepath.Join(home, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, err, st)
		}
	}
	fc, err := node.LoadFileConfig(home)
	if err != nil {
		t.Fatal(err)
	}
	key := [32]byte{3}
	n, err := node.New(node.Config{Home: home, FileConfig: fc, StoreKey: &key, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- n.Run(rctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-n.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("node did not start")
	}
	// The admin address is an ephemeral port: point ctl at it with --admin.
	tokenFile := filepath.Join(home, node.AdminTokenFile)
	ctl := func(args ...string) (string, int) {
		out.Reset()
		errb.Reset()
		code := run(ctx, append([]string{"ctl", "--admin", n.AdminURL(), "--token", tokenFile}, args...), &out, &errb)
		return out.String(), code
	}
	s, code := ctl("--json", "namespace", "create")
	if code != exitOK {
		t.Fatalf("namespace create: %d %s", code, errb.String())
	}
	var created node.NamespaceInfo
	if err := json.Unmarshal([]byte(s), &created); err != nil || len(created.ID) != 64 {
		t.Fatalf("namespace create --json: %q %v", s, err)
	}
	if s, code := ctl("namespace", "list"); code != exitOK || !strings.Contains(s, created.ID) {
		t.Fatalf("namespace list: %d %q", code, s)
	}
	policy := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(policy, []byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, code := ctl("policy", "set", "--ns", created.ID, policy); code != exitOK {
		t.Fatalf("policy set: %d %s", code, errb.String())
	}
	if s, code := ctl("policy", "get", "--ns", created.ID); code != exitOK || !strings.Contains(s, `"acceptMock": true`) {
		t.Fatalf("policy get: %d %q", code, s)
	}
	if s, code := ctl("member", "list", "--ns", created.ID); code != exitOK || !strings.Contains(s, "Admin") {
		t.Fatalf("member list: %d %q", code, s)
	}
	if _, code := ctl("member", "add", "--ns", created.ID, "--member", "fbm1nope"); code != exitUsage {
		t.Fatalf("member add with bad keys: exit %d, want %d", code, exitUsage)
	}
	if _, code := ctl("status"); code != exitOK {
		t.Fatalf("status: %d %s", code, errb.String())
	}
	if _, code := ctl("frobnicate"); code != exitUsage {
		t.Fatalf("unknown command: exit %d", code)
	}
	// With only --home, ctl finds the port the node bound (the config says
	// port 0) in home/admin.addr; the node removes that file when it stops.
	out.Reset()
	if code := run(ctx, []string{"ctl", "--home", home, "--json", "status"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), n.Status().PeerID) {
		t.Fatalf("ctl --home status: %d %q %s", code, out.String(), errb.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("node run: %v", err)
	}
	done <- nil // for the deferred wait
	if _, err := os.Stat(filepath.Join(home, node.AdminAddrFile)); !os.IsNotExist(err) {
		t.Fatalf("%s left behind after shutdown: %v", node.AdminAddrFile, err)
	}
}
