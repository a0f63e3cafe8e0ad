package node

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
)

// history starts a node with a namespace of about count ops: one member and
// count-2 capability changes of it (sealed group ops, the common kind).
// It returns the node, the namespace and every op's wire bytes in order.
func history(b *testing.B, count int) (*tnode, governance.NamespaceID) {
	b.Helper()
	ctx := context.Background()
	src := startNode(b, "src", newHome(b))
	created, err := src.client.CreateNamespace(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	_, m := outsider(b)
	if _, err := src.eng.AddMember(ctx, ns, ns.Root(), m, governance.RoleMember, 0); err != nil {
		b.Fatal(err)
	}
	for i := 0; ; i++ {
		_, n, _ := src.eng.Heads(ns)
		if int(n) >= count {
			break
		}
		if _, err := src.eng.SetMemberCapabilities(ctx, ns, ns.Root(), m.Signing, governance.Capabilities(i%256)); err != nil {
			b.Fatal(err)
		}
	}
	return src, ns
}

// freshNode starts a node that syncs with fsync on (as in production).
func freshNode(b *testing.B, name string) *tnode {
	b.Helper()
	home := newHome(b)
	fc, _ := LoadFileConfig(home)
	n, err := New(Config{Home: home, FileConfig: fc, StoreKey: &testStoreKey, Logger: testLogger(name)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	<-n.Ready()
	tn := &tnode{Node: n, home: home, client: &Client{BaseURL: n.AdminURL(), Token: n.Token()}}
	var once sync.Once
	tn.stop = func() { once.Do(func() { cancel(); <-done }) }
	b.Cleanup(tn.stop)
	return tn
}

// BenchmarkSync10k: a fresh node fetches and applies a 10,000-op namespace
// from a peer on loopback (stream, batches, one store transaction and
// parallel signature checks per batch). Target: under 3 s.
func BenchmarkSync10k(b *testing.B) {
	ops := benchOps()
	src, ns := history(b, ops)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		dst := freshNode(b, fmt.Sprint("dst", i))
		if _, err := dst.eng.JoinNamespace(ns); err != nil { // the engine only: no topic, no automatic sync
			b.Fatal(err)
		}
		connect(b, dst, src)
		b.StartTimer()
		start := time.Now()
		st, err := dst.net.SyncFrom(context.Background(), p2p.NamespaceID(ns), src.net.ID())
		took := time.Since(start)
		b.StopTimer()
		if err != nil || st.Applied != ops {
			b.Fatalf("sync: %v; applied %d of %d", err, st.Applied, ops)
		}
		b.ReportMetric(took.Seconds(), "s/sync10k")
		b.ReportMetric(float64(ops)/took.Seconds(), "ops/s")
		dst.stop()
		b.StartTimer()
	}
}

// BenchmarkGossipApply: ops published one by one on one node and applied by
// another through the topic validator (one store transaction with fsync per
// op): ops applied per second on the receiving node.
func BenchmarkGossipApply(b *testing.B) {
	ctx := context.Background()
	src, ns := history(b, 2)
	dst := freshNode(b, "dst")
	connect(b, dst, src)
	if _, err := dst.client.JoinNamespace(ctx, ns.String()); err != nil {
		b.Fatal(err)
	}
	waitFor(b, "topic mesh", func() bool { return len(src.net.TopicPeers(p2p.NamespaceID(ns))) == 1 })
	_, start, _ := src.eng.Heads(ns)
	waitFor(b, "initial sync", func() bool { _, n, _ := dst.eng.Heads(ns); return n == start })
	ms, _ := src.eng.Members(ns, ns.Root())
	var member governance.PublicKey
	for _, m := range ms {
		if m.Role == governance.RoleMember {
			member = m.Member
		}
	}
	b.ResetTimer()
	t0 := time.Now()
	for i := range b.N {
		if _, err := src.SetCapabilities(ctx, ns, ns.Root(), member, governance.Capabilities(i%256)); err != nil {
			b.Fatal(err)
		}
	}
	want := start + uint64(b.N)
	waitFor(b, "all ops applied", func() bool { _, n, _ := dst.eng.Heads(ns); return n >= want })
	took := time.Since(t0)
	b.ReportMetric(float64(b.N)/took.Seconds(), "ops/s")
}

// benchOps is 10,000 unless FLEETBOX_BENCH_OPS says otherwise.
func benchOps() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("FLEETBOX_BENCH_OPS"), &n); err == nil && n > 0 {
		return n
	}
	return 10000
}
