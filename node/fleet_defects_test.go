package node

import (
	"path/filepath"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/selfpurge"
)

// An eviction is acted on once, although gossip and sync both apply ops and
// report the same standing (before, each queued the self-purge).
func TestEvictionPurgesOnce(t *testing.T) {
	f := &fleetState{admitted: map[governance.NamespaceID]bool{}, groups: map[governance.NamespaceID][]governance.GroupID{}}
	ns := governance.NamespaceID{1}
	sub := governance.GroupID{2}
	if got := f.purgeTargets(ns, governance.TeeStatus{Admitted: true, Member: true, Groups: []governance.GroupID{ns.Root(), sub}}); len(got) != 0 {
		t.Fatalf("admitted: %v", got)
	}
	// Removed from the subgroup, seen by two paths.
	left := governance.TeeStatus{Admitted: true, Member: true, Groups: []governance.GroupID{ns.Root()}}
	if got := f.purgeTargets(ns, left); len(got) != 1 || got[0] != (selfpurge.Target{Namespace: ns, Group: sub}) {
		t.Fatalf("subgroup removal: %v", got)
	}
	if got := f.purgeTargets(ns, left); len(got) != 0 {
		t.Fatalf("subgroup removal seen again: %v", got)
	}
	// Evicted, seen by two paths.
	evicted := governance.TeeStatus{Admitted: true}
	if got := f.purgeTargets(ns, evicted); len(got) != 1 || got[0] != (selfpurge.Target{Namespace: ns}) {
		t.Fatalf("eviction: %v", got)
	}
	if got := f.purgeTargets(ns, evicted); len(got) != 0 {
		t.Fatalf("eviction seen again queued %v", got)
	}
}

// node init refuses the admin address node run would refuse (before, it
// wrote it into config.json and the node failed only at its next start).
func TestInitRefusesNonLoopbackAdminAddr(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:4502", "192.0.2.1:4502", "[::]:4502", "example.com:4502"} {
		fc := DefaultFileConfig()
		fc.AdminAddr = addr
		if _, err := Init(filepath.Join(t.TempDir(), "home"), fc); err == nil {
			t.Errorf("Init with admin address %s succeeded", addr)
		}
	}
	fc := DefaultFileConfig()
	fc.AdminAddr = "127.0.0.1:4502"
	if _, err := Init(filepath.Join(t.TempDir(), "home"), fc); err != nil {
		t.Fatal(err)
	}
}

// An announcer whose namespace identity cannot be found is not registered:
// before, the entry stayed, FleetStatus said Announcing, and nothing ran.
func TestStartAnnouncerWithoutIdentity(t *testing.T) {
	n := startNodeWith(t, "noid", newHome(t), func(c *Config) {
		c.Fleet.QuoteSource = &attest.MockSource{}
	})
	ns := governance.NamespaceID{0xab}
	if err := n.fleet.startAnnouncer(t.Context(), ns); err == nil {
		t.Fatal("startAnnouncer without an identity succeeded")
	}
	n.fleet.mu.Lock()
	_, announcing := n.fleet.joining[ns]
	n.fleet.mu.Unlock()
	if announcing {
		t.Fatal("the namespace is registered as announcing with no announcer")
	}
}
