package node

import (
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fleetbox/fleetbox/internal/poll"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide workers that libp2p's dependencies start once.
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// testHeartbeat keeps multi-node tests fast; production uses 30 s.
const testHeartbeat = 250 * time.Millisecond

type tnode struct {
	*Node
	home   string
	client *Client
	stop   func()
}

func testLogger(name string) *slog.Logger {
	if os.Getenv("FLEETBOX_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
}

// newHome initialises a node home for tests: loopback, ephemeral ports.
func newHome(t testing.TB) string {
	t.Helper()
	home := filepath.Join(t.TempDir(), "home")
	fc := FileConfig{
		ListenAddrs:       []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		AdminAddr:         "127.0.0.1:0",
		HeartbeatInterval: Duration(testHeartbeat),
	}
	if _, err := Init(home, fc); err != nil {
		t.Fatal(err)
	}
	return home
}

var testStoreKey = [32]byte{42}

func startNode(t testing.TB, name, home string) *tnode {
	t.Helper()
	return startNodeWith(t, name, home, nil)
}

func connect(t testing.TB, a, b *tnode) {
	t.Helper()
	if err := a.net.Connect(context.Background(), b.net.Addrs()[0]); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, what, cond)
}

// view is the part of a namespace's state every member must agree on:
// heads, groups and members (not this node's own identity or key holdings).
func view(t testing.TB, n *tnode, ns governance.NamespaceID) string {
	t.Helper()
	info, err := n.Namespace(ns, true)
	if err != nil {
		return "error: " + err.Error()
	}
	type g struct {
		ID, Parent string
		Members    []MemberInfo
	}
	v := struct {
		Heads     []string
		Ops       uint64
		HasPolicy bool
		Groups    []g
	}{Heads: info.Heads, Ops: info.Ops, HasPolicy: info.HasPolicy}
	for _, gi := range info.Groups {
		v.Groups = append(v.Groups, g{gi.ID, gi.Parent, gi.Members})
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// waitConverged waits until the nodes agree, and prints their views if not.
func waitConverged(t testing.TB, what string, ns governance.NamespaceID, nodes ...*tnode) {
	t.Helper()
	poll.UntilElse(t, what, converged(t, ns, nodes...), func() {
		for i, n := range nodes {
			info, _ := n.Namespace(ns, false)
			t.Logf("node %d: complete=%v pending=%d\n%s", i, info != nil && info.Complete, info.Pending, view(t, n, ns))
		}
	})
}

func converged(t testing.TB, ns governance.NamespaceID, nodes ...*tnode) func() bool {
	return func() bool {
		want := view(t, nodes[0], ns)
		for _, n := range nodes[1:] {
			if view(t, n, ns) != want {
				return false
			}
		}
		info, err := nodes[0].Namespace(ns, false)
		return err == nil && info.Complete
	}
}

func hasMember(t testing.TB, n *tnode, ns governance.NamespaceID, key string) bool {
	ms, err := n.Members(ns, ns.Root())
	if err != nil {
		return false
	}
	return slices.ContainsFunc(ms, func(m MemberInfo) bool { return m.Key == key })
}

// outsider makes a namespace identity that no node holds.
func outsider(t testing.TB) (ed25519.PrivateKey, governance.MemberKeys) {
	t.Helper()
	pub, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var mk governance.MemberKeys
	copy(mk.Signing[:], pub)
	copy(mk.Agreement[:], x.PublicKey().Bytes())
	return sk, mk
}

// setup starts count nodes in a line (each connected to the previous), has
// node 0 create a namespace and add every other node as Admin.
func setup(t *testing.T, count int) ([]*tnode, governance.NamespaceID) {
	t.Helper()
	return setupWith(t, count, nil)
}

// setupWith is setup with a change to every node's config.
func setupWith(t *testing.T, count int, mod func(*Config)) ([]*tnode, governance.NamespaceID) {
	t.Helper()
	ctx := context.Background()
	nodes := make([]*tnode, count)
	for i := range nodes {
		nodes[i] = startNodeWith(t, fmt.Sprint(i), newHome(t), mod)
		if i > 0 {
			connect(t, nodes[i], nodes[i-1])
		}
	}
	created, err := nodes[0].client.CreateNamespace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := governance.ParseNamespaceID(created.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		j, err := n.client.JoinNamespace(ctx, created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nodes[0].client.AddMember(ctx, created.ID, "", MemberAddRequest{Member: j.MemberKeys, Role: "Admin"}); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, "members converge", ns, nodes...)
	for _, n := range nodes {
		info, _ := n.Namespace(ns, false)
		if info.Role != "Admin" || info.Members != count {
			t.Fatalf("after setup: role %q, %d members", info.Role, info.Members)
		}
	}
	return nodes, ns
}

func TestNodesConvergeCatchUpAndRestart(t *testing.T) {
	ctx := context.Background()
	nodes, ns := setup(t, 4)
	nsHex := ns.String()

	// Concurrent ops from different admins, including conflicting ones: a
	// removal racing a role change and a capability change of the same member.
	_, x := outsider(t)
	_, y := outsider(t)
	victim := nodes[3].mustKey(t, ns)
	// Partition every node from every other so the ops are truly
	// concurrent: each admin signs on its own heads.
	partition(nodes, true)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	do := func(f func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- f() }()
	}
	do(func() error {
		_, err := nodes[0].client.AddMember(ctx, nsHex, "", MemberAddRequest{Member: x.String(), Role: "Member", Capabilities: "MANAGE_MEMBERS"})
		return err
	})
	do(func() error {
		_, err := nodes[1].client.RemoveMember(ctx, nsHex, "", victim)
		return err
	})
	do(func() error { _, err := nodes[2].client.SetRole(ctx, nsHex, "", victim, "ReadOnly"); return err })
	do(func() error { _, err := nodes[3].client.SetCapabilities(ctx, nsHex, "", victim, "0"); return err })
	do(func() error { _, err := nodes[2].client.CreateGroup(ctx, nsHex, ""); return err })
	do(func() error {
		_, err := nodes[1].client.AddMember(ctx, nsHex, "", MemberAddRequest{Member: y.String(), Role: "ReadOnly"})
		return err
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if converged(t, ns, nodes...)() {
		t.Fatal("partitioned nodes agree before healing")
	}
	partition(nodes, false)
	for i := range nodes[1:] {
		connect(t, nodes[i+1], nodes[i])
	}
	// nodes[3] is removed by the race (the removal wins in either order), so
	// it cannot read what follows; the others agree on everything and it
	// agrees on the DAG.
	live := nodes[:3]
	waitConverged(t, "convergence after concurrent ops", ns, live...)
	waitFor(t, "the removed node has the same heads", func() bool {
		a, _ := nodes[3].Namespace(ns, false)
		b, _ := live[0].Namespace(ns, false)
		return slices.Equal(a.Heads, b.Heads)
	})
	if hasMember(t, nodes[0], ns, victim) {
		t.Fatal("the removed member is still listed (the removal must win over the concurrent role change)")
	}
	for _, k := range []string{x.Signing.String(), y.Signing.String()} {
		if !hasMember(t, nodes[0], ns, k) {
			t.Fatalf("member %s missing", k[:8])
		}
	}

	// Cut node 2 off (gossip and streams refused both ways) while ops happen.
	cut := live[2]
	for _, o := range nodes {
		if o != cut {
			o.net.Block(cut.net.ID())
			cut.net.Block(o.net.ID())
		}
	}
	waitFor(t, "cut-off", func() bool { return len(cut.net.Peers()) == 0 })
	before := view(t, cut, ns)
	_, z := outsider(t)
	if _, err := live[0].client.AddMember(ctx, nsHex, "", MemberAddRequest{Member: z.String(), Role: "Member"}); err != nil {
		t.Fatal(err)
	}
	if _, err := live[1].client.SetCapabilities(ctx, nsHex, "", x.Signing.String(), "CAN_CREATE_SUBGROUP,MANAGE_MEMBERS"); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, "the others converge", ns, live[0], live[1])
	if view(t, cut, ns) != before {
		t.Fatal("the cut-off node changed while cut off")
	}
	for _, o := range nodes {
		if o != cut {
			o.net.Unblock(cut.net.ID())
			cut.net.Unblock(o.net.ID())
		}
	}
	connect(t, cut, live[0])
	waitConverged(t, "catch-up after reconnect", ns, live...)
	if !hasMember(t, cut, ns, z.Signing.String()) {
		t.Fatal("caught-up node lacks the member added while it was cut off")
	}

	// A late joiner syncs the whole history, then reads it once added.
	late := startNode(t, "late", newHome(t))
	connect(t, late, live[1])
	j, err := late.client.JoinNamespace(ctx, nsHex)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := live[0].Namespace(ns, false)
	waitFor(t, "late joiner has every op", func() bool {
		info, err := late.Namespace(ns, false)
		return err == nil && info.Ops == want.Ops && slices.Equal(info.Heads, want.Heads)
	})
	if _, err := live[1].client.AddMember(ctx, nsHex, "", MemberAddRequest{Member: j.MemberKeys, Role: "Member"}); err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(live), late)
	waitConverged(t, "late joiner reads the state", ns, all...)

	// Restart keeps everything.
	r := live[1]
	beforeRestart := view(t, r, ns)
	r.stop()
	r2 := startNode(t, "1-restarted", r.home)
	if got := view(t, r2, ns); got != beforeRestart {
		t.Fatalf("state changed across restart:\n%s\n%s", beforeRestart, got)
	}
	connect(t, r2, live[0])
	connect(t, r2, late)

	// A removed member cannot read ops sealed after its removal.
	lateKey := late.mustKey(t, ns)
	if _, err := live[0].client.RemoveMember(ctx, nsHex, "", lateKey); err != nil {
		t.Fatal(err)
	}
	_, w := outsider(t)
	if _, err := live[0].client.AddMember(ctx, nsHex, "", MemberAddRequest{Member: w.String(), Role: "Member"}); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, "members see the new member", ns, live[0], r2, live[2])
	waitFor(t, "the removed node has every op (as skeletons)", func() bool {
		a, _ := late.Namespace(ns, false)
		b, _ := live[0].Namespace(ns, false)
		return slices.Equal(a.Heads, b.Heads)
	})
	info, err := late.Namespace(ns, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.Complete {
		t.Fatal("the removed node claims a complete state")
	}
	if hasMember(t, late, ns, w.Signing.String()) {
		t.Fatal("the removed node read a member added after its removal")
	}
	for _, g := range info.Groups {
		if g.Parent == "" && g.HasKey {
			t.Fatal("the removed node holds the rotated root group key")
		}
	}
	// And it can no longer author.
	if _, err := late.client.CreateGroup(ctx, nsHex, ""); err == nil {
		t.Fatal("a removed member authored an op")
	}
}

// partition blocks (or unblocks) every pair of nodes.
func partition(nodes []*tnode, block bool) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			if block {
				a.net.Block(b.net.ID())
			} else {
				a.net.Unblock(b.net.ID())
			}
		}
	}
}

func (n *tnode) mustKey(t testing.TB, ns governance.NamespaceID) string {
	t.Helper()
	keys, err := n.eng.Identity(ns)
	if err != nil {
		t.Fatal(err)
	}
	return keys.Signing.String()
}

func TestStoreKeyRefusal(t *testing.T) {
	home := newHome(t)
	n := startNode(t, "a", home)
	if _, err := n.client.CreateNamespace(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.stop()
	fc, _ := LoadFileConfig(home)
	wrong := [32]byte{1}
	bad, err := New(Config{Home: home, FileConfig: fc, StoreKey: &wrong})
	if err != nil {
		t.Fatal(err)
	}
	err = bad.Run(context.Background())
	if !errors.Is(err, store.ErrWrongKey) {
		t.Fatalf("run with the wrong key: %v", err)
	}
	// The right key still opens it, with the namespace in it.
	n2 := startNode(t, "a again", home)
	l, err := n2.client.Namespaces(context.Background())
	if err != nil || len(l) != 1 {
		t.Fatalf("after a refused wrong key: %v, %d namespaces", err, len(l))
	}
}

var _ = p2p.Topic
