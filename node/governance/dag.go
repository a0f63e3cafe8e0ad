package governance

import (
	"bytes"
	"container/heap"
	"slices"
)

// opNode is an admitted op in a namespace DAG.
type opNode struct {
	op       *decodedOp
	parents  []*opNode
	children []*opNode
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
	// effect is the result of the op in the latest total-order replay; nil
	// means it took effect.
	effect *RefusedError
}

func (n *opNode) isGenesis() bool {
	return n.op.body.Root != nil && n.op.body.Root.NamespaceCreated != nil
}

// dag is one namespace's causal DAG plus the replayed state. Not safe for
// concurrent use: the owning space's mutex guards it.
type dag struct {
	ns      NamespaceID
	nodes   map[OpID]*opNode
	heads   map[OpID]*opNode
	genesis *opNode
	// order is the deterministic total order and tip the state after
	// replaying it; both are stale while dirty.
	order []*opNode
	tip   *state
	dirty bool
	// maxNonce is the highest nonce of any admitted op per signer, for
	// authoring.
	maxNonce map[PublicKey]uint64
	// keys are the group keys this node holds, by id.
	keys map[KeyID]groupKey
	// replays counts full total-order replays (a metric).
	replays int
}

func newDAG(ns NamespaceID) *dag {
	return &dag{ns: ns, nodes: map[OpID]*opNode{}, heads: map[OpID]*opNode{}, tip: newState(ns),
		maxNonce: map[PublicKey]uint64{}, keys: map[KeyID]groupKey{}}
}

// idHeap orders ready ops by id, smallest first.
type idHeap []*opNode

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return bytes.Compare(h[i].op.id[:], h[j].op.id[:]) < 0 }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(*opNode)) }
func (h *idHeap) Pop() any {
	old := *h
	n := old[len(old)-1]
	*h = old[:len(old)-1]
	return n
}

// topoOrder is the deterministic total order of a down-closed set of ops:
// Kahn's algorithm, always emitting the ready op with the smallest id. in
// reports set membership; nil means every node.
func (d *dag) topoOrder(in map[*opNode]bool) []*opNode {
	size := len(d.nodes)
	if in != nil {
		size = len(in)
	}
	indeg := make(map[*opNode]int, size)
	var h idHeap
	visit := func(n *opNode) {
		indeg[n] = len(n.parents)
		if len(n.parents) == 0 {
			h = append(h, n)
		}
	}
	if in == nil {
		for _, n := range d.nodes {
			visit(n)
		}
	} else {
		for n := range in {
			visit(n)
		}
	}
	heap.Init(&h)
	out := make([]*opNode, 0, size)
	for h.Len() > 0 {
		n := heap.Pop(&h).(*opNode)
		out = append(out, n)
		for _, c := range n.children {
			if in != nil && !in[c] {
				continue
			}
			indeg[c]--
			if indeg[c] == 0 {
				heap.Push(&h, c)
			}
		}
	}
	return out
}

// ensureTip recomputes the total order and replays it if stale.
func (d *dag) ensureTip() {
	if !d.dirty {
		return
	}
	d.order = d.topoOrder(nil)
	st := newState(d.ns)
	for _, n := range d.order {
		n.effect = st.apply(n)
	}
	d.tip = st
	d.dirty = false
	d.replays++
}

// causalState replays the ancestors of an op with parents ps: the state its
// signer saw. Deterministic because it depends only on those ancestors.
func (d *dag) causalState(ps []*opNode) *state {
	anc := make(map[*opNode]bool)
	stack := slices.Clone(ps)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if anc[n] {
			continue
		}
		anc[n] = true
		stack = append(stack, n.parents...)
	}
	st := newState(d.ns)
	for _, n := range d.topoOrder(anc) {
		st.apply(n)
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
		n.parents = append(n.parents, d.nodes[pid])
	}
	if n.isGenesis() && d.genesis != nil {
		return nil, invalid(op.id, "second NamespaceCreated")
	}
	d.decrypt(n)
	fast := !d.dirty && d.parentsAreHeads(n.parents)
	var st *state
	if fast {
		st = d.tip
	} else if verify {
		st = d.causalState(n.parents)
	}
	applied := false
	if verify {
		if st.incomplete {
			if op.body.Nonce <= st.nonces[op.body.Signer] {
				return nil, refused(op.id, ReasonNonce, ErrNonce)
			}
			n.provisional = true
		} else {
			if err := st.apply(n); err != nil {
				return nil, err
			}
			applied = true
			n.provisional = false
		}
	}
	// Insert.
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
	if fast {
		// Every other op is an ancestor, so n sorts last: the tip replay
		// extends by one op.
		if !applied {
			n.effect = d.tip.apply(n)
		}
		d.order = append(d.order, n)
	} else {
		d.dirty = true
	}
	return n, nil
}

// installKey records a group key and decrypts the ops sealed under it. It
// reports whether any op became readable.
func (d *dag) installKey(k groupKey) bool {
	id := k.id()
	if _, ok := d.keys[id]; ok {
		return false
	}
	d.keys[id] = k
	changed := false
	for _, n := range d.nodes {
		if n.op.body.Group != nil && n.op.body.Group.KeyID == id && n.opaque {
			d.decrypt(n)
			changed = true
		}
	}
	if changed {
		d.dirty = true
	}
	return changed
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

// rebuild re-admits every op in total order into a fresh DAG, re-checking
// provisional ops. It returns the ops that no longer pass (and their
// descendants), which the caller deletes from the store.
func (d *dag) rebuild() (dropped []OpID) {
	d.dirty = true
	d.ensureTip()
	order := d.order
	fresh := newDAG(d.ns)
	fresh.keys = d.keys
	fresh.replays = d.replays
	gone := map[OpID]bool{}
	for _, n := range order {
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
	d.ensureTip()
	return dropped
}
