package governance

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/fleetbox/fleetbox/node/ids"
	"github.com/fleetbox/fleetbox/node/store"
)

// Context ops: GroupOp variants from CBOR key 16, sealed with the group key
// like the others. A context belongs to the group whose key seals its
// ContextCreated; every later op on it is sealed in that group.
//
//	16 ContextCreated             Admin or CAN_CREATE_CONTEXT
//	17 ContextApplicationUpgraded Admin or MANAGE_APPLICATION
//	18 ContextDeleted             Admin or MANAGE_APPLICATION
//	19 ContextCall                any writer (Admin, Member) of the group
//
// ReadOnly and ReadOnlyTee members author none of them (st.writer refuses
// them before any of these rules), so a call signed by a replica is
// refused by every peer. Governance decides only which context ops take
// effect, in the namespace's total order; node/contexts turns the effective
// ones into context state (ContextChanges feeds it).

// ContextID names a context: SHA-256("fleetbox/v1/context-id" || namespace
// || creator || nonce of its ContextCreated), so ids never collide.
type ContextID [32]byte

// ApplicationID names an application: the SHA-256 of its WASM bytes.
type ApplicationID [32]byte

func (c ContextID) String() string     { return hex.EncodeToString(c[:]) }
func (a ApplicationID) String() string { return hex.EncodeToString(a[:]) }

func (c ContextID) MarshalText() ([]byte, error)     { return []byte(c.String()), nil }
func (a ApplicationID) MarshalText() ([]byte, error) { return []byte(a.String()), nil }
func (c *ContextID) UnmarshalText(b []byte) error {
	return ids.ParseHex32(c[:], string(b), "context id")
}
func (a *ApplicationID) UnmarshalText(b []byte) error {
	return ids.ParseHex32(a[:], string(b), "application id")
}

// ParseContextID parses 64 hex digits.
func ParseContextID(s string) (ContextID, error) {
	var c ContextID
	return c, c.UnmarshalText([]byte(s))
}

// ParseApplicationID parses 64 hex digits.
func ParseApplicationID(s string) (ApplicationID, error) {
	var a ApplicationID
	return a, a.UnmarshalText([]byte(s))
}

// Limits of context ops. A call's writes travel in its op, so together
// with the input they stay well inside MaxOpSize; node/contexts gives the
// same limits to the WASM host.
const (
	MaxContextInput      = 16 << 10 // init arguments and call input
	MaxContextMethod     = 64
	MaxContextKey        = 256
	MaxContextValue      = 16 << 10
	MaxContextWrites     = 256      // keys one call writes or removes
	MaxContextWriteBytes = 32 << 10 // keys plus values of one call
)

const labelContextID = "fleetbox/v1/context-id"

// ContextCreated creates a context of Application in the op's group and
// runs its init method with Init; Writes are what init wrote.
type ContextCreated struct {
	Context     ContextID      `cbor:"1,keyasint"`
	Application ApplicationID  `cbor:"2,keyasint"`
	Init        []byte         `cbor:"3,keyasint,omitempty"`
	Writes      []ContextWrite `cbor:"4,keyasint,omitempty"`
}

// ContextApplicationUpgraded points the context at another application;
// the state is kept.
type ContextApplicationUpgraded struct {
	Context     ContextID     `cbor:"1,keyasint"`
	Application ApplicationID `cbor:"2,keyasint"`
}

// ContextDeleted deletes the context and its state.
type ContextDeleted struct {
	Context ContextID `cbor:"1,keyasint"`
}

// ContextCall is a mutating call as the caller's node executed it: the
// method and input (for the record) and the writes it made, sorted by key.
// Peers apply the writes; they do not re-execute (node/contexts, package
// doc, has the conflict rule).
type ContextCall struct {
	Context ContextID      `cbor:"1,keyasint"`
	Method  string         `cbor:"2,keyasint"`
	Input   []byte         `cbor:"3,keyasint,omitempty"`
	Writes  []ContextWrite `cbor:"4,keyasint,omitempty"`
}

// ContextWrite sets Key to Value, or removes Key if Delete.
type ContextWrite struct {
	Key    []byte `cbor:"1,keyasint" json:"key"`
	Value  []byte `cbor:"2,keyasint,omitempty" json:"value,omitempty"`
	Delete bool   `cbor:"3,keyasint,omitempty" json:"delete,omitempty"`
}

// contextMeta is a context in the replayed state.
type contextMeta struct {
	group   GroupID
	app     ApplicationID
	deleted bool
}

func contextID(ns NamespaceID, signer PublicKey, nonce uint64) ContextID {
	return ContextID(opDerivedID(labelContextID, ns, signer, nonce))
}

func (g *GroupOp) contextCount() int {
	n := 0
	for _, set := range []bool{g.ContextCreated != nil, g.ContextApplicationUpgraded != nil, g.ContextDeleted != nil, g.ContextCall != nil} {
		if set {
			n++
		}
	}
	return n
}

func (g *GroupOp) contextKind() string {
	switch {
	case g.ContextCreated != nil:
		return "ContextCreated"
	case g.ContextApplicationUpgraded != nil:
		return "ContextApplicationUpgraded"
	case g.ContextDeleted != nil:
		return "ContextDeleted"
	}
	return "ContextCall"
}

// ValidMethod reports whether s may name a method: 1 to 64 ASCII letters,
// digits and underscores.
func ValidMethod(s string) bool {
	if len(s) == 0 || len(s) > MaxContextMethod {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// CheckWrites checks a write set: bounded, keys sorted and distinct,
// removals carry no value.
func CheckWrites(ws []ContextWrite) error {
	if len(ws) > MaxContextWrites {
		return fmt.Errorf("%w: %d writes, limit %d", ErrMalformed, len(ws), MaxContextWrites)
	}
	total := 0
	for i, w := range ws {
		if len(w.Key) == 0 || len(w.Key) > MaxContextKey || len(w.Value) > MaxContextValue {
			return fmt.Errorf("%w: write %d: key of %d bytes or value of %d bytes out of bounds", ErrMalformed, i, len(w.Key), len(w.Value))
		}
		if w.Delete && len(w.Value) > 0 {
			return fmt.Errorf("%w: write %d removes a key but carries a value", ErrMalformed, i)
		}
		if i > 0 && bytes.Compare(ws[i-1].Key, w.Key) >= 0 {
			return fmt.Errorf("%w: writes not sorted by key and distinct", ErrMalformed)
		}
		total += len(w.Key) + len(w.Value)
	}
	if total > MaxContextWriteBytes {
		return fmt.Errorf("%w: writes of %d bytes, limit %d", ErrMalformed, total, MaxContextWriteBytes)
	}
	return nil
}

func (g *GroupOp) checkContext() error {
	switch {
	case g.ContextCreated != nil:
		c := g.ContextCreated
		if c.Application == (ApplicationID{}) || len(c.Init) > MaxContextInput {
			return fmt.Errorf("%w: ContextCreated without an application or with init arguments over %d bytes", ErrMalformed, MaxContextInput)
		}
		return CheckWrites(c.Writes)
	case g.ContextApplicationUpgraded != nil:
		if g.ContextApplicationUpgraded.Application == (ApplicationID{}) {
			return fmt.Errorf("%w: ContextApplicationUpgraded without an application", ErrMalformed)
		}
	case g.ContextCall != nil:
		c := g.ContextCall
		if !ValidMethod(c.Method) || len(c.Input) > MaxContextInput {
			return fmt.Errorf("%w: ContextCall with method %q or input of %d bytes", ErrMalformed, c.Method, len(c.Input))
		}
		return CheckWrites(c.Writes)
	}
	return nil
}

// applyContext applies a decrypted context op whose signer row is a writer
// of the op's group.
func (st *state) applyContext(n *opNode, row *memberRow) *RefusedError {
	b := &n.op.body
	id := n.op.id
	g := b.Group.Group
	op := n.plain
	admin := row.Role == RoleAdmin
	existing := func(c ContextID) (contextMeta, *RefusedError) {
		m, ok := st.contexts[c]
		switch {
		case !ok:
			return m, invalid(id, "context %s unknown", c.String()[:12])
		case m.deleted:
			return m, invalid(id, "context %s deleted", c.String()[:12])
		case m.group != g:
			return m, invalid(id, "context %s belongs to group %s", c.String()[:12], shortGroup(m.group))
		}
		return m, nil
	}
	switch {
	case op.ContextCreated != nil:
		cc := op.ContextCreated
		if !admin && !row.Caps.Has(CanCreateContext) {
			return unauthorized(id, "ContextCreated needs Admin or CAN_CREATE_CONTEXT")
		}
		if cc.Context != contextID(b.Namespace, b.Signer, b.Nonce) {
			return invalid(id, "context id does not derive from namespace, signer and nonce")
		}
		if _, ok := st.contexts[cc.Context]; ok {
			return invalid(id, "context %s exists", cc.Context.String()[:12])
		}
		st.contexts[cc.Context] = contextMeta{group: g, app: cc.Application}
	case op.ContextApplicationUpgraded != nil:
		up := op.ContextApplicationUpgraded
		m, rerr := existing(up.Context)
		if rerr != nil {
			return rerr
		}
		if !admin && !row.Caps.Has(ManageApplication) {
			return unauthorized(id, "ContextApplicationUpgraded needs Admin or MANAGE_APPLICATION")
		}
		m.app = up.Application
		st.contexts[up.Context] = m
	case op.ContextDeleted != nil:
		m, rerr := existing(op.ContextDeleted.Context)
		if rerr != nil {
			return rerr
		}
		if !admin && !row.Caps.Has(ManageApplication) {
			return unauthorized(id, "ContextDeleted needs Admin or MANAGE_APPLICATION")
		}
		m.deleted = true
		st.contexts[op.ContextDeleted.Context] = m
	case op.ContextCall != nil:
		if _, rerr := existing(op.ContextCall.Context); rerr != nil {
			return rerr
		}
	}
	return nil
}

// OpKey is an op's place in the namespace's total order: by height, then
// by id (doc.go, Convergence). It never changes once the op is admitted.
type OpKey struct {
	Height uint64
	ID     OpID
}

// Compare orders keys as the total order does.
func (k OpKey) Compare(o OpKey) int {
	if k.Height != o.Height {
		if k.Height < o.Height {
			return -1
		}
		return 1
	}
	return bytes.Compare(k.ID[:], o.ID[:])
}

func keyOf(n *opNode) OpKey { return OpKey{Height: n.height, ID: n.op.id} }

// ContextEntry is one context op that took effect, in the total order.
// Exactly one of the op fields is set; they are shared, never modify them.
type ContextEntry struct {
	Key      OpKey
	Signer   PublicKey
	Context  ContextID
	Created  *ContextCreated
	Upgraded *ContextApplicationUpgraded
	Deleted  *ContextDeleted
	Call     *ContextCall
}

func contextEntry(n *opNode) (ContextEntry, bool) {
	op := n.plain
	if op == nil || n.effect != nil || n.opaque || op.contextCount() == 0 {
		return ContextEntry{}, false
	}
	e := ContextEntry{Key: keyOf(n), Signer: n.op.body.Signer, Created: op.ContextCreated,
		Upgraded: op.ContextApplicationUpgraded, Deleted: op.ContextDeleted, Call: op.ContextCall}
	switch {
	case e.Created != nil:
		e.Context = e.Created.Context
	case e.Upgraded != nil:
		e.Context = e.Upgraded.Context
	case e.Deleted != nil:
		e.Context = e.Deleted.Context
	default:
		e.Context = e.Call.Context
	}
	return e, true
}

// ContextChanges returns what changed for contexts since its last call: every
// effective context op at or after the first position of the total order
// whose op or effect changed, and that position's key (From). Context ops
// before From are as they were at the last call. changed is false when
// nothing changed. It has one consumer (node/contexts): each call resets
// the mark. After a restart or a reload the first call returns every op.
func (e *Engine) ContextChanges(ns NamespaceID) (from OpKey, entries []ContextEntry, changed bool, err error) {
	sp, err := e.space(ns)
	if err != nil {
		return from, nil, false, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	d := sp.d
	if d.ctxDirty >= len(d.order) {
		return from, nil, false, nil
	}
	from = keyOf(d.order[d.ctxDirty])
	for _, n := range d.order[d.ctxDirty:] {
		if ce, ok := contextEntry(n); ok {
			entries = append(entries, ce)
		}
	}
	d.ctxDirty = len(d.order)
	return from, entries, true, nil
}

// ContextInfo describes a context as the replayed state has it.
type ContextInfo struct {
	ID          ContextID     `json:"id"`
	Group       GroupID       `json:"group"`
	Application ApplicationID `json:"application"`
	Deleted     bool          `json:"deleted,omitempty"`
}

// Contexts lists the namespace's contexts, deleted ones included, by id.
func (e *Engine) Contexts(ns NamespaceID) ([]ContextInfo, error) {
	var out []ContextInfo
	err := e.readTip(ns, func(_ *space, st *state) error {
		for id, m := range st.contexts {
			out = append(out, ContextInfo{ID: id, Group: m.group, Application: m.app, Deleted: m.deleted})
		}
		return nil
	})
	slices.SortFunc(out, func(a, b ContextInfo) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return out, err
}

// ErrUnknownContext: no such context, or it was deleted.
var ErrUnknownContext = errors.New("governance: unknown or deleted context")

// ContextAccess describes a context and this node's standing in its group.
type ContextAccess struct {
	ContextInfo
	// Me is this node's namespace identity key.
	Me PublicKey
	// Role is this node's effective role in the context's group (0: none).
	Role Role
}

// Context returns a live context and this node's role in its group. With
// write it fails, as every peer would refuse the op, unless this node may
// author calls there (ErrReadOnly for ReadOnly and ReadOnlyTee).
func (e *Engine) Context(ns NamespaceID, c ContextID, write bool) (*ContextAccess, error) {
	var out *ContextAccess
	err := e.readTip(ns, func(sp *space, st *state) error {
		m, ok := st.contexts[c]
		if !ok || m.deleted {
			return fmt.Errorf("%w: %s", ErrUnknownContext, c)
		}
		me := sp.id.public().Signing
		out = &ContextAccess{ContextInfo: ContextInfo{ID: c, Group: m.group, Application: m.app}, Me: me}
		if r, _ := st.effective(m.group, me); r != nil {
			out.Role = r.Role
		}
		if !write {
			if out.Role == 0 {
				return fmt.Errorf("%w: this node is not a member of context %s's group", ErrNotMember, c.String()[:12])
			}
			return nil
		}
		if _, rerr := st.writer(m.group, me, OpID{}); rerr != nil {
			if rerr.Reason == ReasonReadOnly {
				return fmt.Errorf("%w: this node is %s in the context's group; it answers queries but never calls that change state", ErrReadOnly, out.Role)
			}
			return rerr.Err
		}
		return nil
	})
	return out, err
}

// MayFetchApplication reports whether member may fetch app's bytes from
// this node: it is a member (any role) of the group of a context of ns that
// uses or used app.
func (e *Engine) MayFetchApplication(ns NamespaceID, member PublicKey, app ApplicationID) bool {
	ok := false
	_ = e.readTip(ns, func(sp *space, st *state) error {
		for _, n := range sp.d.order {
			ce, isCtx := contextEntry(n)
			if !isCtx {
				continue
			}
			var used ApplicationID
			switch {
			case ce.Created != nil:
				used = ce.Created.Application
			case ce.Upgraded != nil:
				used = ce.Upgraded.Application
			default:
				continue
			}
			if m, have := st.contexts[ce.Context]; used == app && have {
				if r, _ := st.effective(m.group, member); r != nil {
					ok = true
					return nil
				}
			}
		}
		return nil
	})
	return ok
}

// ApplicationsUsed lists every application a context of ns uses or used.
func (e *Engine) ApplicationsUsed(ns NamespaceID) ([]ApplicationID, error) {
	seen := map[ApplicationID]bool{}
	err := e.readTip(ns, func(sp *space, _ *state) error {
		for _, n := range sp.d.order {
			if ce, ok := contextEntry(n); ok {
				switch {
				case ce.Created != nil:
					seen[ce.Created.Application] = true
				case ce.Upgraded != nil:
					seen[ce.Upgraded.Application] = true
				}
			}
		}
		return nil
	})
	out := make([]ApplicationID, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b ApplicationID) int { return bytes.Compare(a[:], b[:]) })
	return out, err
}

// requireContext checks, while authoring, that c is live and returns it.
func (a *authoring) requireContext(c ContextID) (contextMeta, *memberRow, error) {
	m, ok := a.tip().contexts[c]
	if !ok || m.deleted {
		return m, nil, fmt.Errorf("%w: %s", ErrUnknownContext, c)
	}
	row, err := a.requireWriter(m.group)
	return m, row, err
}

// CreateContext creates a context of app in group g. init is the init
// method's input and writes what it wrote (node/contexts ran it). persist,
// if set, writes the caller's rows in the same store transaction as the op,
// given the op's place in the order.
func (e *Engine) CreateContext(ctx context.Context, ns NamespaceID, g GroupID, app ApplicationID, init []byte, writes []ContextWrite,
	persist func(tx *store.Tx, c ContextID, key OpKey) error) (ContextID, [][]byte, error) {
	var c ContextID
	wires, err := e.author(ctx, ns, func(a *authoring) error {
		row, err := a.requireWriter(g)
		if err != nil {
			return err
		}
		if row.Role != RoleAdmin && !row.Caps.Has(CanCreateContext) {
			return fmt.Errorf("%w: creating a context needs Admin or CAN_CREATE_CONTEXT", ErrNotAuthorized)
		}
		c = contextID(ns, a.me.Signing, a.nextNonce())
		n, err := a.group(g, &GroupOp{ContextCreated: &ContextCreated{Context: c, Application: app, Init: init, Writes: writes}})
		if err != nil {
			return err
		}
		if persist != nil {
			key := keyOf(n)
			a.ch.extra = func(tx *store.Tx) error { return persist(tx, c, key) }
		}
		return nil
	})
	return c, wires, err
}

// UpgradeContext points context c at app (Admin or MANAGE_APPLICATION).
func (e *Engine) UpgradeContext(ctx context.Context, ns NamespaceID, c ContextID, app ApplicationID) ([][]byte, error) {
	return e.author(ctx, ns, func(a *authoring) error {
		m, row, err := a.requireContext(c)
		if err != nil {
			return err
		}
		if row.Role != RoleAdmin && !row.Caps.Has(ManageApplication) {
			return fmt.Errorf("%w: upgrading an application needs Admin or MANAGE_APPLICATION", ErrNotAuthorized)
		}
		_, err = a.group(m.group, &GroupOp{ContextApplicationUpgraded: &ContextApplicationUpgraded{Context: c, Application: app}})
		return err
	})
}

// DeleteContext deletes context c (Admin or MANAGE_APPLICATION).
func (e *Engine) DeleteContext(ctx context.Context, ns NamespaceID, c ContextID) ([][]byte, error) {
	return e.author(ctx, ns, func(a *authoring) error {
		m, row, err := a.requireContext(c)
		if err != nil {
			return err
		}
		if row.Role != RoleAdmin && !row.Caps.Has(ManageApplication) {
			return fmt.Errorf("%w: deleting a context needs Admin or MANAGE_APPLICATION", ErrNotAuthorized)
		}
		_, err = a.group(m.group, &GroupOp{ContextDeleted: &ContextDeleted{Context: c}})
		return err
	})
}

// Call records a mutating call this node executed. persist, if set, writes
// the resulting state in the same store transaction as the op, given the
// op's place in the total order (the last place: its parents are this
// node's heads).
func (e *Engine) Call(ctx context.Context, ns NamespaceID, call *ContextCall, persist func(tx *store.Tx, key OpKey) error) ([][]byte, OpKey, error) {
	var p func(tx *store.Tx, keys []OpKey) error
	if persist != nil {
		p = func(tx *store.Tx, keys []OpKey) error { return persist(tx, keys[0]) }
	}
	wires, keys, err := e.CallBatch(ctx, ns, []*ContextCall{call}, p)
	if err != nil {
		return nil, OpKey{}, err
	}
	return wires, keys[0], nil
}

// CallBatch records several calls, in order, as a chain of ops committed in
// one store transaction (one fdatasync for all): group commit of
// concurrent calls. It returns each op's wire bytes and key, in order.
func (e *Engine) CallBatch(ctx context.Context, ns NamespaceID, calls []*ContextCall, persist func(tx *store.Tx, keys []OpKey) error) ([][]byte, []OpKey, error) {
	keys := make([]OpKey, 0, len(calls))
	wires, err := e.author(ctx, ns, func(a *authoring) error {
		for _, call := range calls {
			m, _, err := a.requireContext(call.Context)
			if err != nil {
				return err
			}
			n, err := a.group(m.group, &GroupOp{ContextCall: call})
			if err != nil {
				return err
			}
			keys = append(keys, keyOf(n))
		}
		if persist != nil {
			a.ch.extra = func(tx *store.Tx) error { return persist(tx, keys) }
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return wires, keys, nil
}

// ContextEntries returns every effective op of context c, in the total
// order: its whole history (node/contexts rebuilds from it when a change
// reaches further back than it can undo).
func (e *Engine) ContextEntries(ns NamespaceID, c ContextID) ([]ContextEntry, error) {
	var out []ContextEntry
	err := e.readTip(ns, func(sp *space, _ *state) error {
		for _, n := range sp.d.order {
			if ce, ok := contextEntry(n); ok && ce.Context == c {
				out = append(out, ce)
			}
		}
		return nil
	})
	return out, err
}
