package p2p

import (
	"context"
	"errors"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Engine is what the p2p layer needs from namespace governance. The daemon
// adapts node/governance to it; tests use a small fake. Every method must be
// safe for concurrent use.
type Engine interface {
	// Namespaces lists the namespaces this node takes part in.
	Namespaces() ([]NamespaceID, error)
	// CheckOp is the stateless check a gossip validator runs before an op
	// spreads: the wire bytes decode strictly, belong to ns and carry a valid
	// signature. It returns the op id.
	CheckOp(ns NamespaceID, wire []byte) (OpID, error)
	// Known reports whether the op is applied, or waiting in the pending
	// queue for its parents. The two differ for sync: a peer whose head is
	// only pending here has ops this node lacks.
	Known(ns NamespaceID, id OpID) (applied, pending bool, err error)
	// Apply verifies, authorizes and applies ops in bulk, in any order. Ops
	// whose parents are missing wait in the pending queue and apply when the
	// parents come. A refused op changes nothing and does not stop the others.
	Apply(ctx context.Context, ns NamespaceID, wires [][]byte) (ApplyResult, error)
	// Heads returns the namespace's DAG heads and how many ops are applied.
	Heads(ns NamespaceID) ([]OpID, uint64, error)
	// Locator returns at most max ids of applied ops that describe what this
	// node has: its heads first, then ops further back, spaced exponentially
	// (like git's negotiation), so a peer finds a recent common ancestor.
	Locator(ns NamespaceID, max int) ([]OpID, error)
	// OpsMissing calls fn, parents before children, with the wire bytes of
	// every applied op that is not an ancestor of (or equal to) one of known.
	// Ids in known that the engine does not have are ignored. An error from
	// fn stops the walk and is returned.
	OpsMissing(ns NamespaceID, known []OpID, fn func(wire []byte) error) error
}

// ApplyResult counts what Apply did with a batch.
type ApplyResult struct {
	Applied   int // applied now (including pending ops unblocked by the batch)
	Duplicate int // already known
	Pending   int // waiting for parents
	Refused   int // failed decoding, signature, nonce or authorization
	// LocalRefused counts the refusals due to this node's state (a full
	// pending queue, a quota), not to the op: another node may accept it,
	// so they never count against whoever forwarded it.
	LocalRefused int
	// FirstRefusal is the reason the first refused op was refused.
	FirstRefusal error
	// Missing lists parents the pending ops are waiting for.
	Missing []OpID
}

type originKey struct{}

// WithOrigin tells Engine.Apply which peer sent the ops (for the pending
// queue's per-peer quota).
func WithOrigin(ctx context.Context, p peer.ID) context.Context {
	return context.WithValue(ctx, originKey{}, p)
}

// OriginFrom returns the peer WithOrigin named.
func OriginFrom(ctx context.Context) (peer.ID, bool) {
	p, ok := ctx.Value(originKey{}).(peer.ID)
	return p, ok
}

// ErrUnknownNamespace is returned by an Engine for a namespace it does not
// take part in.
var ErrUnknownNamespace = errors.New("unknown namespace")
