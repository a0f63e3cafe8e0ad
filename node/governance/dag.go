package governance

import (
	"bytes"
	"slices"
)

// opNode is an admitted op in a namespace DAG.
type opNode struct {
	op       *decodedOp
	parents  []*opNode
	children []*opNode
	// height is 1 + the largest parent height (the genesis op has 0): the
	// length of the longest path from the genesis op.
	height uint64
	// pos is the node's index in dag.order.
	pos int
	// plain is the decrypted group op; nil for root ops and while the key is
	// not held (opaque).
	plain  *GroupOp
	opaque bool
	// badContent is set when a held key opens the op but its content does
	// not decode: the op stays in the DAG with no effect.
	badContent error
	// provisional: admitted while the causal state was incomplete (group
	// keys missing), so authorization is re-checked when keys arrive.
	provisional bool
	// effect is the result of the op in the total-order replay; nil means
	// it took effect.
	effect *RefusedError
}

func (n *opNode) isGenesis() bool {
	return n.op.body.Root != nil && n.op.body.Root.NamespaceCreated != nil
}

// before is the total order: by height, then by op id. Parents always come
// before children (a child is higher), and the order of any down-closed
// subset (an op's ancestors) is the restriction of the order of the whole.
func before(a, b *opNode) bool {
	if a.height != b.height {
		return a.height < b.height
	}
	return bytes.Compare(a.op.id[:], b.op.id[:]) < 0
}

// snapEvery is the distance between state snapshots along the order.
var snapEvery = 128

// snapshot is the state after replaying order[0:pos], with the heads of that
// prefix (to tell whether the prefix lies inside an op's ancestors).
type snapshot struct {
	pos   int
	st    *state
	heads []*opNode
}

// dag is one namespace's causal DAG, its total order and the replayed state.
// Not safe for concurrent use: the owning space's mutex guards it.
type dag struct {
	ns      NamespaceID
	nodes   map[OpID]*opNode
	heads   map[OpID]*opNode
	genesis *opNode
	// order holds every node sorted by before; tip is the state after
	// replaying all of it; snaps[i] is the state at order position
	// i*snapEvery.
	order []*opNode
	tip   *state
	snaps []snapshot
	// maxNonce is the highest nonce of any admitted op per signer, for
	// authoring.
	maxNonce map[PublicKey]uint64
	// keys are the group keys this node holds, by id.
	keys map[KeyID]groupKey
	// ctxDirty is the first order position whose op or effect changed since
	// ContextChanges last read (contexts.go); 0 in a new DAG.
	ctxDirty int
}

func newDAG(ns NamespaceID) *dag {
	return &dag{ns: ns, nodes: map[OpID]*opNode{}, heads: map[OpID]*opNode{}, tip: newState(ns),
		snaps:    []snapshot{{pos: 0, st: newState(ns)}},
		maxNonce: map[PublicKey]uint64{}, keys: map[KeyID]groupKey{}}
}

// replay applies an admitted op during a replay. Unlike a refused
// candidate, an admitted op that has no effect still uses up its nonce, so a
// signer can never reuse the nonce of an op that lost a conflict.
func replay(st *state, n *opNode) *RefusedError {
	err := st.apply(n)
	if err != nil {
		if b := &n.op.body; b.Nonce > st.nonces[b.Signer] {
			st.nonces[b.Signer] = b.Nonce
		}
	}
	return err
}

// ensureTip is kept for callers: the tip is always current.
func (d *dag) ensureTip() {}

// replayFrom recomputes effects, snapshots and the tip from the last
// snapshot at or before position q.
func (d *dag) replayFrom(q int) {
	si := min(q/snapEvery, len(d.snaps)-1)
	for si > 0 && d.snaps[si].pos > q {
		si--
	}
	base := d.snaps[si]
	d.snaps = d.snaps[:si+1]
	// Effects before q replay unchanged (the prefix of the order is).
	d.ctxDirty = min(d.ctxDirty, q)
	st := base.st.clone()
	heads := map[*opNode]bool{}
	for _, h := range base.heads {
		heads[h] = true
	}
	for i := base.pos; i < len(d.order); i++ {
		if i > base.pos && i%snapEvery == 0 {
			d.snaps = append(d.snaps, snapshot{pos: i, st: st.clone(), heads: headList(heads)})
		}
		n := d.order[i]
		n.effect = replay(st, n)
		for _, p := range n.parents {
			delete(heads, p)
		}
		heads[n] = true
	}
	d.tip = st
}

func headList(m map[*opNode]bool) []*opNode {
	out := make([]*opNode, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	return out
}

// prefixHeadsAt returns the heads of order[0:pos], computed from the last
// snapshot (used when a snapshot is taken on append).
func (d *dag) prefixHeadsAt(pos int) []*opNode {
	base := d.snaps[len(d.snaps)-1]
	heads := map[*opNode]bool{}
	for _, h := range base.heads {
		heads[h] = true
	}
	for i := base.pos; i < pos; i++ {
		n := d.order[i]
		for _, p := range n.parents {
			delete(heads, p)
		}
		heads[n] = true
	}
	return headList(heads)
}

// maybeSnapshot records the tip as the snapshot at the end of the order
// when one is due there.
func (d *dag) maybeSnapshot() {
	q := len(d.order)
	if q > 0 && q%snapEvery == 0 && d.snaps[len(d.snaps)-1].pos < q {
		d.snaps = append(d.snaps, snapshot{pos: q, st: d.tip.clone(), heads: d.prefixHeadsAt(q)})
	}
}

// insert puts n into the order and brings the tip up to date. An op that
// sorts last (the common case) extends the tip by one apply; otherwise the
// replay restarts from the snapshot before n's position.
func (d *dag) insert(n *opNode, applied bool) {
	q, _ := slices.BinarySearchFunc(d.order, n, func(a, b *opNode) int {
		if before(a, b) {
			return -1
		}
		if before(b, a) {
			return 1
		}
		return 0
	})
	d.ctxDirty = min(d.ctxDirty, q)
	if q == len(d.order) {
		d.maybeSnapshot()
		n.pos = q
		d.order = append(d.order, n)
		if !applied {
			n.effect = replay(d.tip, n)
		}
		return
	}
	d.order = slices.Insert(d.order, q, n)
	for i := q; i < len(d.order); i++ {
		d.order[i].pos = i
	}
	d.replayFrom(q)
}

// causalState returns the state of replaying exactly the ancestors of an op
// with parents ps: what its signer saw. It depends on nothing else. It scans
// the order backwards from the end, marking ancestors, until it reaches a
// snapshot whose whole prefix consists of ancestors, then replays the
// ancestors after that snapshot on a copy of it.
func (d *dag) causalState(ps []*opNode) *state {
	anc := make(map[*opNode]bool, len(ps))
	for _, p := range ps {
		anc[p] = true
	}
	i := len(d.order) - 1
	si := len(d.snaps) - 1
	for ; si >= 0; si-- {
		k := d.snaps[si].pos
		for ; i >= k; i-- {
			if n := d.order[i]; anc[n] {
				for _, p := range n.parents {
					anc[p] = true
				}
			}
		}
		// Every op at or after k has been visited, so the prefix heads'
		// membership is final: the prefix lies inside the ancestors iff all
		// of its heads do.
		inside := true
		for _, h := range d.snaps[si].heads {
			if !anc[h] {
				inside = false
				break
			}
		}
		if inside {
			break
		}
	}
	base := d.snaps[si]
	st := base.st.clone()
	for j := base.pos; j < len(d.order); j++ {
		if n := d.order[j]; anc[n] {
			replay(st, n)
		}
	}
	return st
}

func (d *dag) parentsAreHeads(ps []*opNode) bool {
	if len(ps) != len(d.heads) {
		return false
	}
	for _, p := range ps {
		if d.heads[p.op.id] != p {
			return false
		}
	}
	return true
}

// decrypt fills n.plain when the key is held.
func (d *dag) decrypt(n *opNode) {
	g := n.op.body.Group
	if g == nil || n.plain != nil || n.badContent != nil {
		return
	}
	k, ok := d.keys[g.KeyID]
	if !ok {
		n.opaque = true
		return
	}
	n.opaque = false
	op, err := openGroupOp(&n.op.body, &k)
	if err != nil {
		n.badContent = err
		return
	}
	n.plain = op
}

// admit adds op, whose parents are all present, if it passes. With verify
// the op is authorized against its causal state (the replay of its
// ancestors); if that state is incomplete (keys missing) only the nonce is
// checked and the op is marked provisional. Without verify (ops loaded from
// our own store) it is added as is. A refused op changes nothing.
func (d *dag) admit(op *decodedOp, verify bool, provisional bool) (*opNode, *RefusedError) {
	n := &opNode{op: op, provisional: provisional}
	for _, pid := range op.body.Parents {
		p := d.nodes[pid]
		n.parents = append(n.parents, p)
		n.height = max(n.height, p.height+1)
	}
	if n.isGenesis() && d.genesis != nil {
		return nil, invalid(op.id, "second NamespaceCreated")
	}
	d.decrypt(n)
	applied := false
	if verify {
		fast := d.parentsAreHeads(n.parents)
		var st *state
		if fast {
			// Every op is an ancestor: the causal state is the tip, and n
			// sorts last (it is higher than every op).
			st = d.tip
		} else {
			st = d.causalState(n.parents)
		}
		if st.incomplete {
			if op.body.Nonce <= st.nonces[op.body.Signer] {
				return nil, refused(op.id, ReasonNonce, ErrNonce)
			}
			n.provisional = true
		} else {
			if fast {
				// The snapshot due at n's position must not include n.
				d.maybeSnapshot()
			}
			// apply changes st only on success; st is the tip or a copy.
			if err := st.apply(n); err != nil {
				return nil, err
			}
			applied = fast
			n.provisional = false
		}
	}
	d.nodes[op.id] = n
	for _, p := range n.parents {
		p.children = append(p.children, n)
		delete(d.heads, p.op.id)
	}
	d.heads[op.id] = n
	if n.isGenesis() {
		d.genesis = n
	}
	if op.body.Nonce > d.maxNonce[op.body.Signer] {
		d.maxNonce[op.body.Signer] = op.body.Nonce
	}
	d.insert(n, applied)
	return n, nil
}

// installKey records a group key and decrypts the ops sealed under it. It
// reports whether any op became readable; if so the state is replayed.
func (d *dag) installKey(k groupKey) bool {
	id := k.id()
	if _, ok := d.keys[id]; ok {
		return false
	}
	d.keys[id] = k
	first := len(d.order)
	for _, n := range d.nodes {
		if n.op.body.Group != nil && n.op.body.Group.KeyID == id && n.opaque {
			d.decrypt(n)
			first = min(first, n.pos)
		}
	}
	if first == len(d.order) {
		return false
	}
	d.replayFrom(first)
	return true
}

// hasProvisional reports whether any op awaits re-authorization.
func (d *dag) hasProvisional() bool {
	for _, n := range d.nodes {
		if n.provisional {
			return true
		}
	}
	return false
}

// rebuild re-admits every op in order into a fresh DAG, re-checking
// provisional ops. It returns the ops that no longer pass (and their
// descendants), which the caller deletes from the store.
func (d *dag) rebuild() (dropped []OpID) {
	fresh := newDAG(d.ns)
	fresh.keys = d.keys
	gone := map[OpID]bool{}
	for _, n := range d.order {
		lost := false
		for _, p := range n.op.body.Parents {
			if gone[p] {
				lost = true
			}
		}
		if !lost {
			_, err := fresh.admit(n.op, n.provisional, n.provisional)
			lost = err != nil
		}
		if lost {
			gone[n.op.id] = true
			dropped = append(dropped, n.op.id)
		}
	}
	*d = *fresh
	return dropped
}
