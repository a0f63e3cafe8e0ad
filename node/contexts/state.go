package contexts

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/fleetbox/fleetbox/node/governance"
)

type (
	NamespaceID   = governance.NamespaceID
	GroupID       = governance.GroupID
	ContextID     = governance.ContextID
	ApplicationID = governance.ApplicationID
	OpKey         = governance.OpKey
)

// undoRec restores what one applied op changed.
type undoRec struct {
	app     ApplicationID
	created bool
	deleted bool
	prev    []prevValue
	size    int // bytes held, for the undo budget
}

type prevValue struct {
	key string
	val []byte
	had bool
}

// applied is one op applied to a context, newest last.
type applied struct {
	key   OpKey
	chain [32]byte // the hash chain after this op
	undo  *undoRec // nil once dropped from the undo window
}

// ctxState is one context's state on this node. The namespace's mutex
// guards it.
type ctxState struct {
	id      ContextID
	app     ApplicationID
	created bool
	deleted bool
	kv      map[string][]byte
	bytes   int

	// base* describe the ops applied before the in-memory list: how many,
	// the chain after them and the key of the last one.
	baseCount uint64
	baseChain [32]byte
	baseKey   OpKey
	hasBase   bool
	log       []applied
	undoBytes int

	// dirty collects keys changed since the last persist.
	dirty map[string]bool
	meta  bool // meta row changed
}

func newCtxState(id ContextID) *ctxState {
	return &ctxState{id: id, kv: map[string][]byte{}, dirty: map[string]bool{}}
}

func (c *ctxState) count() uint64 { return c.baseCount + uint64(len(c.log)) }

func (c *ctxState) chain() [32]byte {
	if n := len(c.log); n > 0 {
		return c.log[n-1].chain
	}
	return c.baseChain
}

func nextChain(prev [32]byte, id governance.OpID) [32]byte {
	h := sha256.New()
	h.Write([]byte("fleetbox/v1/context-chain"))
	h.Write(prev[:])
	h.Write(id[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Get implements wasmhost.StateReader.
func (c *ctxState) Get(k string) ([]byte, bool) {
	v, ok := c.kv[k]
	return v, ok
}

func (c *ctxState) set(u *undoRec, k string, v []byte, del bool) {
	old, had := c.kv[k]
	if u != nil {
		u.prev = append(u.prev, prevValue{key: k, val: old, had: had})
		u.size += len(k) + len(old) + 48
	}
	if had {
		c.bytes -= len(k) + len(old)
	}
	if del {
		delete(c.kv, k)
	} else {
		c.kv[k] = v
		c.bytes += len(k) + len(v)
	}
	c.dirty[k] = true
}

// apply applies one effective op and records how to undo it.
func (c *ctxState) apply(e *governance.ContextEntry) {
	u := &undoRec{app: c.app, created: c.created, deleted: c.deleted}
	writes := func(ws []governance.ContextWrite) {
		for _, w := range ws {
			c.set(u, string(w.Key), w.Value, w.Delete)
		}
	}
	switch {
	case e.Created != nil:
		c.created, c.deleted, c.app = true, false, e.Created.Application
		writes(e.Created.Writes)
	case e.Upgraded != nil:
		c.app = e.Upgraded.Application
	case e.Deleted != nil:
		c.deleted = true
		keys := make([]string, 0, len(c.kv))
		for k := range c.kv {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			c.set(u, k, nil, true)
		}
	case e.Call != nil:
		writes(e.Call.Writes)
	}
	c.meta = true
	c.log = append(c.log, applied{key: e.Key, chain: nextChain(c.chain(), e.Key.ID), undo: u})
	c.undoBytes += u.size
}

// undoLast reverts the newest applied op; false if it cannot (no undo
// record: the caller rebuilds).
func (c *ctxState) undoLast() bool {
	n := len(c.log)
	if n == 0 || c.log[n-1].undo == nil {
		return false
	}
	u := c.log[n-1].undo
	for i := len(u.prev) - 1; i >= 0; i-- {
		p := u.prev[i]
		c.set(nil, p.key, p.val, !p.had)
	}
	c.app, c.created, c.deleted = u.app, u.created, u.deleted
	c.undoBytes -= u.size
	c.log = c.log[:n-1]
	c.meta = true
	return true
}

// trim keeps at most window undo records and budget bytes of them; older
// applied ops move into the base.
func (c *ctxState) trim(window, budget int) {
	drop := 0
	for drop < len(c.log) && (len(c.log)-drop > window || c.undoBytes > budget) {
		c.undoBytes -= c.log[drop].undo.size
		drop++
	}
	if drop == 0 {
		return
	}
	last := c.log[drop-1]
	c.baseCount += uint64(drop)
	c.baseChain, c.baseKey, c.hasBase = last.chain, last.key, true
	c.log = slices.Delete(c.log, 0, drop)
}

// reset empties the context (before a rebuild), marking every key dirty.
func (c *ctxState) reset() {
	for k := range c.kv {
		c.dirty[k] = true
	}
	clear(c.kv)
	c.bytes, c.app, c.created, c.deleted = 0, ApplicationID{}, false, false
	c.baseCount, c.baseChain, c.baseKey, c.hasBase = 0, [32]byte{}, OpKey{}, false
	c.log, c.undoBytes, c.meta = nil, 0, true
}

// Root is the state root hash (package doc).
func (c *ctxState) Root() [32]byte {
	keys := make([]string, 0, len(c.kv))
	for k := range c.kv {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	h.Write([]byte("fleetbox/v1/context-state"))
	h.Write(c.id[:])
	h.Write(c.app[:])
	var n [4]byte
	for _, k := range keys {
		v := c.kv[k]
		binary.BigEndian.PutUint32(n[:], uint32(len(k)))
		h.Write(n[:])
		h.Write([]byte(k))
		binary.BigEndian.PutUint32(n[:], uint32(len(v)))
		h.Write(n[:])
		h.Write(v)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// chainOf hashes the ids of entries, as the applied chain does.
func chainOf(entries []governance.ContextEntry) [32]byte {
	var c [32]byte
	for i := range entries {
		c = nextChain(c, entries[i].Key.ID)
	}
	return c
}

func sameKey(a, b OpKey) bool { return a.Height == b.Height && bytes.Equal(a.ID[:], b.ID[:]) }
