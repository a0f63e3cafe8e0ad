package governance

import (
	"fmt"
	"github.com/fleetbox/fleetbox/attest"
	"maps"
	"slices"
)

// memberRow is one direct membership row.
type memberRow struct {
	Keys MemberKeys
	Role Role
	Caps Capabilities
}

type groupState struct {
	id      GroupID
	parent  GroupID
	root    bool
	members map[PublicKey]*memberRow
	// keyIDs are the group's keys, oldest first; the last is current.
	keyIDs []KeyID
}

// state is the namespace state a replay of ops produces.
type state struct {
	ns      NamespaceID
	genesis bool
	groups  map[GroupID]*groupState
	policy  []byte // TeeAdmissionPolicy JSON, nil until set
	// polCache is policy decoded once, shared by clones (tee.go).
	polCache *parsedPolicy
	// nonces is the highest nonce applied per signer (skeletons included).
	nonces map[PublicKey]uint64
	// incomplete is set once an op whose group key is not held was replayed:
	// membership facts may then be missing.
	incomplete bool
	// quotes records, namespace-wide and for good, every quote hash that
	// admitted a fleet replica, and whom it admitted (tee.go).
	quotes map[attest.QuoteHash]PublicKey
	// admissions is the latest MemberJoinedViaTeeAttestation per replica,
	// kept after removal, so the fleet can be audited against a changed
	// policy (tee.go). Records are never mutated, so clones share them.
	admissions map[PublicKey]*MemberJoinedViaTeeAttestation
	// contexts are the namespace's contexts (contexts.go).
	contexts map[ContextID]contextMeta
}

func newState(ns NamespaceID) *state {
	return &state{ns: ns, groups: map[GroupID]*groupState{}, nonces: map[PublicKey]uint64{}, quotes: map[attest.QuoteHash]PublicKey{},
		admissions: map[PublicKey]*MemberJoinedViaTeeAttestation{}, contexts: map[ContextID]contextMeta{}}
}

// clone returns a deep copy (policy bytes are never mutated, so shared).
func (st *state) clone() *state {
	c := &state{ns: st.ns, genesis: st.genesis, policy: st.policy, polCache: st.polCache, incomplete: st.incomplete,
		groups: make(map[GroupID]*groupState, len(st.groups)), nonces: maps.Clone(st.nonces), quotes: maps.Clone(st.quotes),
		admissions: maps.Clone(st.admissions), contexts: maps.Clone(st.contexts)}
	for id, g := range st.groups {
		ng := &groupState{id: g.id, parent: g.parent, root: g.root, keyIDs: slices.Clone(g.keyIDs),
			members: make(map[PublicKey]*memberRow, len(g.members))}
		for pk, r := range g.members {
			row := *r
			ng.members[pk] = &row
		}
		c.groups[id] = ng
	}
	return c
}

// effective returns the row that gives pk its role in g: a direct row in g,
// else the nearest ancestor's row. ReadOnlyTee rows are never inherited.
func (st *state) effective(g GroupID, pk PublicKey) (*memberRow, bool) {
	for depth := 0; depth < 1024; depth++ {
		gs := st.groups[g]
		if gs == nil {
			return nil, false
		}
		if r := gs.members[pk]; r != nil && (depth == 0 || r.Role != RoleReadOnlyTee) {
			return r, depth > 0
		}
		if gs.root {
			return nil, false
		}
		g = gs.parent
	}
	return nil, false
}

// effectiveMembers lists everyone with a role in g, nearest row first.
func (st *state) effectiveMembers(g GroupID) map[PublicKey]*memberRow {
	out := map[PublicKey]*memberRow{}
	for depth := 0; depth < 1024; depth++ {
		gs := st.groups[g]
		if gs == nil {
			break
		}
		for pk, r := range gs.members {
			if _, seen := out[pk]; !seen && (depth == 0 || r.Role != RoleReadOnlyTee) {
				out[pk] = r
			}
		}
		if gs.root {
			break
		}
		g = gs.parent
	}
	return out
}

func (st *state) descendants(g GroupID) []GroupID {
	out := []GroupID{g}
	for i := 0; i < len(out); i++ {
		for id, gs := range st.groups {
			if !gs.root && gs.parent == out[i] {
				out = append(out, id)
			}
		}
	}
	return out
}

// isDescendant reports whether g is anc or lies below it.
func (st *state) isDescendant(g, anc GroupID) bool {
	for depth := 0; depth < 1024; depth++ {
		gs := st.groups[g]
		if gs == nil {
			return false
		}
		if g == anc {
			return true
		}
		if gs.root {
			return false
		}
		g = gs.parent
	}
	return false
}

func (st *state) rootAdmins() int {
	n := 0
	for _, r := range st.groups[st.ns.Root()].members {
		if r.Role == RoleAdmin {
			n++
		}
	}
	return n
}

// writer checks that pk may author ops in g and returns its row.
func (st *state) writer(g GroupID, pk PublicKey, id OpID) (*memberRow, *RefusedError) {
	r, _ := st.effective(g, pk)
	if r == nil {
		return nil, refused(id, ReasonNotMember, fmt.Errorf("%w: signer %s in group %s", ErrNotMember, shortKey(pk), shortGroup(g)))
	}
	if !r.Role.CanWrite() {
		return nil, refused(id, ReasonReadOnly, fmt.Errorf("%w: signer is %s", ErrReadOnly, r.Role))
	}
	return r, nil
}

func unauthorized(id OpID, format string, args ...any) *RefusedError {
	return refused(id, ReasonUnauthorized, fmt.Errorf("%w: "+format, append([]any{ErrNotAuthorized}, args...)...))
}

func invalid(id OpID, format string, args ...any) *RefusedError {
	return refused(id, ReasonInvalid, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
}

// apply applies n to st if it is authorized and valid there. It either
// changes st fully or not at all. An encrypted op whose key is not held
// (n.opaque) only advances the signer's nonce and marks st incomplete.
func (st *state) apply(n *opNode) *RefusedError {
	b := &n.op.body
	id := n.op.id
	if b.Nonce <= st.nonces[b.Signer] {
		return refused(id, ReasonNonce, fmt.Errorf("%w: nonce %d, signer's previous %d", ErrNonce, b.Nonce, st.nonces[b.Signer]))
	}
	var err *RefusedError
	switch {
	case b.Root != nil && b.Root.NamespaceCreated != nil:
		err = st.applyGenesis(n)
	case !st.genesis:
		err = invalid(id, "no NamespaceCreated among its ancestors")
	case b.Root != nil:
		err = st.applyRoot(n)
	case n.opaque:
		if st.groups[b.Group.Group] == nil && !st.incomplete {
			err = invalid(id, "unknown group %s", shortGroup(b.Group.Group))
			break
		}
		st.incomplete = true
	case n.badContent != nil:
		err = refused(id, ReasonMalformed, n.badContent)
	default:
		err = st.applyGroup(n)
	}
	if err != nil {
		return err
	}
	st.nonces[b.Signer] = b.Nonce
	return nil
}

func (st *state) applyGenesis(n *opNode) *RefusedError {
	b := &n.op.body
	nc := b.Root.NamespaceCreated
	if st.genesis {
		return invalid(n.op.id, "second NamespaceCreated")
	}
	if namespaceID(b.Signer, nc.Salt) != b.Namespace || b.Namespace != st.ns {
		return invalid(n.op.id, "namespace id does not derive from the creator key and salt")
	}
	st.genesis = true
	st.groups[st.ns.Root()] = &groupState{id: st.ns.Root(), root: true, keyIDs: []KeyID{nc.KeyID},
		members: map[PublicKey]*memberRow{b.Signer: {
			Keys: MemberKeys{Signing: b.Signer, Agreement: nc.Agreement}, Role: RoleAdmin, Caps: AllCapabilities}}}
	return nil
}

// applyRoot is the switch over cleartext root ops. New root ops (the next
// issue's MemberJoinedViaTeeAttestation) get a case here.
func (st *state) applyRoot(n *opNode) *RefusedError {
	b := &n.op.body
	id := n.op.id
	r := b.Root
	switch {
	case r.GroupCreated != nil:
		gc := r.GroupCreated
		parent := st.groups[gc.Parent]
		if parent == nil {
			return invalid(id, "parent group %s unknown", shortGroup(gc.Parent))
		}
		row, rerr := st.writer(gc.Parent, b.Signer, id)
		if rerr != nil {
			return rerr
		}
		if row.Role != RoleAdmin && !row.Caps.Has(CanCreateSubgroup) {
			return unauthorized(id, "GroupCreated needs Admin or CAN_CREATE_SUBGROUP in the parent")
		}
		if gc.Group != groupID(b.Namespace, b.Signer, b.Nonce) {
			return invalid(id, "group id does not derive from namespace, signer and nonce")
		}
		if st.groups[gc.Group] != nil {
			return invalid(id, "group %s exists", shortGroup(gc.Group))
		}
		st.groups[gc.Group] = &groupState{id: gc.Group, parent: gc.Parent, keyIDs: []KeyID{gc.KeyID},
			members: map[PublicKey]*memberRow{}}
		return nil

	case r.KeyDelivery != nil:
		kd := r.KeyDelivery
		for _, ref := range kd.Keys {
			gs := st.groups[ref.Group]
			if gs == nil {
				return invalid(id, "KeyDelivery for unknown group %s", shortGroup(ref.Group))
			}
			if _, rerr := st.writer(ref.Group, b.Signer, id); rerr != nil {
				return rerr
			}
			if rr, _ := st.effective(ref.Group, kd.Recipient); rr == nil || rr.Keys.Agreement != kd.RecipientAgreement {
				return invalid(id, "KeyDelivery recipient %s is not a member of group %s with that agreement key", shortKey(kd.Recipient), shortGroup(ref.Group))
			}
			if !slices.Contains(gs.keyIDs, ref.KeyID) {
				return invalid(id, "KeyDelivery of key %s unknown in group %s", ref.KeyID.String()[:12], shortGroup(ref.Group))
			}
		}
		return nil // its effect is local: the recipient installs the keys

	case r.TeeAdmissionPolicySet != nil:
		row, rerr := st.writer(st.ns.Root(), b.Signer, id)
		if rerr != nil {
			return rerr
		}
		if row.Role != RoleAdmin {
			return unauthorized(id, "TeeAdmissionPolicySet needs Admin in the root group")
		}
		st.policy, st.polCache = r.TeeAdmissionPolicySet.Policy, &parsedPolicy{}
		return nil

	case r.MemberJoinedViaTeeAttestation != nil:
		return st.applyTeeJoin(n)
	}
	return invalid(id, "unknown root op")
}

// applyGroup is the switch over decrypted group ops. Context ops (later
// issues) get cases here.
func (st *state) applyGroup(n *opNode) *RefusedError {
	b := &n.op.body
	id := n.op.id
	g := b.Group.Group
	gs := st.groups[g]
	if gs == nil {
		return invalid(id, "unknown group %s", shortGroup(g))
	}
	if !slices.Contains(gs.keyIDs, b.Group.KeyID) {
		return invalid(id, "sealed under a key that is not group %s's", shortGroup(g))
	}
	row, rerr := st.writer(g, b.Signer, id)
	if rerr != nil {
		return rerr
	}
	admin := row.Role == RoleAdmin
	manager := admin || row.Caps.Has(ManageMembers)
	op := n.plain
	if op.contextCount() > 0 {
		return st.applyContext(n, row)
	}
	switch {
	case op.MemberAdded != nil:
		ma := op.MemberAdded
		if !manager {
			return unauthorized(id, "MemberAdded needs Admin or MANAGE_MEMBERS")
		}
		if ma.Role == RoleReadOnlyTee {
			return unauthorized(id, "ReadOnlyTee is granted only by MemberJoinedViaTeeAttestation")
		}
		if !admin && (ma.Role == RoleAdmin || !row.Caps.Has(ma.Capabilities)) {
			return unauthorized(id, "a non-admin cannot grant Admin or capabilities it lacks")
		}
		if gs.members[ma.Member.Signing] != nil {
			return invalid(id, "member %s already in group %s", shortKey(ma.Member.Signing), shortGroup(g))
		}
		gs.members[ma.Member.Signing] = &memberRow{Keys: ma.Member, Role: ma.Role, Caps: ma.Capabilities}
		return nil

	case op.MemberRemoved != nil:
		mr := op.MemberRemoved
		target := gs.members[mr.Member]
		if !manager {
			return unauthorized(id, "MemberRemoved needs Admin or MANAGE_MEMBERS")
		}
		if target == nil {
			return invalid(id, "member %s not in group %s", shortKey(mr.Member), shortGroup(g))
		}
		if !admin && target.Role == RoleAdmin {
			return unauthorized(id, "a non-admin cannot remove an Admin")
		}
		if gs.root && target.Role == RoleAdmin && st.rootAdmins() == 1 {
			return invalid(id, "cannot remove the last Admin of the namespace")
		}
		for _, ref := range mr.SubgroupKeys {
			if ref.Group == g || !st.isDescendant(ref.Group, g) {
				return invalid(id, "MemberRemoved rotates the key of %s, not a subgroup of %s", shortGroup(ref.Group), shortGroup(g))
			}
		}
		delete(gs.members, mr.Member)
		if !slices.Contains(gs.keyIDs, mr.NewKeyID) {
			gs.keyIDs = append(gs.keyIDs, mr.NewKeyID)
		}
		for _, ref := range mr.SubgroupKeys {
			if sg := st.groups[ref.Group]; !slices.Contains(sg.keyIDs, ref.KeyID) {
				sg.keyIDs = append(sg.keyIDs, ref.KeyID)
			}
		}
		return nil

	case op.MemberRoleSet != nil:
		rs := op.MemberRoleSet
		target := gs.members[rs.Member]
		if !admin {
			return unauthorized(id, "MemberRoleSet needs Admin")
		}
		if rs.Role == RoleReadOnlyTee {
			return unauthorized(id, "ReadOnlyTee is granted only by MemberJoinedViaTeeAttestation")
		}
		if target == nil {
			return invalid(id, "member %s not in group %s", shortKey(rs.Member), shortGroup(g))
		}
		if target.Role == RoleReadOnlyTee {
			return unauthorized(id, "a ReadOnlyTee member's role cannot be changed")
		}
		if gs.root && target.Role == RoleAdmin && rs.Role != RoleAdmin && st.rootAdmins() == 1 {
			return invalid(id, "cannot demote the last Admin of the namespace")
		}
		target.Role = rs.Role
		return nil

	case op.MemberCapabilitiesSet != nil:
		cs := op.MemberCapabilitiesSet
		target := gs.members[cs.Member]
		if !manager {
			return unauthorized(id, "MemberCapabilitiesSet needs Admin or MANAGE_MEMBERS")
		}
		if target == nil {
			return invalid(id, "member %s not in group %s", shortKey(cs.Member), shortGroup(g))
		}
		if !admin && (target.Role == RoleAdmin || !row.Caps.Has(cs.Capabilities)) {
			return unauthorized(id, "a non-admin cannot change an Admin or grant capabilities it lacks")
		}
		target.Caps = cs.Capabilities
		return nil
	}
	return invalid(id, "unknown group op")
}

func shortKey(p PublicKey) string { return p.String()[:12] }
func shortGroup(g GroupID) string { return g.String()[:12] }
