package node

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
)

// orphanEnvelopes signs n ops of ns by fresh keys, each naming a parent
// that does not exist: what anyone connected to the topic can make.
func orphanEnvelopes(t *testing.T, ns governance.NamespaceID, n int) [][]byte {
	t.Helper()
	out := make([][]byte, 0, n)
	for range n {
		sk, _ := outsider(t)
		var fake governance.OpID
		rand.Read(fake[:])
		env, err := p2p.NewOpEnvelope(p2p.NamespaceID(ns), forgeGroupCreated(t, ns, []governance.OpID{fake}, sk, 1)).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, env)
	}
	return out
}

// floodLimits are the pending-queue limits of the flood test: small, so
// that the flood fills them quickly; the property does not depend on size.
var floodLimits = governance.PendingLimits{MaxPending: 400, MaxPendingBytes: 2 << 20}

// TestOutsiderFloodDoesNotSplitTheNamespace: two outsiders, each connected
// to a different honest node, flood it with signed ops naming parents that
// do not exist while three members write. Before, those ops were accepted
// into the pending queue and forwarded; every queue filled, honest nodes
// refused each other's forwards as pending_full with a Reject, graylisted
// one another, and the members never converged.
func TestOutsiderFloodDoesNotSplitTheNamespace(t *testing.T) {
	ctx := context.Background()
	nodes, ns := setupWith(t, 3, func(c *Config) { c.Pending = floodLimits })
	floodA := rawPeer(t, ns, nodes[0])
	floodB := rawPeer(t, ns, nodes[2])

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent [2]int
	for i, topic := range []*pubsub.Topic{floodA, floodB} {
		envs := orphanEnvelopes(t, ns, 1500)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, e := range envs {
				select {
				case <-stop:
					return
				default:
				}
				if topic.Publish(ctx, e) == nil {
					sent[i]++
				}
			}
		}()
	}

	// The members write while the flood runs.
	start := time.Now()
	var wwg sync.WaitGroup
	for _, n := range nodes {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for range 8 {
				if _, err := n.client.CreateGroup(ctx, ns.String(), ""); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wwg.Wait()
	waitConverged(t, "members' writes during the flood", ns, nodes...)
	took := time.Since(start)
	close(stop)
	wg.Wait()
	t.Logf("24 member writes converged %v after the first, under a flood of %d + %d orphan ops", took.Round(time.Millisecond), sent[0], sent[1])

	for i, n := range nodes {
		if g := gauge(t, n.reg, "fleetbox_p2p_graylisted_peers"); g != 0 {
			t.Errorf("node %d graylists %v peers", i, g)
		}
		ops, bytes, err := n.eng.PendingUse(ns)
		if err != nil {
			t.Fatal(err)
		}
		// The stated bound: the outsiders' share of the queue, a quarter of
		// MaxPendingBytes (512 KiB here; 4 MiB per namespace by default).
		if bytes > floodLimits.MaxPendingBytes/4 {
			t.Errorf("node %d holds %d pending ops in %d bytes, over the bound %d", i, ops, bytes, floodLimits.MaxPendingBytes/4)
		}
		t.Logf("node %d: %d ops pending, %d bytes", i, ops, bytes)
	}
	// Pending ops are not forwarded: the middle node, which no outsider
	// reaches, holds none.
	if ops, _, _ := nodes[1].eng.PendingUse(ns); ops != 0 {
		t.Errorf("the middle node holds %d pending ops: orphans were forwarded", ops)
	}
	// And the namespace still takes writes everywhere.
	if _, err := nodes[1].client.CreateGroup(ctx, ns.String(), ""); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, "a write after the flood", ns, nodes...)
}
