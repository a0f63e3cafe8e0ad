package governance

import (
	"bytes"
	"slices"
)

// MarshalText gives roles their names in JSON.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses a role name.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	*r = v
	return err
}

// MemberInfo is one member of a group as the replayed state has it.
type MemberInfo struct {
	Member       PublicKey    `json:"member"`
	Keys         MemberKeys   `json:"-"`
	Role         Role         `json:"role"`
	Capabilities Capabilities `json:"capabilities"`
	// CapabilityNames spells Capabilities out.
	CapabilityNames []string `json:"capabilityNames"`
	// InheritedFrom is the ancestor group whose row gives the role; zero for
	// a direct row.
	InheritedFrom *GroupID `json:"inheritedFrom,omitempty"`
}

// GroupInfo describes one group.
type GroupInfo struct {
	ID GroupID `json:"id"`
	// Parent is nil for the root group.
	Parent *GroupID `json:"parent,omitempty"`
	// DirectMembers counts the group's own rows.
	DirectMembers int `json:"directMembers"`
	// KeyEpochs counts the group's keys (one plus one per removal).
	KeyEpochs int `json:"keyEpochs"`
	// HaveCurrentKey reports whether this node holds the newest key.
	HaveCurrentKey bool `json:"haveCurrentKey"`
}

// NamespaceInfo summarises a namespace on this node.
type NamespaceInfo struct {
	ID NamespaceID `json:"id"`
	// Identity is this node's namespace identity; its String form is what an
	// admin passes to `member add`.
	Identity    string    `json:"identity"`
	IdentityKey PublicKey `json:"identityKey"`
	// Role is this node's role in the root group, or 0 (omitted) if it is
	// not a member there.
	Role   Role        `json:"role,omitempty"`
	Groups []GroupInfo `json:"groups"`
	Heads  []OpID      `json:"heads"`
	Ops    int         `json:"ops"`
	// Pending counts ops waiting for parents; Missing the parents to fetch.
	Pending int `json:"pending"`
	Missing int `json:"missing"`
	// Complete is false while ops sealed under keys this node lacks exist:
	// their content (and so part of the state) is unknown here.
	Complete  bool `json:"complete"`
	HasPolicy bool `json:"hasPolicy"`
}

func sortGroups(ids []GroupID) {
	slices.SortFunc(ids, func(a, b GroupID) int { return bytes.Compare(a[:], b[:]) })
}

// Namespace returns a summary of ns.
func (e *Engine) Namespace(ns NamespaceID) (*NamespaceInfo, error) {
	var info *NamespaceInfo
	err := e.readTip(ns, func(sp *space, st *state) error {
		me := sp.id.public()
		info = &NamespaceInfo{ID: ns, Identity: me.String(), IdentityKey: me.Signing, Heads: sp.heads(),
			Ops: len(sp.d.nodes), Pending: len(sp.pending), Missing: len(sp.missing()),
			Complete: !st.incomplete, HasPolicy: st.policy != nil, Groups: groupInfos(sp, st)}
		if r, _ := st.effective(ns.Root(), me.Signing); r != nil {
			info.Role = r.Role
		}
		return nil
	})
	return info, err
}

func groupInfos(sp *space, st *state) []GroupInfo {
	ids := make([]GroupID, 0, len(st.groups))
	for id := range st.groups {
		ids = append(ids, id)
	}
	sortGroups(ids)
	out := make([]GroupInfo, 0, len(ids))
	for _, id := range ids {
		gs := st.groups[id]
		gi := GroupInfo{ID: id, DirectMembers: len(gs.members), KeyEpochs: len(gs.keyIDs)}
		if !gs.root {
			p := gs.parent
			gi.Parent = &p
		}
		if n := len(gs.keyIDs); n > 0 {
			_, gi.HaveCurrentKey = sp.d.keys[gs.keyIDs[n-1]]
		}
		out = append(out, gi)
	}
	return out
}

// Groups lists the namespace's groups, root included, sorted by id.
func (e *Engine) Groups(ns NamespaceID) ([]GroupInfo, error) {
	var out []GroupInfo
	err := e.readTip(ns, func(sp *space, st *state) error {
		out = groupInfos(sp, st)
		return nil
	})
	return out, err
}

// Members lists everyone with a role in g (direct and inherited rows),
// sorted by key. It fails with ErrUnknownGroup for a group the replayed
// state does not have.
func (e *Engine) Members(ns NamespaceID, g GroupID) ([]MemberInfo, error) {
	var out []MemberInfo
	err := e.readTip(ns, func(_ *space, st *state) error {
		var err error
		out, err = memberInfos(st, g)
		return err
	})
	return out, err
}

func memberInfos(st *state, g GroupID) ([]MemberInfo, error) {
	if st.groups[g] == nil {
		return nil, ErrUnknownGroup
	}
	var out []MemberInfo
	for _, r := range sortedMembers(st, g) {
		mi := MemberInfo{Member: r.Keys.Signing, Keys: r.Keys, Role: r.Role, Capabilities: r.Caps, CapabilityNames: r.Caps.Names()}
		if _, inherited := st.effective(g, r.Keys.Signing); inherited {
			for cur := st.groups[g]; cur != nil && !cur.root; cur = st.groups[cur.parent] {
				if st.groups[cur.parent].members[r.Keys.Signing] == r {
					p := cur.parent
					mi.InheritedFrom = &p
					break
				}
			}
		}
		out = append(out, mi)
	}
	return out, nil
}

// OpRecord is one admitted op with its effect in the replayed state.
type OpRecord struct {
	OpSummary
	// Kind is the decrypted kind when this node holds the key.
	Kind string `json:"kind"`
	// Effect is "applied", "skeleton" (sealed under a key this node lacks)
	// or the refusal that made it a no-op in the total order.
	Effect      string `json:"effect"`
	Provisional bool   `json:"provisional,omitempty"`
}

// OpLog lists the admitted ops of ns in the total order.
func (e *Engine) OpLog(ns NamespaceID) ([]OpRecord, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.d.ensureTip()
	out := make([]OpRecord, 0, len(sp.d.order))
	for _, n := range sp.d.order {
		r := OpRecord{OpSummary: *n.op.summary(), Provisional: n.provisional, Effect: "applied"}
		r.Kind = r.OpSummary.Kind
		if n.plain != nil {
			r.Kind = n.plain.kind()
		}
		switch {
		case n.opaque:
			r.Effect = "skeleton"
		case n.effect != nil:
			r.Effect = n.effect.Error()
		}
		out = append(out, r)
	}
	return out, nil
}
