package governance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/fleetbox/fleetbox/attest"
)

// authoring builds this node's ops under the namespace lock. Each op is
// signed with parents = the current heads and the next nonce, then admitted
// exactly as a received op would be, so an op this node would refuse on
// receipt is never returned for publishing.
type authoring struct {
	e     *Engine
	ns    NamespaceID
	sp    *space
	me    MemberKeys
	ch    changes
	wires [][]byte
}

// author runs build under the namespace lock and commits everything it
// produced in one store transaction. Nothing is stored or returned if build
// fails.
func (e *Engine) author(ctx context.Context, ns NamespaceID, build func(a *authoring) error) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.gone {
		return nil, fmt.Errorf("authoring in namespace %s: %w: forgotten", ns, ErrUnknownNamespace)
	}
	sp.d.ensureTip()
	if sp.d.genesis == nil {
		return nil, fmt.Errorf("authoring in namespace %s: %w: not synced yet (no NamespaceCreated)", ns, ErrInvalid)
	}
	if sp.d.tip.incomplete {
		return nil, fmt.Errorf("authoring in namespace %s: %w: some group keys are missing, so the state is incomplete", ns, ErrNoKey)
	}
	a := &authoring{e: e, ns: ns, sp: sp, me: sp.id.public()}
	if err := build(a); err != nil {
		// Undo in memory: reload this namespace's DAG from the store.
		if fresh, lerr := e.load(ns); lerr == nil {
			sp.d = fresh.d
		}
		return nil, err
	}
	if err := e.commit(ns, sp, &a.ch); err != nil {
		return nil, err
	}
	return a.wires, nil
}

func (a *authoring) tip() *state {
	a.sp.d.ensureTip()
	return a.sp.d.tip
}

// requireWriter refuses locally, before signing, what every peer would
// refuse: non-members and read-only roles.
func (a *authoring) requireWriter(g GroupID) (*memberRow, error) {
	if a.tip().groups[g] == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownGroup, g)
	}
	row, rerr := a.tip().writer(g, a.me.Signing, OpID{})
	if rerr != nil {
		return nil, rerr.Err
	}
	return row, nil
}

func (a *authoring) nextNonce() uint64 { return a.sp.d.maxNonce[a.me.Signing] + 1 }

func (a *authoring) body() *opBody {
	return &opBody{Namespace: a.ns, Parents: a.sp.heads(), Signer: a.me.Signing, Nonce: a.nextNonce()}
}

func (a *authoring) publish(body *opBody) (*opNode, error) {
	op, err := signOp(body, a.sp.id.signing)
	if err != nil {
		return nil, err
	}
	n, rerr := a.sp.d.admit(op, true, false)
	if rerr != nil {
		a.e.m.refused.WithLabelValues(string(rerr.Reason)).Inc()
		return nil, rerr
	}
	a.e.m.applied.Inc()
	a.ch.ops = append(a.ch.ops, n)
	a.wires = append(a.wires, op.wire)
	return n, nil
}

func (a *authoring) root(op *RootOp) (*opNode, error) {
	b := a.body()
	b.Root = op
	return a.publish(b)
}

// group seals op with the newest key of g that this node holds.
func (a *authoring) group(g GroupID, op *GroupOp) (*opNode, error) {
	gs := a.tip().groups[g]
	if gs == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownGroup, g)
	}
	var key *groupKey
	for i := len(gs.keyIDs) - 1; i >= 0 && key == nil; i-- {
		if k, ok := a.sp.d.keys[gs.keyIDs[i]]; ok {
			key = &k
		}
	}
	if key == nil {
		return nil, fmt.Errorf("%w: group %s", ErrNoKey, g)
	}
	b := a.body()
	b.Group = &SealedGroupOp{Group: g}
	if err := sealGroupOp(b, key, op, a.e.rand); err != nil {
		return nil, err
	}
	return a.publish(b)
}

func (a *authoring) newKey() (groupKey, error) {
	k, err := newGroupKey(a.e.rand)
	if err != nil {
		return k, err
	}
	a.sp.d.installKey(k)
	a.ch.keys = append(a.ch.keys, k)
	return k, nil
}

// deliver publishes KeyDelivery ops of the given held keys to one member,
// in chunks of MaxKeyRefs.
func (a *authoring) deliver(to MemberKeys, refs []KeyRef) error {
	for len(refs) > 0 {
		chunk := refs[:min(len(refs), MaxKeyRefs)]
		refs = refs[len(chunk):]
		keys := make([]groupKey, len(chunk))
		for i, r := range chunk {
			keys[i] = a.sp.d.keys[r.KeyID]
		}
		kd, err := wrapKeys(a.ns, a.sp.id, to, chunk, keys, a.e.rand)
		if err != nil {
			return err
		}
		if _, err := a.root(&RootOp{KeyDelivery: kd}); err != nil {
			return fmt.Errorf("delivering keys to %s: %w", shortKey(to.Signing), err)
		}
	}
	return nil
}

// heldKeys lists the keys this node holds for the groups, oldest first.
func (a *authoring) heldKeys(groups []GroupID) []KeyRef {
	var refs []KeyRef
	for _, g := range groups {
		for _, id := range a.tip().groups[g].keyIDs {
			if _, ok := a.sp.d.keys[id]; ok {
				refs = append(refs, KeyRef{Group: g, KeyID: id})
			}
		}
	}
	return refs
}

// sortedMembers returns effective members of g in key order, for
// deterministic delivery order.
func sortedMembers(st *state, g GroupID) []*memberRow {
	m := st.effectiveMembers(g)
	out := make([]*memberRow, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y *memberRow) int { return bytes.Compare(x.Keys.Signing[:], y.Keys.Signing[:]) })
	return out
}

// CreateGroup creates a subgroup of parent with a fresh group key, delivered
// to every member the subgroup inherits. It returns the new group's id and
// the ops to publish, parents first.
func (e *Engine) CreateGroup(ctx context.Context, ns NamespaceID, parent GroupID) (GroupID, [][]byte, error) {
	var g GroupID
	wires, err := e.author(ctx, ns, func(a *authoring) error {
		row, err := a.requireWriter(parent)
		if err != nil {
			return err
		}
		if row.Role != RoleAdmin && !row.Caps.Has(CanCreateSubgroup) {
			return fmt.Errorf("%w: GroupCreated needs Admin or CAN_CREATE_SUBGROUP", ErrNotAuthorized)
		}
		k, err := a.newKey()
		if err != nil {
			return err
		}
		g = groupID(ns, a.me.Signing, a.nextNonce())
		if _, err := a.root(&RootOp{GroupCreated: &GroupCreated{Group: g, Parent: parent, KeyID: k.id()}}); err != nil {
			return err
		}
		for _, r := range sortedMembers(a.tip(), g) {
			if r.Keys.Signing == a.me.Signing {
				continue
			}
			if err := usableAgreementKey(a.sp.id, r.Keys.Agreement); err != nil {
				// One bad key (from another node's MemberAdded) must not block
				// delivery to everyone else.
				a.e.log.Warn("not delivering a group key to a member with an unusable agreement key",
					"namespace", a.ns.String(), "member", r.Keys.Signing.String(), "err", err)
				continue
			}
			if err := a.deliver(r.Keys, []KeyRef{{Group: g, KeyID: k.id()}}); err != nil {
				return err
			}
		}
		return nil
	})
	return g, wires, err
}

// AddMember adds a member to group g with role and capabilities and delivers
// every key this node holds for g and its subgroups to the new member.
// RoleReadOnlyTee cannot be granted here.
func (e *Engine) AddMember(ctx context.Context, ns NamespaceID, g GroupID, m MemberKeys, role Role, caps Capabilities) ([][]byte, error) {
	return e.author(ctx, ns, func(a *authoring) error {
		if _, err := a.requireWriter(g); err != nil {
			return err
		}
		if role == RoleReadOnlyTee {
			return fmt.Errorf("%w: ReadOnlyTee is granted only by MemberJoinedViaTeeAttestation", ErrNotAuthorized)
		}
		if err := usableAgreementKey(a.sp.id, m.Agreement); err != nil {
			return err
		}
		if _, err := a.group(g, &GroupOp{MemberAdded: &MemberAdded{Member: m, Role: role, Capabilities: caps}}); err != nil {
			return err
		}
		return a.deliver(m, a.heldKeys(a.tip().descendants(g)))
	})
}

// RemoveMember removes the member's direct row from g and rotates the keys
// of g and of every subgroup below it: the new keys go to every remaining
// member of each group (including those who keep access through a parent
// group), never to the removed one.
func (e *Engine) RemoveMember(ctx context.Context, ns NamespaceID, g GroupID, member PublicKey) ([][]byte, error) {
	return e.author(ctx, ns, func(a *authoring) error {
		if _, err := a.requireWriter(g); err != nil {
			return err
		}
		groups := a.tip().descendants(g) // g first
		sortGroups(groups[1:])
		refs := make([]KeyRef, len(groups))
		for i, sg := range groups {
			k, err := a.newKey()
			if err != nil {
				return err
			}
			refs[i] = KeyRef{Group: sg, KeyID: k.id()}
		}
		op := &MemberRemoved{Member: member, NewKeyID: refs[0].KeyID}
		if len(refs) > 1 {
			op.SubgroupKeys = refs[1:]
		}
		if _, err := a.group(g, &GroupOp{MemberRemoved: op}); err != nil {
			return err
		}
		// Group the new keys by remaining member.
		perMember := map[PublicKey][]KeyRef{}
		rows := map[PublicKey]*memberRow{}
		for _, ref := range refs {
			for _, r := range sortedMembers(a.tip(), ref.Group) {
				if r.Keys.Signing == a.me.Signing {
					continue
				}
				perMember[r.Keys.Signing] = append(perMember[r.Keys.Signing], ref)
				rows[r.Keys.Signing] = r
			}
		}
		order := make([]PublicKey, 0, len(rows))
		for pk := range rows {
			order = append(order, pk)
		}
		slices.SortFunc(order, func(x, y PublicKey) int { return bytes.Compare(x[:], y[:]) })
		for _, pk := range order {
			r := rows[pk]
			if err := usableAgreementKey(a.sp.id, r.Keys.Agreement); err != nil {
				// One bad key (from another node's MemberAdded) must not block
				// delivery to everyone else.
				a.e.log.Warn("not delivering a group key to a member with an unusable agreement key",
					"namespace", a.ns.String(), "member", pk.String(), "err", err)
				continue
			}
			if err := a.deliver(r.Keys, perMember[pk]); err != nil {
				return err
			}
		}
		return nil
	})
}

// SetMemberRole changes a member's direct role in g. Admins only.
func (e *Engine) SetMemberRole(ctx context.Context, ns NamespaceID, g GroupID, member PublicKey, role Role) ([][]byte, error) {
	return e.author(ctx, ns, func(a *authoring) error {
		if _, err := a.requireWriter(g); err != nil {
			return err
		}
		_, err := a.group(g, &GroupOp{MemberRoleSet: &MemberRoleSet{Member: member, Role: role}})
		return err
	})
}

// SetMemberCapabilities replaces a member's capability bits in g.
func (e *Engine) SetMemberCapabilities(ctx context.Context, ns NamespaceID, g GroupID, member PublicKey, caps Capabilities) ([][]byte, error) {
	return e.author(ctx, ns, func(a *authoring) error {
		if _, err := a.requireWriter(g); err != nil {
			return err
		}
		_, err := a.group(g, &GroupOp{MemberCapabilitiesSet: &MemberCapabilitiesSet{Member: member, Capabilities: caps}})
		return err
	})
}

// SetPolicy sets the namespace's TeeAdmissionPolicy (root-group Admins
// only). The policy must pass attest.Policy.Validate.
func (e *Engine) SetPolicy(ctx context.Context, ns NamespaceID, p *attest.Policy) ([][]byte, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil policy", ErrInvalid)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	doc, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return e.author(ctx, ns, func(a *authoring) error {
		row, err := a.requireWriter(ns.Root())
		if err != nil {
			return err
		}
		if row.Role != RoleAdmin {
			return fmt.Errorf("%w: TeeAdmissionPolicySet needs Admin in the root group", ErrNotAuthorized)
		}
		_, err = a.root(&RootOp{TeeAdmissionPolicySet: &TeeAdmissionPolicySet{Policy: doc}})
		return err
	})
}
