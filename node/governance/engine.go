package governance

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an Engine.
type Config struct {
	// Store persists namespaces, identities, ops and group keys. Required.
	Store *store.Store
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer receives the engine's Prometheus collectors; nil registers
	// nothing (the counters still work).
	Registerer prometheus.Registerer
	// Pending bounds the queue of ops waiting for parents (pending.go).
	Pending PendingLimits
	// Now is the clock of the pending queue's age limit; nil means time.Now.
	Now func() time.Time
	// Rand is the source of keys and nonces; nil means crypto/rand.
	Rand io.Reader
}

// DefaultMaxPending is the default pending-queue bound per namespace.
const DefaultMaxPending = 16384

// maxRefusedMemory bounds the remembered refused op ids per namespace (used
// to refuse their descendants at once).
const maxRefusedMemory = 65536

// Engine runs namespace governance for one node: it authors, verifies,
// applies and persists SignedNamespaceOps, and answers sync and state
// queries. It starts no goroutines. All methods are safe for concurrent use.
type Engine struct {
	st     *store.Store
	log    *slog.Logger
	rand   io.Reader
	limits PendingLimits // defaults filled in
	now    func() time.Time
	m      *metrics

	// mu guards spaces (the map, not the spaces themselves).
	mu     sync.RWMutex
	spaces map[NamespaceID]*space
}

// space is one namespace on this node. mu guards every field below it; it
// is held for in-memory work and the store write of one call, never while
// calling back into the caller.
type space struct {
	mu      sync.Mutex
	id      *identity
	d       *dag
	pending map[OpID]*pendingOp
	waiting map[OpID][]OpID // missing parent -> pending ops waiting for it
	use     pendingUse      // what pending holds (pending.go)
	refused map[OpID]Reason
	// gone is set by Forget: a caller that fetched the space before and
	// waited for mu must not write it back (the self-purge deletes its rows).
	gone bool
}

// Store layout (keys inside the columns; values are CBOR, sealed by store):
//
//	Group    "gov/ns/"  ns                -> nsRecord
//	Identity "gov/id/"  ns                -> identityRecord (secret)
//	OpLog    "gov/op/"  ns opID           -> flags(1) || wire op
//	Keys     "gov/key/" ns keyID          -> group key (32 bytes, secret)
//
// The replayed state is not stored: it is a function of the ops and keys and
// is rebuilt on start.
var (
	prefNS  = []byte("gov/ns/")
	prefID  = []byte("gov/id/")
	prefOp  = []byte("gov/op/")
	prefKey = []byte("gov/key/")
)

const flagProvisional = 1

type nsRecord struct {
	Version int `cbor:"1,keyasint"`
}

func rowKey(prefix []byte, ns NamespaceID, id []byte) []byte {
	k := make([]byte, 0, len(prefix)+32+len(id))
	return append(append(append(k, prefix...), ns[:]...), id...)
}

// New loads every namespace in the store and replays it.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("governance: Config.Store is nil")
	}
	e := &Engine{st: cfg.Store, log: cfg.Logger, rand: cfg.Rand, now: cfg.Now,
		spaces: map[NamespaceID]*space{}}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.rand == nil {
		e.rand = rand.Reader
	}
	if e.now == nil {
		e.now = time.Now
	}
	e.limits = cfg.Pending
	for _, l := range []struct {
		v *int
		d int
	}{{&e.limits.MaxPending, DefaultMaxPending}, {&e.limits.MaxPendingBytes, DefaultMaxPendingBytes},
		{&e.limits.MaxPendingPerSigner, DefaultMaxPendingPerSigner}, {&e.limits.MaxPendingPerOrigin, DefaultMaxPendingPerOrigin}} {
		if *l.v <= 0 {
			*l.v = l.d
		}
	}
	if e.limits.MaxPendingAge <= 0 {
		e.limits.MaxPendingAge = DefaultMaxPendingAge
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	e.m = m
	var ids []NamespaceID
	err = e.st.View(func(tx *store.Tx) error {
		return tx.ForEach(store.Group, prefNS, func(k, _ []byte) error {
			if len(k) == len(prefNS)+32 {
				ids = append(ids, NamespaceID(k[len(prefNS):]))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("loading namespaces: %w", err)
	}
	for _, ns := range ids {
		sp, err := e.load(ns)
		if err != nil {
			return nil, fmt.Errorf("loading namespace %s: %w", ns, err)
		}
		e.spaces[ns] = sp
	}
	return e, nil
}

// load reads one namespace from the store and replays it.
func (e *Engine) load(ns NamespaceID) (*space, error) {
	sp := &space{d: newDAG(ns), pending: map[OpID]*pendingOp{}, waiting: map[OpID][]OpID{}, refused: map[OpID]Reason{}}
	type stored struct {
		op   *decodedOp
		prov bool
	}
	var ops []stored
	err := e.st.View(func(tx *store.Tx) error {
		raw, err := tx.Get(store.Identity, rowKey(prefID, ns, nil))
		if err != nil {
			return fmt.Errorf("reading the namespace identity: %w", err)
		}
		var rec identityRecord
		err = decodeCanonical(raw, &rec)
		store.Wipe(raw)
		if err != nil {
			return fmt.Errorf("namespace identity: %w", err)
		}
		sp.id, err = identityFromRecord(&rec)
		store.Wipe(rec.Seed)
		store.Wipe(rec.Agreement)
		if err != nil {
			return err
		}
		err = tx.ForEach(store.Keys, rowKey(prefKey, ns, nil), func(_, v []byte) error {
			if len(v) != 32 {
				return fmt.Errorf("group key row of %d bytes", len(v))
			}
			var k groupKey
			copy(k[:], v)
			store.Wipe(v)
			sp.d.keys[k.id()] = k
			return nil
		})
		if err != nil {
			return err
		}
		return tx.ForEach(store.OpLog, rowKey(prefOp, ns, nil), func(_, v []byte) error {
			if len(v) < 1 {
				return errors.New("empty op row")
			}
			// Our own store: decode strictly but skip the signature check
			// (it passed when the op was admitted).
			op, err := decodeStored(v[1:])
			if err != nil {
				return err
			}
			ops = append(ops, stored{op, v[0]&flagProvisional != 0})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	// Admit in the total order (height, then id), so every insertion is an
	// append and the load is one replay.
	sorted := sortForLoad(ops, func(s stored) *decodedOp { return s.op })
	height := make(map[OpID]uint64, len(sorted))
	for _, s := range sorted {
		h := uint64(0)
		for _, p := range s.op.body.Parents {
			h = max(h, height[p]+1)
		}
		height[s.op.id] = h
	}
	slices.SortStableFunc(sorted, func(a, b stored) int {
		ha, hb := height[a.op.id], height[b.op.id]
		if ha != hb {
			return cmp.Compare(ha, hb)
		}
		return bytes.Compare(a.op.id[:], b.op.id[:])
	})
	// An op that cannot be placed (parent missing, which only a damaged
	// store can cause) or that fails its re-check (a provisional op) is
	// dropped with its descendants rather than keeping the node from
	// starting; the rows are deleted below.
	var dropped []OpID
	gone := map[OpID]bool{}
	for _, s := range sorted {
		var why error
		for _, p := range s.op.body.Parents {
			if gone[p] || sp.d.nodes[p] == nil {
				why = fmt.Errorf("parent %s missing", p)
			}
		}
		if why == nil {
			if _, err := sp.d.admit(s.op, s.prov, s.prov); err != nil {
				why = err
			}
		}
		if why != nil {
			gone[s.op.id] = true
			dropped = append(dropped, s.op.id)
			e.log.Warn("dropping a stored op that no longer admits", "namespace", ns.String(), "op", s.op.id.String(), "err", why)
		}
	}
	if len(dropped) > 0 {
		err := e.st.Update(func(tx *store.Tx) error {
			for _, id := range dropped {
				if err := tx.Delete(store.OpLog, rowKey(prefOp, ns, id[:])); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("deleting dropped ops: %w", err)
		}
	}
	sp.d.ensureTip()
	return sp, nil
}

// sortForLoad orders stored ops so that parents come before children
// (Kahn's algorithm on the parent links), keeping load iterative.
func sortForLoad[T any](items []T, op func(T) *decodedOp) []T {
	idx := make(map[OpID]int, len(items))
	for i, it := range items {
		idx[op(it).id] = i
	}
	indeg := make([]int, len(items))
	children := make([][]int, len(items))
	for i, it := range items {
		for _, p := range op(it).body.Parents {
			if j, ok := idx[p]; ok {
				indeg[i]++
				children[j] = append(children[j], i)
			}
		}
	}
	var queue, out []int
	for i := range items {
		if indeg[i] == 0 {
			queue = append(queue, i)
		}
	}
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		out = append(out, i)
		for _, c := range children[i] {
			indeg[c]--
			if indeg[c] == 0 {
				queue = append(queue, c)
			}
		}
	}
	res := make([]T, 0, len(items))
	for _, i := range out {
		res = append(res, items[i])
	}
	// Items in a cycle or with missing parents come last; load reports
	// them.
	if len(res) < len(items) {
		seen := make([]bool, len(items))
		for _, i := range out {
			seen[i] = true
		}
		for i := range items {
			if !seen[i] {
				res = append(res, items[i])
			}
		}
	}
	return res
}

// decodeStored decodes an op from our own store: strict and canonical, but
// without re-verifying the signature.
func decodeStored(wire []byte) (*decodedOp, error) {
	var w signedOpWire
	if err := decodeCanonical(wire, &w); err != nil {
		return nil, fmt.Errorf("stored op: %w", err)
	}
	msg := append([]byte(signDomain), w.Body...)
	var body opBody
	if err := decodeCanonical(w.Body, &body); err != nil {
		return nil, fmt.Errorf("stored op body: %w", err)
	}
	return &decodedOp{id: opIDOf(msg), body: body, wire: wire}, nil
}

func (e *Engine) space(ns NamespaceID) (*space, error) {
	e.mu.RLock()
	sp := e.spaces[ns]
	e.mu.RUnlock()
	if sp == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNamespace, ns)
	}
	return sp, nil
}

// Namespaces lists the namespaces this node takes part in, sorted.
func (e *Engine) Namespaces() ([]NamespaceID, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]NamespaceID, 0, len(e.spaces))
	for ns := range e.spaces {
		out = append(out, ns)
	}
	slices.SortFunc(out, func(a, b NamespaceID) int { return bytes.Compare(a[:], b[:]) })
	return out, nil
}

// Identity returns this node's namespace identity (public keys) for ns.
func (e *Engine) Identity(ns NamespaceID) (MemberKeys, error) {
	sp, err := e.space(ns)
	if err != nil {
		return MemberKeys{}, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.id.public(), nil
}

// JoinNamespace makes this node take part in ns: it creates and stores a
// namespace identity (once; later calls return the same keys). The node can
// then sync the DAG; it sees skeletons of encrypted ops until a member adds
// it (hand these keys to an admin: `fleetbox ctl member add`) and delivers
// the group keys.
func (e *Engine) JoinNamespace(ns NamespaceID) (MemberKeys, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if sp := e.spaces[ns]; sp != nil {
		sp.mu.Lock()
		defer sp.mu.Unlock()
		return sp.id.public(), nil
	}
	id, err := newIdentity(e.rand)
	if err != nil {
		return MemberKeys{}, err
	}
	sp := &space{id: id, d: newDAG(ns), pending: map[OpID]*pendingOp{}, waiting: map[OpID][]OpID{}, refused: map[OpID]Reason{}}
	if err := e.st.Update(func(tx *store.Tx) error { return putNamespace(tx, ns, id) }); err != nil {
		return MemberKeys{}, fmt.Errorf("joining namespace %s: %w", ns, err)
	}
	e.spaces[ns] = sp
	e.log.Info("joined namespace", "namespace", ns.String(), "identity", id.public().Signing.String())
	return id.public(), nil
}

func putNamespace(tx *store.Tx, ns NamespaceID, id *identity) error {
	if err := tx.Put(store.Group, rowKey(prefNS, ns, nil), mustEncode(&nsRecord{Version: 1})); err != nil {
		return err
	}
	rec := id.record()
	b := mustEncode(rec)
	defer store.Wipe(b)
	defer store.Wipe(rec.Seed)
	defer store.Wipe(rec.Agreement)
	return tx.Put(store.Identity, rowKey(prefID, ns, nil), b)
}

// CreateNamespace creates a namespace with this node's new namespace
// identity as its first Admin. It returns the id and the wire bytes of the
// genesis op to publish.
func (e *Engine) CreateNamespace(ctx context.Context) (NamespaceID, [][]byte, error) {
	id, err := newIdentity(e.rand)
	if err != nil {
		return NamespaceID{}, nil, err
	}
	me := id.public()
	var salt [32]byte
	if _, err := io.ReadFull(e.rand, salt[:]); err != nil {
		return NamespaceID{}, nil, err
	}
	ns := namespaceID(me.Signing, salt)
	rootKey, err := newGroupKey(e.rand)
	if err != nil {
		return NamespaceID{}, nil, err
	}
	body := &opBody{Namespace: ns, Signer: me.Signing, Nonce: 1, Parents: []OpID{},
		Root: &RootOp{NamespaceCreated: &NamespaceCreated{Salt: salt, Agreement: me.Agreement, KeyID: rootKey.id()}}}
	op, err := signOp(body, id.signing)
	if err != nil {
		return NamespaceID{}, nil, err
	}
	sp := &space{id: id, d: newDAG(ns), pending: map[OpID]*pendingOp{}, waiting: map[OpID][]OpID{}, refused: map[OpID]Reason{}}
	sp.d.keys[rootKey.id()] = rootKey
	if _, rerr := sp.d.admit(op, true, false); rerr != nil {
		return NamespaceID{}, nil, rerr
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	err = e.st.Update(func(tx *store.Tx) error {
		if err := putNamespace(tx, ns, id); err != nil {
			return err
		}
		if err := putKey(tx, ns, rootKey); err != nil {
			return err
		}
		return putOp(tx, ns, sp.d.nodes[op.id])
	})
	if err != nil {
		return NamespaceID{}, nil, fmt.Errorf("creating namespace: %w", err)
	}
	e.spaces[ns] = sp
	e.m.applied.Inc()
	e.log.Info("created namespace", "namespace", ns.String())
	return ns, [][]byte{op.wire}, nil
}

func putKey(tx *store.Tx, ns NamespaceID, k groupKey) error {
	id := k.id()
	return tx.Put(store.Keys, rowKey(prefKey, ns, id[:]), k[:])
}

func putOp(tx *store.Tx, ns NamespaceID, n *opNode) error {
	v := make([]byte, 0, 1+len(n.op.wire))
	flags := byte(0)
	if n.provisional {
		flags |= flagProvisional
	}
	v = append(append(v, flags), n.op.wire...)
	return tx.Put(store.OpLog, rowKey(prefOp, ns, n.op.id[:]), v)
}

// ApplyResult counts what Apply did with a batch.
type ApplyResult struct {
	Applied   int // admitted now, including pending ops the batch unblocked
	Duplicate int // already known (applied or pending)
	Pending   int // now waiting for parents
	Refused   int // failed decoding, signature, nonce, authorization, ...
	// LocalRefused counts the refusals due to this node's state, not to
	// the op (a full pending queue, a quota): another node may take the op,
	// so whoever forwarded it is not at fault.
	LocalRefused int
	// FirstRefusal is why the first refused op was refused (a
	// *RefusedError).
	FirstRefusal error
	// Missing lists parents the namespace's pending ops wait for, to fetch.
	Missing []OpID
	// AppliedIDs are the ops admitted, parents before children.
	AppliedIDs []OpID
}

// CheckOp is the stateless check for a gossip topic validator: Validate.
func (e *Engine) CheckOp(ns NamespaceID, wire []byte) (OpID, error) {
	id, err := Validate(ns, wire)
	if err != nil {
		var re *RefusedError
		if errors.As(err, &re) {
			e.m.refused.WithLabelValues(string(re.Reason)).Inc()
		}
	}
	return id, err
}

// Has reports whether the op is known: admitted or pending.
func (e *Engine) Has(ns NamespaceID, id OpID) (bool, error) {
	applied, pending, err := e.Known(ns, id)
	return applied || pending, err
}

// Known reports whether the op is admitted, or waiting in the pending queue
// for its parents.
func (e *Engine) Known(ns NamespaceID, id OpID) (applied, pending bool, err error) {
	sp, err := e.space(ns)
	if err != nil {
		return false, false, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	_, applied = sp.d.nodes[id]
	_, pending = sp.pending[id]
	return applied, pending, nil
}

// Receive applies one op from the network; see Apply.
func (e *Engine) Receive(ctx context.Context, ns NamespaceID, wire []byte) (ApplyResult, error) {
	return e.Apply(ctx, ns, [][]byte{wire})
}

// Apply verifies, authorizes and applies ops in bulk, in any order, in one
// store transaction. Ops whose parents are missing wait in the pending queue
// and apply when the parents come; Missing lists what to fetch. A refused op
// changes nothing, is counted in metrics, and does not stop the others. The
// error is for failures of the node itself (store, unknown namespace,
// cancelled context), not for refusals.
func (e *Engine) Apply(ctx context.Context, ns NamespaceID, wires [][]byte) (ApplyResult, error) {
	var res ApplyResult
	sp, err := e.space(ns)
	if err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	// Stateless checks (signatures dominate) outside the lock, in parallel
	// for large batches.
	decoded := make([]*decodedOp, len(wires))
	errs := make([]error, len(wires))
	// Ops already known (gossip echoes, overlapping sync batches) are
	// counted as duplicates before their signatures are checked.
	known := make([]bool, len(wires))
	ids := make([]OpID, len(wires))
	for i, w := range wires {
		ids[i], known[i] = peekID(w)
	}
	sp.mu.Lock()
	for i := range wires {
		if known[i] {
			_, a := sp.d.nodes[ids[i]]
			_, p := sp.pending[ids[i]]
			known[i] = a || p
		}
	}
	sp.mu.Unlock()
	check := func(i int) {
		if known[i] {
			return
		}
		op, err := decodeOp(wires[i])
		if err == nil && op.body.Namespace != ns {
			err = refused(op.id, ReasonNamespace, fmt.Errorf("%w: op is for namespace %s", ErrMalformed, op.body.Namespace))
		}
		decoded[i], errs[i] = op, err
	}
	if workers := min(runtime.GOMAXPROCS(0), len(wires)/32); workers > 1 {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < len(wires); i += workers {
					check(i)
				}
			})
		}
		wg.Wait()
	} else {
		for i := range wires {
			check(i)
		}
	}
	ops := make([]*decodedOp, 0, len(wires))
	for i := range wires {
		if known[i] {
			res.Duplicate++
			continue
		}
		if errs[i] != nil {
			e.refuse(&res, errs[i])
			continue
		}
		ops = append(ops, decoded[i])
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.gone {
		return res, fmt.Errorf("%w: %s was forgotten", ErrUnknownNamespace, ns)
	}
	ch := &changes{}
	now := e.now()
	e.expirePending(sp, now)
	origin := originOf(ctx)
	for _, op := range ops {
		e.receive(sp, op, origin, now, &res, ch)
	}
	if err := e.commit(ns, sp, ch); err != nil {
		return res, err
	}
	res.Missing = sp.missing()
	e.m.pending.WithLabelValues(ns.String()).Set(float64(len(sp.pending)))
	return res, nil
}

// changes collects what one call must write.
type changes struct {
	ops     []*opNode
	keys    []groupKey
	dropped []OpID
	// extra, if set, writes more rows in the same transaction (a context
	// call's state, contexts.go).
	extra func(tx *store.Tx) error
}

func (e *Engine) refuse(res *ApplyResult, err error) {
	res.Refused++
	if res.FirstRefusal == nil {
		res.FirstRefusal = err
	}
	var re *RefusedError
	reason := ReasonMalformed
	if errors.As(err, &re) {
		reason = re.Reason
	}
	if reason.Local() {
		res.LocalRefused++
	}
	e.m.refused.WithLabelValues(string(reason)).Inc()
	e.log.Debug("op refused", "err", err)
}

// receive handles one stateless-valid op under sp.mu.
func (e *Engine) receive(sp *space, op *decodedOp, origin string, now time.Time, res *ApplyResult, ch *changes) {
	id := op.id
	if _, ok := sp.d.nodes[id]; ok {
		res.Duplicate++
		return
	}
	if _, ok := sp.pending[id]; ok {
		res.Duplicate++
		return
	}
	if r, ok := sp.refused[id]; ok {
		e.refuse(res, refused(id, r, fmt.Errorf("%w: refused before", ErrInvalid)))
		return
	}
	missing := map[OpID]bool{}
	for _, p := range op.body.Parents {
		if _, ok := sp.refused[p]; ok {
			e.refuseAndRemember(sp, res, refused(id, ReasonParent, ErrParentRefused))
			return
		}
		if _, ok := sp.d.nodes[p]; !ok {
			missing[p] = true
		}
	}
	if len(missing) > 0 {
		po := &pendingOp{wire: bytes.Clone(op.wire), signer: op.body.Signer, origin: origin, added: now,
			outside: !sp.d.tip.isMember(op.body.Signer), missing: missing}
		if rerr := e.pendingRoom(sp, po); rerr != nil {
			rerr.Op = id
			e.refuse(res, rerr)
			return
		}
		sp.addPending(id, po)
		res.Pending++
		return
	}
	// Admit, then everything it unblocks.
	queue := []*decodedOp{op}
	for len(queue) > 0 {
		op := queue[0]
		queue = queue[1:]
		n, rerr := sp.d.admit(op, true, false)
		if rerr != nil {
			e.refuseAndRemember(sp, res, rerr)
			e.refusePendingDescendants(sp, op.id, res)
			continue
		}
		res.Applied++
		res.AppliedIDs = append(res.AppliedIDs, op.id)
		ch.ops = append(ch.ops, n)
		e.m.applied.Inc()
		e.takeDelivery(sp, n, ch)
		for _, cid := range sp.waiting[op.id] {
			po := sp.pending[cid]
			if po == nil {
				continue
			}
			delete(po.missing, op.id)
			if len(po.missing) == 0 {
				sp.takePending(cid)
				dop, err := decodeOp(po.wire)
				if err != nil { // it decoded when it arrived
					e.refuse(res, err)
					continue
				}
				queue = append(queue, dop)
			}
		}
		delete(sp.waiting, op.id)
	}
}

// refusePendingDescendants refuses the pending ops that wait, directly or
// through other pending ops, on a refused op: they can never apply.
func (e *Engine) refusePendingDescendants(sp *space, id OpID, res *ApplyResult) {
	work := []OpID{id}
	for len(work) > 0 {
		p := work[len(work)-1]
		work = work[:len(work)-1]
		for _, cid := range sp.waiting[p] {
			po := sp.takePending(cid)
			if po == nil {
				continue
			}
			delete(po.missing, p)
			sp.unlinkWaiting(cid, po)
			e.refuseAndRemember(sp, res, refused(cid, ReasonParent, ErrParentRefused))
			work = append(work, cid)
		}
		delete(sp.waiting, p)
	}
}

func (e *Engine) refuseAndRemember(sp *space, res *ApplyResult, err *RefusedError) {
	if len(sp.refused) >= maxRefusedMemory {
		clear(sp.refused)
	}
	sp.refused[err.Op] = err.Reason
	e.refuse(res, err)
}

// takeDelivery installs the keys of a KeyDelivery addressed to this node.
func (e *Engine) takeDelivery(sp *space, n *opNode, ch *changes) {
	r := n.op.body.Root
	if r == nil || r.KeyDelivery == nil || r.KeyDelivery.Recipient != sp.id.public().Signing {
		return
	}
	keys, err := unwrapKeys(n.op.body.Namespace, n.op.body.Signer, r.KeyDelivery, sp.id)
	if err != nil {
		e.log.Warn("key delivery addressed to this node does not open", "op", n.op.id.String(), "err", err)
		return
	}
	for _, k := range keys {
		if _, had := sp.d.keys[k.id()]; !had {
			sp.d.installKey(k)
			ch.keys = append(ch.keys, k)
		}
	}
}

// commit re-checks provisional ops if keys arrived, then writes ops, keys
// and drops in one transaction. On a store failure it reloads the namespace
// from the store, so memory never runs ahead of disk.
func (e *Engine) commit(ns NamespaceID, sp *space, ch *changes) error {
	var wasProvisional []OpID
	if len(ch.keys) > 0 && sp.d.hasProvisional() {
		for id, n := range sp.d.nodes {
			if n.provisional {
				wasProvisional = append(wasProvisional, id)
			}
		}
		ch.dropped = sp.d.rebuild()
		e.m.replays.Inc()
		if len(ch.dropped) > 0 {
			e.log.Info("ops dropped after keys arrived", "namespace", ns.String(), "count", len(ch.dropped))
		}
	}
	if len(ch.ops) == 0 && len(ch.keys) == 0 && len(ch.dropped) == 0 && ch.extra == nil {
		return nil
	}
	err := e.st.Update(func(tx *store.Tx) error {
		for _, k := range ch.keys {
			if err := putKey(tx, ns, k); err != nil {
				return err
			}
		}
		for _, n := range ch.ops {
			// After a rebuild the node objects are new; write the current
			// provisional flag.
			if cur := sp.d.nodes[n.op.id]; cur != nil {
				n = cur
			} else {
				continue
			}
			if err := putOp(tx, ns, n); err != nil {
				return err
			}
		}
		// Provisional flags may have cleared in the rebuild: rewrite them.
		for _, id := range wasProvisional {
			if n := sp.d.nodes[id]; n != nil && !n.provisional {
				if err := putOp(tx, ns, n); err != nil {
					return err
				}
			}
		}
		for _, id := range ch.dropped {
			if err := tx.Delete(store.OpLog, rowKey(prefOp, ns, id[:])); err != nil {
				return err
			}
		}
		if ch.extra != nil {
			return ch.extra(tx)
		}
		return nil
	})
	if err != nil {
		e.log.Error("writing governance ops failed; reloading the namespace from the store", "namespace", ns.String(), "err", err)
		if fresh, lerr := e.load(ns); lerr == nil {
			sp.d = fresh.d
		}
		return fmt.Errorf("storing ops of namespace %s: %w", ns, err)
	}
	return nil
}

func (sp *space) missing() []OpID {
	out := make([]OpID, 0, len(sp.waiting))
	for p := range sp.waiting {
		_, have := sp.d.nodes[p]
		_, waits := sp.pending[p]
		if !have && !waits {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b OpID) int { return bytes.Compare(a[:], b[:]) })
	return out
}

// Missing returns the parent ids the pending ops of ns wait for.
func (e *Engine) Missing(ns NamespaceID) ([]OpID, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.missing(), nil
}

// Heads returns the DAG heads (sorted) and how many ops are admitted.
func (e *Engine) Heads(ns NamespaceID) ([]OpID, uint64, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, 0, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.heads(), uint64(len(sp.d.nodes)), nil
}

func (sp *space) heads() []OpID {
	out := make([]OpID, 0, len(sp.d.heads))
	for id := range sp.d.heads {
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b OpID) int { return bytes.Compare(a[:], b[:]) })
	return out
}

// Locator returns at most max ids of admitted ops describing what this node
// has: its heads first, then ops further back in the total order at
// exponentially growing distance, and the genesis op last.
func (e *Engine) Locator(ns NamespaceID, max int) ([]OpID, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.d.ensureTip()
	out := sp.heads()
	if len(out) > max {
		return out[:max], nil
	}
	seen := map[OpID]bool{}
	for _, h := range out {
		seen[h] = true
	}
	add := func(n *opNode) {
		if len(out) < max && !seen[n.op.id] {
			seen[n.op.id] = true
			out = append(out, n.op.id)
		}
	}
	o := sp.d.order
	for i, step := len(o)-2, 1; i > 0 && len(out) < max-1; i, step = i-step, step*2 {
		add(o[i])
	}
	if len(o) > 0 {
		add(o[0])
	}
	return out, nil
}

// OpsMissing calls fn, parents before children (the total order), with the
// wire bytes of every admitted op that is neither in known nor an ancestor of
// an op in known. Unknown ids in known are ignored. The walk is O(ops) and
// runs fn without holding the namespace lock; an error from fn stops it.
func (e *Engine) OpsMissing(ns NamespaceID, known []OpID, fn func(wire []byte) error) error {
	sp, err := e.space(ns)
	if err != nil {
		return err
	}
	sp.mu.Lock()
	sp.d.ensureTip()
	covered := map[*opNode]bool{}
	var stack []*opNode
	for _, id := range known {
		if n := sp.d.nodes[id]; n != nil {
			stack = append(stack, n)
		}
	}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if covered[n] {
			continue
		}
		covered[n] = true
		stack = append(stack, n.parents...)
	}
	wires := make([][]byte, 0, len(sp.d.order)-len(covered))
	for _, n := range sp.d.order {
		if !covered[n] {
			wires = append(wires, n.op.wire)
		}
	}
	sp.mu.Unlock()
	for _, w := range wires {
		if err := fn(w); err != nil {
			return err
		}
	}
	return nil
}

// Get returns the wire bytes of the admitted ops among ids, in the order
// given; unknown ids are skipped.
func (e *Engine) Get(ns NamespaceID, ids []OpID) ([][]byte, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	out := make([][]byte, 0, len(ids))
	for _, id := range ids {
		if n := sp.d.nodes[id]; n != nil {
			out = append(out, n.op.wire)
		}
	}
	return out, nil
}

// readTip runs fn with ns's space locked and its state replayed to the tip.
func (e *Engine) readTip(ns NamespaceID, fn func(sp *space, st *state) error) error {
	sp, err := e.space(ns)
	if err != nil {
		return err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.gone {
		return fmt.Errorf("%w: %s was forgotten", ErrUnknownNamespace, ns)
	}
	sp.d.ensureTip()
	return fn(sp, sp.d.tip)
}

// Policy returns the namespace's TeeAdmissionPolicy, or nil if none is set.
func (e *Engine) Policy(ns NamespaceID) (*attest.Policy, error) {
	var p *attest.Policy
	err := e.readTip(ns, func(_ *space, st *state) error {
		if st.policy == nil {
			return nil
		}
		var err error
		p, err = attest.ParsePolicy(st.policy)
		return err
	})
	return p, err
}

// DeleteNamespaceRows deletes, inside tx, every row this package keeps for
// ns: the namespace record, the namespace identity (signing and agreement
// keys), every op and every group key. It returns how many rows it deleted.
// The self-purge calls it in its purge transaction, then Forget, then
// store.Compact so the bytes leave the file.
func DeleteNamespaceRows(tx *store.Tx, ns NamespaceID) (int, error) {
	total := 0
	for _, r := range []struct {
		col    store.Column
		prefix []byte
	}{
		{store.OpLog, rowKey(prefOp, ns, nil)},
		{store.Keys, rowKey(prefKey, ns, nil)},
		{store.Identity, rowKey(prefID, ns, nil)},
		{store.Group, rowKey(prefNS, ns, nil)},
	} {
		n, err := tx.DeletePrefix(r.col, r.prefix)
		if err != nil {
			return total, fmt.Errorf("deleting governance rows of %s: %w", ns, err)
		}
		total += n
	}
	return total, nil
}

// Forget drops ns from memory: its DAG, keys (wiped), identity and pending
// ops. The self-purge calls it before DeleteNamespaceRows: from then on no
// call can write the namespace back, not even one already waiting for it
// (it finds the space gone and fails with ErrUnknownNamespace).
func (e *Engine) Forget(ns NamespaceID) {
	e.mu.Lock()
	sp := e.spaces[ns]
	delete(e.spaces, ns)
	e.mu.Unlock()
	if sp == nil {
		return
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.gone = true
	for id, k := range sp.d.keys {
		wipe(k[:])
		delete(sp.d.keys, id)
	}
	wipe(sp.id.signing)
	sp.d = newDAG(ns)
	sp.clearPending()
	e.m.pending.DeleteLabelValues(ns.String())
}
