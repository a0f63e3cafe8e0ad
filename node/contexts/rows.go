package contexts

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/fleetbox/fleetbox/node/store"
)

// Store layout (values are CBOR, sealed by the store):
//
//	State       "ctx/meta/" ns ctx                      -> metaRecord
//	State       "ctx/kv/"   ns ctx SHA-256(ctx || key)  -> kvRecord
//	Application "app/bin/"  app                         -> the WASM bytes
//	Application "app/info/" app                         -> appRecord
var (
	prefMeta    = []byte("ctx/meta/")
	prefKV      = []byte("ctx/kv/")
	prefAppBin  = []byte("app/bin/")
	prefAppInfo = []byte("app/info/")
)

type metaRecord struct {
	App        ApplicationID `cbor:"1,keyasint"`
	Created    bool          `cbor:"2,keyasint"`
	Deleted    bool          `cbor:"3,keyasint"`
	Count      uint64        `cbor:"4,keyasint"`
	Chain      [32]byte      `cbor:"5,keyasint"`
	LastHeight uint64        `cbor:"6,keyasint"`
	LastID     [32]byte      `cbor:"7,keyasint"`
}

type kvRecord struct {
	Key   []byte `cbor:"1,keyasint"`
	Value []byte `cbor:"2,keyasint"`
}

type appRecord struct {
	Size      int      `cbor:"1,keyasint"`
	Methods   []string `cbor:"2,keyasint"`
	Installed bool     `cbor:"3,keyasint"`
}

var (
	encMode = must(cbor.CoreDetEncOptions().EncMode())
	// decMode reads our own sealed rows: strict all the same.
	decMode = must(cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden,
		TagsMd: cbor.TagsForbidden, MaxNestedLevels: 4, MaxArrayElements: 4096, MaxMapPairs: 16,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField}.DecMode())
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func enc(v any) []byte {
	b, err := encMode.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("contexts: encoding %T: %v", v, err))
	}
	return b
}

func row(prefix []byte, parts ...[]byte) []byte {
	k := append([]byte{}, prefix...)
	for _, p := range parts {
		k = append(k, p...)
	}
	return k
}

func kvRow(ns NamespaceID, c ContextID, key string) []byte {
	h := sha256.New()
	h.Write(c[:])
	h.Write([]byte(key))
	return row(prefKV, ns[:], c[:], h.Sum(nil))
}

// persist writes c's dirty keys and meta row inside tx and clears the marks.
func persist(tx *store.Tx, ns NamespaceID, c *ctxState) error {
	for k := range c.dirty {
		r := kvRow(ns, c.id, k)
		if v, ok := c.kv[k]; ok {
			if err := tx.Put(store.State, r, enc(&kvRecord{Key: []byte(k), Value: v})); err != nil {
				return err
			}
		} else if err := tx.Delete(store.State, r); err != nil {
			return err
		}
	}
	if c.meta || len(c.dirty) > 0 {
		m := metaRecord{App: c.app, Created: c.created, Deleted: c.deleted, Count: c.count(), Chain: c.chain()}
		last := c.baseKey
		if n := len(c.log); n > 0 {
			last = c.log[n-1].key
		}
		m.LastHeight, m.LastID = last.Height, last.ID
		if err := tx.Put(store.State, row(prefMeta, ns[:], c.id[:]), enc(&m)); err != nil {
			return err
		}
	}
	clear(c.dirty)
	c.meta = false
	return nil
}

// loadContexts reads every context of every namespace from the store.
func loadContexts(st *store.Store) (map[NamespaceID]map[ContextID]*ctxState, error) {
	out := map[NamespaceID]map[ContextID]*ctxState{}
	err := st.View(func(tx *store.Tx) error {
		if err := tx.ForEach(store.State, prefMeta, func(k, v []byte) error {
			if len(k) != len(prefMeta)+64 {
				return fmt.Errorf("context meta row of %d bytes", len(k))
			}
			var m metaRecord
			if err := decMode.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("context meta row: %w", err)
			}
			ns, id := NamespaceID(k[len(prefMeta):][:32]), ContextID(k[len(prefMeta)+32:])
			if out[ns] == nil {
				out[ns] = map[ContextID]*ctxState{}
			}
			c := newCtxState(id)
			c.app, c.created, c.deleted = m.App, m.Created, m.Deleted
			c.baseCount, c.baseChain, c.hasBase = m.Count, m.Chain, m.Count > 0
			c.baseKey = OpKey{Height: m.LastHeight, ID: m.LastID}
			out[ns][id] = c
			return nil
		}); err != nil {
			return err
		}
		return tx.ForEach(store.State, prefKV, func(k, v []byte) error {
			if len(k) != len(prefKV)+96 {
				return fmt.Errorf("context key row of %d bytes", len(k))
			}
			ns, id := NamespaceID(k[len(prefKV):][:32]), ContextID(k[len(prefKV)+32:][:32])
			c := out[ns][id]
			if c == nil {
				return errors.New("context key row without its meta row")
			}
			var r kvRecord
			if err := decMode.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("context key row: %w", err)
			}
			c.kv[string(r.Key)] = r.Value
			c.bytes += len(r.Key) + len(r.Value)
			return nil
		})
	})
	return out, err
}

// DeleteRows deletes, inside tx, every context row of ns (or, with a
// non-zero group, of the contexts in ids) and returns how many.
func DeleteRows(tx *store.Tx, ns NamespaceID, ids []ContextID) (int, error) {
	total := 0
	var prefixes [][]byte
	if ids == nil {
		prefixes = [][]byte{row(prefMeta, ns[:]), row(prefKV, ns[:])}
	}
	for _, c := range ids {
		prefixes = append(prefixes, row(prefMeta, ns[:], c[:]), row(prefKV, ns[:], c[:]))
	}
	for _, p := range prefixes {
		n, err := tx.DeletePrefix(store.State, p)
		if err != nil {
			return total, fmt.Errorf("deleting context rows of namespace %s: %w", ns, err)
		}
		total += n
	}
	return total, nil
}
