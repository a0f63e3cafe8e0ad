package node

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/contexts/apptest"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
)

// kvNamespace starts a member (fsync as given) with a namespace and a kv
// context.
func kvNamespace(b *testing.B, tb *fleetTestbed, noSync bool) (*tnode, governance.NamespaceID, governance.ContextID) {
	b.Helper()
	ctx := context.Background()
	a := startNodeWith(b, "a", newHome(b), func(c *Config) { tb.fleetConfig(nil)(c); c.NoSync = noSync })
	created, err := a.client.CreateNamespace(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	if _, err := a.client.SetPolicy(ctx, created.ID, tb.policy()); err != nil {
		b.Fatal(err)
	}
	app, err := a.ctxs.Install(ctx, apptest.Build(b, apptest.KV))
	if err != nil {
		b.Fatal(err)
	}
	res, err := a.ctxs.Create(ctx, ns, ns.Root(), app.ID, nil)
	if err != nil {
		b.Fatal(err)
	}
	a.publish(ctx, ns, res.Wires)
	return a, ns, res.Context
}

func appliedOps(n *tnode, ns governance.NamespaceID, c governance.ContextID) uint64 {
	_, ops, _ := n.ctxs.Root(ns, c)
	return ops
}

// BenchmarkReplicaLag: a member calls (executes, signs, seals, persists
// with fsync, gossips) and a ReadOnlyTee replica on loopback applies the
// op to its context state; the lag is from the start of the call on the
// member to the state change on the replica, one call at a time. Target:
// p99 under 500 ms.
func BenchmarkReplicaLag(b *testing.B) {
	ctx := context.Background()
	tb := newFleetTestbed(b)
	a, ns, c := kvNamespace(b, tb, false)
	r := startNodeWith(b, "replica", newHome(b), func(cfg *Config) { tb.fleetConfig(tb.source(b, tb.good))(cfg); cfg.NoSync = false })
	connect(b, r, a)
	if _, err := r.client.FleetJoin(ctx, ns.String()); err != nil {
		b.Fatal(err)
	}
	waitFor(b, "replica admitted", func() bool {
		st, _ := r.client.FleetStatus(ctx, ns.String())
		return st != nil && st.Admitted && st.HasGroupKey
	})
	waitFor(b, "replica has the context", func() bool { return appliedOps(r, ns, c) == appliedOps(a, ns, c) })
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		want := appliedOps(a, ns, c) + 1
		t0 := time.Now()
		res, err := a.ctxs.Call(ctx, ns, c, "set", fmt.Appendf(nil, `{"key":"k%d","value":"v"}`, i))
		if err != nil {
			b.Fatal(err)
		}
		a.publish(ctx, ns, res.Wires)
		for appliedOps(r, ns, c) < want {
			if time.Since(t0) > time.Minute {
				b.Fatal("the replica never applied the call")
			}
			time.Sleep(100 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	at := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.5), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// BenchmarkCatchUp10k: a fresh member (fsync on) joins a namespace whose
// kv context took 10,000 calls and catches up its whole state from a peer
// on loopback: governance sync of the ops, then the context ops applied.
// Target: under 10 s.
func BenchmarkCatchUp10k(b *testing.B) {
	ctx := context.Background()
	tb := newFleetTestbed(b)
	calls := benchOps()
	a, ns, c := kvNamespace(b, tb, true)
	for i := range calls {
		if _, err := a.ctxs.Call(ctx, ns, c, "set", fmt.Appendf(nil, `{"key":"k%d","value":"v%d"}`, i%2000, i)); err != nil {
			b.Fatal(err)
		}
	}
	wantOps := appliedOps(a, ns, c)
	wantRoot, _, _ := a.ctxs.Root(ns, c)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		f := freshNode(b, fmt.Sprint("fresh", i))
		keys, err := f.eng.JoinNamespace(ns)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.AddMember(ctx, ns, ns.Root(), keys, governance.RoleMember, 0); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		connect(b, f, a)
		if err := f.net.Join(p2p.NamespaceID(ns)); err != nil {
			b.Fatal(err)
		}
		for appliedOps(f, ns, c) < wantOps {
			if time.Since(t0) > 5*time.Minute {
				b.Fatal("the fresh node never caught up")
			}
			time.Sleep(time.Millisecond)
		}
		took := time.Since(t0)
		b.StopTimer()
		if root, _, _ := f.ctxs.Root(ns, c); root != wantRoot {
			b.Fatal("the fresh node's state root differs")
		}
		b.ReportMetric(took.Seconds(), "s/catchup")
		b.ReportMetric(float64(calls)/took.Seconds(), "calls/s")
		f.stop()
		b.StartTimer()
	}
}
