package node

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/selfpurge"
	"github.com/fleetbox/fleetbox/node/store"
)

// The self-purge of an evicted replica: where a namespace lives in the
// store, the start-up reconcile sweep, and what an applied op makes this
// node purge.

// purgeRows tells the self-purge where a namespace lives in the store.
type purgeRows struct {
	eng func() *governance.Engine

	mu   sync.Mutex // guards keys
	keys map[selfpurge.Target][]governance.KeyID
}

func (r *purgeRows) Delete(tx *store.Tx, t selfpurge.Target) (int, error) {
	ns := governance.NamespaceID(t.Namespace)
	if t.Whole() {
		n, err := governance.DeleteNamespaceRows(tx, ns)
		if err != nil {
			return n, err
		}
		if err := tx.Delete(store.Config, fleetJoinKey(ns)); err != nil {
			return n, err
		}
		if err := setEvicted(tx, ns, true); err != nil {
			return n, err
		}
		return n + 1, nil
	}
	r.mu.Lock()
	ids := r.keys[t]
	delete(r.keys, t)
	r.mu.Unlock()
	return governance.DeleteGroupKeyRows(tx, ns, ids)
}

func (r *purgeRows) Decide(tx *store.Tx, m selfpurge.Marker) (selfpurge.Decision, error) {
	ns := governance.NamespaceID(m.Target.Namespace)
	has, err := governance.HasNamespaceRows(tx, ns)
	if err != nil {
		return selfpurge.Undecided, err
	}
	if !has {
		return selfpurge.AlreadyPurged, nil
	}
	st, err := r.eng().TeeStatus(ns)
	if err != nil {
		return selfpurge.Undecided, err
	}
	if st.Incomplete {
		return selfpurge.Undecided, nil
	}
	if m.Target.Whole() {
		if st.Member {
			return selfpurge.Readmitted, nil
		}
		return selfpurge.StillEvicted, nil
	}
	for _, g := range st.Groups {
		if g == governance.GroupID(m.Target.Group) {
			return selfpurge.Readmitted, nil
		}
	}
	return selfpurge.StillEvicted, nil
}

// reconcile runs the self-purge sweep at start-up, and purges fleet-joined
// namespaces this node was evicted from while it was not running (or whose
// purge event was dropped).
func (f *fleetState) reconcile(ctx context.Context) error {
	rep, err := f.purger.Reconcile(ctx)
	if rep != (selfpurge.Report{}) {
		f.d.log.Info("self-purge reconcile", "completed", rep.Completed, "staleCleared", rep.StaleCleared, "kept", rep.Kept)
	}
	if err != nil {
		f.d.log.Warn("self-purge reconcile left work", "err", err)
	}
	for _, ns := range f.joined() {
		st, err := f.d.eng.TeeStatus(ns)
		if err != nil {
			continue
		}
		if st.Admitted && !st.Member && !st.Incomplete {
			if perr := f.purger.Purge(ctx, selfpurge.Target{Namespace: ns}, f.me(ns)); perr != nil {
				f.d.log.Error("self-purge at start-up", "namespace", ns.String(), "err", perr)
			}
			continue
		}
		f.remember(ns, st)
	}
	return nil
}

func (f *fleetState) me(ns governance.NamespaceID) [32]byte {
	keys, err := f.d.eng.Identity(ns)
	if err != nil {
		return [32]byte{}
	}
	return keys.Signing
}

// purgeTargets decides, from the standing st just applied, what to purge,
// and records the standing so that the next call sees it. Gossip and sync
// both apply ops and call onApplied, so the eviction is acted on once: the
// namespace leaves f.admitted when its purge is queued (before, both paths
// queued the same purge).
func (f *fleetState) purgeTargets(ns governance.NamespaceID, st governance.TeeStatus) []selfpurge.Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.admitted[ns]
	prevGroups := f.groups[ns]
	f.groups[ns] = st.Groups
	switch {
	case st.Admitted && st.Member:
		f.admitted[ns] = true
	case was && st.Admitted:
		delete(f.admitted, ns)
		return []selfpurge.Target{{Namespace: ns}}
	}
	var targets []selfpurge.Target
	if st.Member {
		for _, g := range prevGroups {
			if g != ns.Root() && !containsGroup(st.Groups, g) {
				targets = append(targets, selfpurge.Target{Namespace: ns, Group: g})
			}
		}
	}
	return targets
}

func containsNS(list []governance.NamespaceID, ns governance.NamespaceID) bool {
	for _, x := range list {
		if x == ns {
			return true
		}
	}
	return false
}

func containsGroup(gs []governance.GroupID, g governance.GroupID) bool {
	for _, x := range gs {
		if x == g {
			return true
		}
	}
	return false
}

// runPurges executes purge events until ctx ends.
func (f *fleetState) runPurges(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-f.events:
			if err := f.purger.Purge(ctx, t, f.me(governance.NamespaceID(t.Namespace))); err != nil {
				f.d.log.Error("self-purge failed; the marker stays for the reconcile sweep", "target", t.String(), "err", err)
			}
		}
	}
}

// ReconcileReport is what a stand-alone reconcile sweep did.
type ReconcileReport struct {
	Completed    int `json:"completed"`
	StaleCleared int `json:"staleCleared"`
	Kept         int `json:"kept"`
	// Evicted counts fleet-joined namespaces found evicted without a
	// marker (an event lost to a crash) and purged now.
	Evicted int `json:"evicted"`
}

// Reconcile runs the self-purge sweep without starting the network: what
// `fleetbox node self-purge reconcile` does from a systemd oneshot before
// the node starts. It opens the store with the configured key source.
func Reconcile(ctx context.Context, cfg Config) (*ReconcileReport, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	key, src, err := loadStoreKey(&n.cfg, n.log)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(n.cfg.Home, StoreFile), key, store.Options{NoSync: n.cfg.NoSync, Logger: n.log})
	key.Wipe()
	if err != nil {
		return nil, fmt.Errorf("opening store with the %s key: %w", src, err)
	}
	defer st.Close()
	n.st = st
	if n.eng, err = n.openEngine(st); err != nil {
		return nil, err
	}
	n.fleet = newFleet(n.fleetDeps())
	rep, err := n.fleet.purger.Reconcile(ctx)
	out := &ReconcileReport{Completed: rep.Completed, StaleCleared: rep.StaleCleared, Kept: rep.Kept}
	for _, ns := range n.fleet.joined() {
		ts, terr := n.eng.TeeStatus(ns)
		if terr != nil || !ts.Admitted || ts.Member || ts.Incomplete {
			continue
		}
		if perr := n.fleet.purger.Purge(ctx, selfpurge.Target{Namespace: ns}, n.fleet.me(ns)); perr != nil {
			err = errors.Join(err, perr)
			continue
		}
		out.Evicted++
	}
	return out, err
}
