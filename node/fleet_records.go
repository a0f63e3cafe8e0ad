package node

import (
	"errors"

	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/store"
)

// The fleet's records in the store: which namespaces this node fleet-joined
// (so it resumes announcing after a restart) and which evicted it.

// fleetJoinPrefix keys, in the Config column, the namespaces this node
// fleet-joined, so it resumes announcing after a restart and purges them
// on eviction.
const fleetJoinPrefix = "fleet/join/"

func fleetJoinKey(ns governance.NamespaceID) []byte {
	return append([]byte(fleetJoinPrefix), ns[:]...)
}

// fleetEvictedKey is one Config row whose sealed value lists the namespaces
// this node was evicted from, so a configured fleetJoin does not re-join
// them at the next start (an operator re-joins with ctl fleet-join). The
// ids live only in the sealed value, never in a cleartext row key.
var fleetEvictedKey = []byte("fleet/evicted")

func evicted(tx *store.Tx) ([]governance.NamespaceID, error) {
	v, err := tx.Get(store.Config, fleetEvictedKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []governance.NamespaceID
	for len(v) >= 32 {
		out = append(out, governance.NamespaceID(v[:32]))
		v = v[32:]
	}
	return out, nil
}

func setEvicted(tx *store.Tx, ns governance.NamespaceID, on bool) error {
	list, err := evicted(tx)
	if err != nil {
		return err
	}
	var buf []byte
	for _, x := range list {
		if x != ns {
			buf = append(buf, x[:]...)
		}
	}
	if on {
		buf = append(buf, ns[:]...)
	}
	return tx.Put(store.Config, fleetEvictedKey, buf)
}

func (f *fleetState) remember(ns governance.NamespaceID, st *governance.TeeStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.Admitted && st.Member {
		f.admitted[ns] = true
	}
	f.groups[ns] = st.Groups
}

// joined lists the namespaces this node fleet-joined.
func (f *fleetState) joined() []governance.NamespaceID {
	var out []governance.NamespaceID
	_ = f.d.st.View(func(tx *store.Tx) error {
		return tx.ForEach(store.Config, []byte(fleetJoinPrefix), func(k, _ []byte) error {
			var ns governance.NamespaceID
			copy(ns[:], k[len(fleetJoinPrefix):])
			out = append(out, ns)
			return nil
		})
	})
	return out
}
