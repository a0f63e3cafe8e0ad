package governance

import (
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/store"
)

// history builds a namespace on a fresh node with n ops after the member
// joins: the creator adds member, then authors n-2 capability changes.
func history(b *testing.B, n int) (src *testNode, member *testNode, ns NamespaceID, wires [][]byte) {
	b.Helper()
	src, member = newNode(b), newNode(b)
	ns, _, err := src.e.CreateNamespace(bg)
	ok(b, err)
	mk := mustT[MemberKeys](b)(member.e.JoinNamespace(ns))
	mustT[[][]byte](b)(src.e.AddMember(bg, ns, ns.Root(), mk, RoleMember, 0))
	for i := 0; len(src.e.spaces[ns].d.nodes) < n; i++ {
		mustT[[][]byte](b)(src.e.SetMemberCapabilities(bg, ns, ns.Root(), mk.Signing, Capabilities(i%512)))
	}
	ok(b, src.e.OpsMissing(ns, nil, func(w []byte) error { wires = append(wires, w); return nil }))
	return src, member, ns, wires
}

// BenchmarkApplyOps measures ops applied per second on one engine: every op
// is decoded, signature-checked, authorized, decrypted, applied and stored
// (in batches of 256, as sync frames deliver them; fdatasync off).
func BenchmarkApplyOps(b *testing.B) {
	_, member, ns, wires := history(b, 2000)
	b.ResetTimer()
	var applied int
	for range b.N {
		b.StopTimer()
		n := freshAs(b, member, ns)
		b.StartTimer()
		for i := 0; i < len(wires); i += 256 {
			res, err := n.e.Apply(bg, ns, wires[i:min(i+256, len(wires))])
			ok(b, err)
			applied += res.Applied
		}
	}
	b.ReportMetric(float64(applied)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkSync10k measures the engine side of a fresh member syncing 10,000
// ops: the source walks OpsMissing from the fresh node's heads, the fresh
// node applies the ops in frames of 512 and stores them with fdatasync on
// (one transaction per frame). Network time is not included; node/p2p
// measures that.
func BenchmarkSync10k(b *testing.B) {
	src, member, ns, _ := history(b, 10000)
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		b.StopTimer()
		n := freshAs(b, member, ns)
		n.st.Close()
		n.openSync(b)
		b.StartTimer()
		start := time.Now()
		heads, _, _ := n.e.Heads(ns)
		var frame [][]byte
		flush := func() {
			res, err := n.e.Apply(bg, ns, frame)
			ok(b, err)
			if res.Refused > 0 {
				b.Fatal(res.FirstRefusal)
			}
			frame = frame[:0]
		}
		ok(b, src.e.OpsMissing(ns, heads, func(w []byte) error {
			frame = append(frame, w)
			if len(frame) == 512 {
				flush()
			}
			return nil
		}))
		flush()
		total += time.Since(start)
		_, count, _ := n.e.Heads(ns)
		if count != 10000 {
			b.Fatalf("synced %d ops", count)
		}
		if info := mustT[*NamespaceInfo](b)(n.e.Namespace(ns)); !info.Complete {
			b.Fatal("fresh member's state incomplete after sync")
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/10k-sync")
	b.ReportMetric(10000*float64(b.N)/total.Seconds(), "ops/s")
}

// freshAs returns a new, empty node that holds member's namespace identity
// for ns (as if member's node had been wiped before its first sync).
func freshAs(b *testing.B, member *testNode, ns NamespaceID) *testNode {
	n := newNode(b)
	id := mustT[*space](b)(member.e.space(ns)).id
	ok(b, n.st.Update(func(tx *store.Tx) error { return putNamespace(tx, ns, id) }))
	n.restart(b)
	return n
}

// BenchmarkSyncConcurrent measures the engine side of a fresh member syncing
// a history written concurrently by three admins who merge each other's ops
// often (the slow path: ops whose parents are not the receiver's heads are
// authorized against a replay of their ancestors).
func BenchmarkSyncConcurrent(b *testing.B) {
	const size = 3000
	nodes := []*testNode{newNode(b), newNode(b), newNode(b)}
	ns, _, err := nodes[0].e.CreateNamespace(bg)
	ok(b, err)
	for _, n := range nodes[1:] {
		k := mustT[MemberKeys](b)(n.e.JoinNamespace(ns))
		mustT[[][]byte](b)(nodes[0].e.AddMember(bg, ns, ns.Root(), k, RoleAdmin, 0))
	}
	member := newNode(b)
	mk := mustT[MemberKeys](b)(member.e.JoinNamespace(ns))
	mustT[[][]byte](b)(nodes[0].e.AddMember(bg, ns, ns.Root(), mk, RoleMember, 0))
	for _, n := range nodes[1:] {
		n.syncFrom(b, nodes[0], ns)
	}
	// Each round every admin authors one op, then each pulls from one other.
	for i := 0; ; i++ {
		for j, n := range nodes {
			mustT[[][]byte](b)(n.e.SetMemberCapabilities(bg, ns, ns.Root(), mk.Signing, Capabilities((i+j)%512)))
		}
		for j, n := range nodes {
			n.syncFrom(b, nodes[(j+1+i%2)%3], ns)
		}
		if _, c, _ := nodes[0].e.Heads(ns); c >= size {
			break
		}
	}
	_, count, _ := nodes[0].e.Heads(ns)
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		b.StopTimer()
		n := freshAs(b, member, ns)
		b.StartTimer()
		start := time.Now()
		var frame [][]byte
		ok(b, nodes[0].e.OpsMissing(ns, nil, func(w []byte) error { frame = append(frame, w); return nil }))
		for i := 0; i < len(frame); i += 512 {
			res, err := n.e.Apply(bg, ns, frame[i:min(i+512, len(frame))])
			ok(b, err)
			if res.Refused > 0 {
				b.Fatal(res.FirstRefusal)
			}
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(count), "ops")
	b.ReportMetric(float64(count)*float64(b.N)/total.Seconds(), "ops/s")
}

// BenchmarkJoinerGetsKeys measures a fresh non-member that has synced a
// 10,000-op history as skeletons and then receives its KeyDelivery: every
// sealed op is decrypted and every provisional op re-checked.
func BenchmarkJoinerGetsKeys(b *testing.B) {
	src, _, ns, _ := history(b, 10000)
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		b.StopTimer()
		var wires [][]byte
		ok(b, src.e.OpsMissing(ns, nil, func(w []byte) error { wires = append(wires, w); return nil }))
		j := newNode(b)
		jk := mustT[MemberKeys](b)(j.e.JoinNamespace(ns))
		for i := 0; i < len(wires); i += 512 {
			j.apply(b, ns, wires[i:min(i+512, len(wires))]...)
		}
		add := mustT[[][]byte](b)(src.e.AddMember(bg, ns, ns.Root(), jk, RoleReadOnly, 0))
		b.StartTimer()
		start := time.Now()
		res := j.apply(b, ns, add...)
		total += time.Since(start)
		if res.Applied != 2 {
			b.Fatalf("%+v", res)
		}
		if info := mustT[*NamespaceInfo](b)(j.e.Namespace(ns)); !info.Complete {
			b.Fatal("joiner incomplete after its keys arrived")
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/rebuild")
}
