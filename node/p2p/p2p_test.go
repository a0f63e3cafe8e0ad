package p2p

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/fleetbox/fleetbox/internal/poll"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide workers started once by libp2p and quic-go dependencies.
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// testLogger logs to the test output when FLEETBOX_TEST_LOG is set.
func testLogger(t testing.TB, id byte) *slog.Logger {
	if os.Getenv("FLEETBOX_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id)
}

func key(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(sha256.New().Sum([]byte{seed})[:32])
}

type testNode struct {
	net  *Network
	eng  *fakeEngine
	reg  *prometheus.Registry
	stop func()
}

func startNode(t testing.TB, id byte, eng *fakeEngine) *testNode {
	t.Helper()
	return startNodeHB(t, id, eng, 200*time.Millisecond)
}

func startNodeHB(t testing.TB, id byte, eng *fakeEngine, hb time.Duration) *testNode {
	t.Helper()
	reg := prometheus.NewRegistry()
	n, err := New(Config{
		Identity:          key(100 + id),
		Engine:            eng,
		HeartbeatInterval: hb,
		SyncTimeout:       20 * time.Second,
		Registerer:        reg,
		Logger:            testLogger(t, id),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	}
	tn := &testNode{net: n, eng: eng, reg: reg}
	tn.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run returned %v", err)
		}
	}
	t.Cleanup(func() {
		if tn.stop != nil {
			tn.stop()
			tn.stop = nil
		}
	})
	return tn
}

func connect(t testing.TB, a, b *testNode) {
	t.Helper()
	if err := a.net.Connect(context.Background(), b.net.Addrs()[0]); err != nil {
		t.Fatal(err)
	}
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, what, cond)
}

var testNS = NamespaceID{1, 2, 3}

func TestGossipSyncAndCatchUp(t *testing.T) {
	admin := key(1)
	pub := admin.Public().(ed25519.PublicKey)
	nodes := make([]*testNode, 3)
	for i := range nodes {
		nodes[i] = startNode(t, byte(i), newFakeEngine(testNS, true, pub))
	}
	// History before anyone connects: only a sync can carry it.
	for i := range 50 {
		nodes[0].eng.author(admin, fmt.Sprint("early ", i))
	}
	connect(t, nodes[1], nodes[0])
	connect(t, nodes[2], nodes[1])
	for _, n := range nodes {
		eventually(t, "initial sync", func() bool { return n.eng.count() == 50 })
	}
	// Live ops spread by gossip (or by heartbeat-triggered sync when lost).
	w := nodes[2].eng.author(admin, "live")
	if err := nodes[2].net.PublishOp(context.Background(), testNS, w); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		eventually(t, "live op", func() bool { return n.eng.count() == 51 })
	}

	// Cut node 2 off, write on node 0, reconnect: node 2 catches up.
	cut := nodes[2]
	for _, o := range nodes[:2] {
		o.net.Block(cut.net.ID())
		cut.net.Block(o.net.ID())
	}
	eventually(t, "disconnect", func() bool { return len(cut.net.Peers()) == 0 })
	for i := range 20 {
		w := nodes[0].eng.author(admin, fmt.Sprint("while cut ", i))
		if err := nodes[0].net.PublishOp(context.Background(), testNS, w); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "node 1 sees ops", func() bool { return nodes[1].eng.count() == 71 })
	if got := cut.eng.count(); got != 51 {
		t.Fatalf("cut-off node has %d ops, want 51", got)
	}
	// A blocked peer cannot dial in.
	if err := cut.net.Connect(context.Background(), nodes[0].net.Addrs()[0]); err == nil {
		t.Fatal("blocked peer connected")
	}
	for _, o := range nodes[:2] {
		o.net.Unblock(cut.net.ID())
		cut.net.Unblock(o.net.ID())
	}
	connect(t, cut, nodes[1])
	eventually(t, "catch-up", func() bool { return cut.eng.count() == 71 })
	for _, n := range nodes {
		if n.eng.headsString() != nodes[0].eng.headsString() {
			t.Fatalf("heads differ: %s vs %s", n.eng.headsString(), nodes[0].eng.headsString())
		}
	}

	// A late joiner that is connected before it joins syncs on join.
	late := startNode(t, 9, newFakeEngine(testNS, false, pub))
	connect(t, late, nodes[0])
	late.eng.mu.Lock()
	late.eng.joined = true
	late.eng.mu.Unlock()
	if err := late.net.Join(testNS); err != nil {
		t.Fatal(err)
	}
	eventually(t, "late joiner", func() bool { return late.eng.count() == 71 })
}

// twoInTopic starts two nodes that share testNS's topic, both allowing
// admin's ops.
func twoInTopic(t *testing.T) (a, b *testNode, admin ed25519.PrivateKey) {
	admin = key(1)
	pub := admin.Public().(ed25519.PublicKey)
	a = startNode(t, 1, newFakeEngine(testNS, true, pub))
	b = startNode(t, 2, newFakeEngine(testNS, true, pub))
	connect(t, a, b)
	eventually(t, "topic peers", func() bool { return len(a.net.TopicPeers(testNS)) == 1 && len(b.net.TopicPeers(testNS)) == 1 })
	return a, b, admin
}

func TestHeartbeatTriggersSync(t *testing.T) {
	a, b, admin := twoInTopic(t)
	// Written without publishing: only b's heartbeat tells a about it.
	for i := range 5 {
		b.eng.author(admin, fmt.Sprint(i))
	}
	eventually(t, "heartbeat sync", func() bool { return a.eng.count() == 5 })
}

// TestHeartbeatOfPendingHeadTriggersSync: a holds op y but not its parent
// x (its sync came before anyone had x); b has both, and its heartbeat names
// y. A head that is only pending here still means the peer has ops this node
// lacks, so a syncs and y applies.
func TestHeartbeatOfPendingHeadTriggersSync(t *testing.T) {
	a, b, admin := twoInTopic(t)
	x := fakeOp(testNS, nil, admin, []byte("x"))
	y := fakeOp(testNS, []OpID{sha256.Sum256(x)}, admin, []byte("y"))
	// Applied directly, not published: only b's heartbeat can tell a.
	if res, err := a.eng.Apply(context.Background(), testNS, [][]byte{y}); err != nil || res.Pending != 1 {
		t.Fatalf("y on a: %+v %v, want it pending", res, err)
	}
	if res, err := b.eng.Apply(context.Background(), testNS, [][]byte{x, y}); err != nil || res.Applied != 2 {
		t.Fatalf("x, y on b: %+v %v", res, err)
	}
	eventually(t, "a fetched x and applied y", func() bool { return a.eng.count() == 2 })
}

// attacker is a bare gossipsub peer with no validators, so it can publish
// anything on a namespace topic.
type attacker struct {
	topic *pubsub.Topic
	close func()
}

func newAttacker(t *testing.T, victim *testNode) *attacker {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithMaxMessageSize(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(Topic(testNS))
	if err != nil {
		t.Fatal(err)
	}
	ai, _ := peer.AddrInfoFromString(victim.net.Addrs()[0])
	if err := h.Connect(ctx, *ai); err != nil {
		t.Fatal(err)
	}
	a := &attacker{topic: topic, close: func() { _ = topic.Close(); cancel(); _ = h.Close() }}
	t.Cleanup(a.close)
	eventually(t, "attacker in topic", func() bool { return len(topic.ListPeers()) == 1 })
	return a
}

func TestGossipRefusals(t *testing.T) {
	admin, outsider := key(1), key(2)
	victim := startNode(t, 1, newFakeEngine(testNS, true, admin.Public().(ed25519.PublicKey)))
	victim.eng.author(admin, "genesis")
	heads := victim.eng.headsString()
	att := newAttacker(t, victim)

	good := fakeOp(testNS, victim.eng.sortedHeadsLocked(), admin, []byte("x"))
	forged := append([]byte(nil), good...)
	forged[len(forged)-1] ^= 1
	oversize := fakeOp(testNS, nil, admin, make([]byte, MaxEnvelopeSize))
	env := func(e *Envelope) []byte {
		b, err := encMode.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string]struct {
		data   []byte
		metric string // kind label counted as rejected
	}{
		"malformed":     {[]byte{0xa1, 0x01}, "malformed"},
		"not cbor":      {[]byte("hello"), "malformed"},
		"oversize":      {env(NewOpEnvelope(testNS, oversize)), "malformed"},
		"forged":        {env(NewOpEnvelope(testNS, forged)), "op"},
		"non-member":    {env(NewOpEnvelope(testNS, fakeOp(testNS, victim.eng.sortedHeadsLocked(), outsider, []byte("y")))), "op"},
		"wrong ns":      {env(NewOpEnvelope(NamespaceID{9}, good)), "op"},
		"op with heads": {env(&Envelope{Kind: KindOp, Namespace: testNS[:], Op: good, Heads: [][]byte{make([]byte, 32)}}), "malformed"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			before := counterValue(victim.net.metrics.gossip.WithLabelValues(c.metric, "reject"))
			if err := att.topic.Publish(context.Background(), c.data); err != nil {
				t.Fatal(err)
			}
			eventually(t, "rejection", func() bool {
				return counterValue(victim.net.metrics.gossip.WithLabelValues(c.metric, "reject")) > before
			})
			if got := victim.eng.headsString(); got != heads {
				t.Fatalf("state changed: %s -> %s", heads, got)
			}
		})
	}
	// A good op from the same peer still goes through.
	if err := att.topic.Publish(context.Background(), env(NewOpEnvelope(testNS, good))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "good op applied", func() bool { return victim.eng.count() == 2 })
}

func (e *fakeEngine) sortedHeadsLocked() []OpID {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sortedHeads()
}

func TestSyncRefusesUnknownNamespace(t *testing.T) {
	a := startNode(t, 1, newFakeEngine(testNS, true))
	b := startNode(t, 2, newFakeEngine(testNS, false))
	connect(t, a, b)
	_, err := a.net.SyncFrom(context.Background(), testNS, b.net.ID())
	if !errors.Is(err, ErrSyncRefused) {
		t.Fatalf("sync from a non-member: %v, want ErrSyncRefused", err)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// BenchmarkSync10k measures the p2p layer alone (fake engine, Ed25519
// verification included): a fresh node fetches 10,000 ops from a peer.
func BenchmarkSync10k(b *testing.B) {
	admin := key(1)
	pub := admin.Public().(ed25519.PublicKey)
	src := startNode(b, 1, newFakeEngine(testNS, true, pub))
	for i := range 10000 {
		src.eng.author(admin, fmt.Sprint("op ", i))
	}
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		dst := startNode(b, byte(10+i%200), newFakeEngine(testNS, false, pub))
		// Not joined yet, so the connect does not trigger a sync by itself.
		connect(b, dst, src)
		dst.eng.mu.Lock()
		dst.eng.joined = true
		dst.eng.mu.Unlock()
		b.StartTimer()
		start := time.Now()
		st, err := dst.net.SyncFrom(context.Background(), testNS, src.net.ID())
		took := time.Since(start)
		b.StopTimer()
		if err != nil || st.Applied != 10000 {
			b.Fatalf("sync: %v, applied %d", err, st.Applied)
		}
		b.ReportMetric(took.Seconds(), "s/sync10k")
		dst.stop()
		dst.stop = nil
		b.StartTimer()
	}
}

func TestPendingParentsTriggerSync(t *testing.T) {
	admin := key(1)
	pub := admin.Public().(ed25519.PublicKey)
	// Heartbeats far apart: only the pending-parents trigger can help.
	a := startNodeHB(t, 1, newFakeEngine(testNS, true, pub), time.Hour)
	b := startNodeHB(t, 2, newFakeEngine(testNS, true, pub), time.Hour)
	connect(t, a, b)
	eventually(t, "topic peers", func() bool { return len(a.net.TopicPeers(testNS)) == 1 && len(b.net.TopicPeers(testNS)) == 1 })
	a.eng.author(admin, "never gossiped")
	child := a.eng.author(admin, "gossiped")
	// Gossip published the instant two peers meet can be lost (gossipsub
	// does not retransmit), so the
	// child is published until it lands; b then has it pending and fetches
	// the parent it never saw gossiped.
	eventually(t, "parent fetched", func() bool {
		if b.eng.count() == 2 {
			return true
		}
		if err := a.net.PublishOp(context.Background(), testNS, child); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		return false
	})
}
