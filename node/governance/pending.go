package governance

import (
	"context"
	"slices"
	"time"
)

// The pending queue holds ops whose parents are missing. Its entries cost
// nothing to make: an op's stateless checks need no membership and its
// parents are checked only once known, so anyone who can reach the topic can
// sign ops naming parents that do not exist. The queue is therefore bounded
// so that outsiders cannot fill it or the node's memory, and so that what it
// refuses is never held against an honest forwarder (a full queue is this
// node's state, not a fault of the op):
//
//   - it keeps the op's wire bytes only (decoded again when the parents
//     come), and bounds them in bytes as well as in ops;
//   - signers who are not members in the local state share a quarter of it,
//     so members' ops always find room;
//   - each signer, and each origin (the peer that sent the op), has a quota;
//   - an op pending longer than MaxPendingAge is dropped.
//
// Refusals for these reasons are LocalRefused in an ApplyResult.

// PendingLimits bound each namespace's pending queue. Zero means the
// Default of the same name.
type PendingLimits struct {
	// MaxPending bounds the ops waiting for parents, MaxPendingBytes their
	// wire bytes (plus a fixed overhead per op).
	MaxPending      int
	MaxPendingBytes int
	// MaxPendingPerSigner and MaxPendingPerOrigin bound the ops of one
	// signer and of one sending peer.
	MaxPendingPerSigner int
	MaxPendingPerOrigin int
	// MaxPendingAge is how long an op may wait.
	MaxPendingAge time.Duration
}

// Pending-queue defaults (PendingLimits fields of the same names).
const (
	DefaultMaxPendingBytes     = 16 << 20
	DefaultMaxPendingPerSigner = 512
	DefaultMaxPendingPerOrigin = 2048
	DefaultMaxPendingAge       = 10 * time.Minute
)

// outsiderShare is the part of the queue (count and bytes) that ops of
// non-member signers may take together: 1/outsiderShare.
const outsiderShare = 4

// pendingOverhead approximates what one entry costs besides its wire bytes
// (the entry, the map slots, the waiting lists).
const pendingOverhead = 256

type pendingOp struct {
	wire    []byte // an exact-size copy: the decoded form is 4x larger
	signer  PublicKey
	origin  string
	added   time.Time
	outside bool // the signer was no member when the op arrived
	missing map[OpID]bool
}

func (po *pendingOp) cost() int { return len(po.wire) + pendingOverhead }

// pendingUse is what the queue holds, in total and per key.
type pendingUse struct {
	bytes, outsideN, outsideBytes int
	bySigner                      map[PublicKey]int
	byOrigin                      map[string]int
	// order is arrival order, for the age limit; entries of ops that left
	// the queue are skipped when reached.
	order []pendingArrival
}

type pendingArrival struct {
	id    OpID
	added time.Time
}

type originKey struct{}

// WithOrigin names the peer an op batch came from (its libp2p peer ID), for
// the per-origin quota of the pending queue.
func WithOrigin(ctx context.Context, origin string) context.Context {
	return context.WithValue(ctx, originKey{}, origin)
}

func originOf(ctx context.Context) string {
	s, _ := ctx.Value(originKey{}).(string)
	return s
}

// isMember reports whether pk is a member of any group in st.
func (st *state) isMember(pk PublicKey) bool {
	for _, g := range st.groups {
		if _, ok := g.members[pk]; ok {
			return true
		}
	}
	return false
}

// pendingRoom says why op cannot wait in the queue, or nil if it can.
func (e *Engine) pendingRoom(sp *space, po *pendingOp) *RefusedError {
	u := &sp.use
	l := e.limits
	switch {
	case len(sp.pending) >= l.MaxPending || u.bytes+po.cost() > l.MaxPendingBytes:
		return refused(OpID{}, ReasonPendingFull, ErrPendingFull)
	case po.outside && (u.outsideN >= l.MaxPending/outsiderShare || u.outsideBytes+po.cost() > l.MaxPendingBytes/outsiderShare):
		return refused(OpID{}, ReasonPendingFull, ErrPendingFull)
	case u.bySigner[po.signer] >= l.MaxPendingPerSigner:
		return refused(OpID{}, ReasonPendingQuota, ErrPendingQuota)
	case po.origin != "" && u.byOrigin[po.origin] >= l.MaxPendingPerOrigin:
		return refused(OpID{}, ReasonPendingQuota, ErrPendingQuota)
	}
	return nil
}

// addPending puts an op in the queue; pendingRoom said yes.
func (sp *space) addPending(id OpID, po *pendingOp) {
	u := &sp.use
	if u.bySigner == nil {
		u.bySigner, u.byOrigin = map[PublicKey]int{}, map[string]int{}
	}
	sp.pending[id] = po
	for p := range po.missing {
		sp.waiting[p] = append(sp.waiting[p], id)
	}
	u.bytes += po.cost()
	if po.outside {
		u.outsideN++
		u.outsideBytes += po.cost()
	}
	u.bySigner[po.signer]++
	if po.origin != "" {
		u.byOrigin[po.origin]++
	}
	u.order = append(u.order, pendingArrival{id, po.added})
}

// takePending removes an op from the queue and its accounting. It leaves
// sp.waiting to the caller, which knows which lists it is walking.
func (sp *space) takePending(id OpID) *pendingOp {
	po := sp.pending[id]
	if po == nil {
		return nil
	}
	delete(sp.pending, id)
	u := &sp.use
	u.bytes -= po.cost()
	if po.outside {
		u.outsideN--
		u.outsideBytes -= po.cost()
	}
	if u.bySigner[po.signer]--; u.bySigner[po.signer] <= 0 {
		delete(u.bySigner, po.signer)
	}
	if po.origin != "" {
		if u.byOrigin[po.origin]--; u.byOrigin[po.origin] <= 0 {
			delete(u.byOrigin, po.origin)
		}
	}
	return po
}

// unlinkWaiting removes id from the waiting lists of its missing parents.
func (sp *space) unlinkWaiting(id OpID, po *pendingOp) {
	for m := range po.missing {
		sp.waiting[m] = slices.DeleteFunc(sp.waiting[m], func(x OpID) bool { return x == id })
		if len(sp.waiting[m]) == 0 {
			delete(sp.waiting, m)
		}
	}
}

// expirePending drops ops that waited longer than the age limit, and
// returns how many. What waits on them stays until its own time comes.
func (e *Engine) expirePending(sp *space, now time.Time) int {
	u := &sp.use
	n, i := 0, 0
	for ; i < len(u.order) && now.Sub(u.order[i].added) >= e.limits.MaxPendingAge; i++ {
		id := u.order[i].id
		if po := sp.pending[id]; po != nil && po.added.Equal(u.order[i].added) {
			sp.takePending(id)
			sp.unlinkWaiting(id, po)
			n++
		}
	}
	u.order = u.order[i:]
	// Entries of ops that left the queue otherwise linger until they reach
	// the front; compact when they outnumber the live ones.
	if len(u.order) > 2*len(sp.pending)+1024 {
		live := u.order[:0]
		for _, a := range u.order {
			if po := sp.pending[a.id]; po != nil && po.added.Equal(a.added) {
				live = append(live, a)
			}
		}
		u.order = live
	}
	if n > 0 {
		e.m.refused.WithLabelValues(string(ReasonPendingExpired)).Add(float64(n))
	}
	return n
}

// clearPending empties the queue (Forget).
func (sp *space) clearPending() {
	clear(sp.pending)
	clear(sp.waiting)
	sp.use = pendingUse{}
}

// PendingUse reports what the pending queue of ns holds: ops and the bytes
// they are accounted for.
func (e *Engine) PendingUse(ns NamespaceID) (ops, bytes int, err error) {
	sp, err := e.space(ns)
	if err != nil {
		return 0, 0, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return len(sp.pending), sp.use.bytes, nil
}
