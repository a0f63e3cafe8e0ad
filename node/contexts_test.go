package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fleetbox/fleetbox/node/contexts/apptest"
	"github.com/fleetbox/fleetbox/node/governance"
)

// ctxView is what nodes holding the same context ops must agree on.
func ctxView(n *tnode, ns, c string) string {
	cs, err := n.client.Context(context.Background(), ns, c)
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("root %s ops %d keys %d app %s", cs.Root, cs.Ops, cs.Keys, cs.Application)
}

func waitContextConverged(t testing.TB, what, ns, c string, nodes ...*tnode) string {
	t.Helper()
	var want string
	waitFor(t, what, func() bool {
		want = ctxView(nodes[0], ns, c)
		for _, n := range nodes[1:] {
			if ctxView(n, ns, c) != want {
				return false
			}
		}
		return true
	})
	return want
}

func kvSet(k, v string) CallRequest {
	return CallRequest{Method: "set", Input: fmt.Sprintf(`{"key":%q,"value":%q}`, k, v)}
}

// TestContextsAcrossNodes: three members call one kv context concurrently
// (two of them never installed the application: they fetch it from a peer)
// and converge to one state root; a ReadOnlyTee replica admitted later
// catches up the whole state, answers queries like the members and is
// refused a write; a partitioned member's calls and the others' converge
// after healing; a restarted member keeps the state and answers at once.
func TestContextsAcrossNodes(t *testing.T) {
	ctx := context.Background()
	tb := newFleetTestbed(t)
	nodes := make([]*tnode, 3)
	for i := range nodes {
		nodes[i] = startNodeWith(t, fmt.Sprint(i), newHome(t), tb.fleetConfig(nil))
		if i > 0 {
			connect(t, nodes[i], nodes[i-1])
		}
	}
	a := nodes[0]
	created, err := a.client.CreateNamespace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nsHex := created.ID
	ns, _ := governance.ParseNamespaceID(nsHex)
	for _, n := range nodes[1:] {
		j, err := n.client.JoinNamespace(ctx, nsHex)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.client.AddMember(ctx, nsHex, "", MemberAddRequest{Member: j.MemberKeys, Role: "Member", Capabilities: "MANAGE_MEMBERS"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.client.SetPolicy(ctx, nsHex, tb.policy()); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, "members", ns, nodes...)

	app, err := a.client.InstallApp(ctx, apptest.Build(t, apptest.KV))
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.client.CreateContext(ctx, nsHex, ContextCreateRequest{Application: app.ID.String(), Init: `{"entries":{"greeting":"hello"}}`})
	if err != nil {
		t.Fatal(err)
	}
	c := res.Context.String()
	waitContextConverged(t, "the context reaches every member", nsHex, c, nodes...)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i, n := range nodes {
		wg.Go(func() {
			for j := range 10 {
				for _, req := range []CallRequest{kvSet("shared", fmt.Sprintf("%d/%d", i, j)), kvSet(fmt.Sprintf("n%d-%d", i, j), "x")} {
					if _, err := n.client.Call(ctx, nsHex, c, "call", req); err != nil {
						errs <- fmt.Errorf("node %d: %w", i, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	view := waitContextConverged(t, "concurrent calls converge", nsHex, c, nodes...)
	t.Logf("after concurrent calls: %s", view)

	// The replica: admitted by attestation, then catches up by sync.
	r := startNodeWith(t, "replica", newHome(t), tb.fleetConfig(tb.source(t, tb.good)))
	connect(t, r, a)
	if _, err := r.client.FleetJoin(ctx, nsHex); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replica admitted", func() bool {
		st, _ := r.client.FleetStatus(ctx, nsHex)
		return st != nil && st.Admitted && st.HasGroupKey
	})
	waitContextConverged(t, "the replica catches up the context state", nsHex, c, append(nodes, r)...)
	q := CallRequest{Method: "get", Input: `{"key":"shared"}`}
	want, err := a.client.Call(ctx, nsHex, c, "query", q)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.client.Call(ctx, nsHex, c, "query", q)
	if err != nil || got.OutputText != want.OutputText {
		t.Fatalf("replica's query: %+v, %v; member's %s", got, err, want.OutputText)
	}
	_, err = r.client.Call(ctx, nsHex, c, "call", kvSet("shared", "from the replica"))
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("replica's write: %v", err)
	}

	// A partition: node 2 and the others call apart, then heal.
	partition(nodes, true)
	for i, n := range nodes {
		for j := range 3 {
			if _, err := n.client.Call(ctx, nsHex, c, "call", kvSet("split", fmt.Sprintf("%d/%d", i, j))); err != nil {
				t.Fatal(err)
			}
		}
	}
	partition(nodes, false)
	for i := range nodes[1:] {
		connect(t, nodes[i+1], nodes[i])
	}
	view = waitContextConverged(t, "partitioned members converge after healing", nsHex, c, append(nodes, r)...)

	// Evicted, the replica purges the context state, the application only
	// that namespace used, and its compiled code.
	cacheDir := filepath.Join(r.home, WasmCacheDir, app.ID.String())
	if _, err := os.Stat(cacheDir); err != nil {
		t.Fatalf("replica's compiled code: %v", err)
	}
	if _, err := a.client.RemoveMember(ctx, nsHex, "", r.mustKey(t, ns)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replica self-purged", func() bool { return counter(t, r.reg, "self_purge_completed_total", "") > 0 })
	if apps, err := r.client.Apps(ctx); err != nil || len(apps) != 0 {
		t.Fatalf("replica kept applications: %v %v", apps, err)
	}
	if _, err := os.Stat(cacheDir); !os.IsNotExist(err) {
		t.Fatalf("replica kept compiled code: %v", err)
	}
	if n := rowsLeft(t, r, ns); n != 0 {
		t.Fatalf("%d traces of the namespace left in the replica's store file", n)
	}

	// A restart keeps the state, and the first call needs no recompilation.
	b := nodes[1]
	home := b.home
	b.stop()
	b2 := startNodeWith(t, "1-again", home, tb.fleetConfig(nil))
	if got := ctxView(b2, nsHex, c); got != view {
		t.Fatalf("after restart: %s, want %s", got, view)
	}
	if res, err := b2.client.Call(ctx, nsHex, c, "query", q); err != nil || res.OutputText == "" {
		t.Fatalf("query after restart: %v", err)
	}
}
