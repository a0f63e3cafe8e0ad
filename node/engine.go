package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/store"
)

// engineAdapter lets node/p2p drive node/governance. The ids are shared
// (node/ids); what remains to adapt is the sentinel for an unknown
// namespace, the result type, and the origin of a batch.
type engineAdapter struct{ eng *governance.Engine }

var _ p2p.Engine = (*engineAdapter)(nil)

func nsErr(err error) error {
	if errors.Is(err, governance.ErrUnknownNamespace) {
		return fmt.Errorf("%w: %w", p2p.ErrUnknownNamespace, err)
	}
	return err
}

func (a *engineAdapter) Namespaces() ([]p2p.NamespaceID, error) { return a.eng.Namespaces() }

func (a *engineAdapter) CheckOp(ns p2p.NamespaceID, wire []byte) (p2p.OpID, error) {
	return a.eng.CheckOp(ns, wire)
}

func (a *engineAdapter) Known(ns p2p.NamespaceID, id p2p.OpID) (applied, pending bool, err error) {
	applied, pending, err = a.eng.Known(ns, id)
	return applied, pending, nsErr(err)
}

func (a *engineAdapter) Apply(ctx context.Context, ns p2p.NamespaceID, wires [][]byte) (p2p.ApplyResult, error) {
	if p, ok := p2p.OriginFrom(ctx); ok {
		ctx = governance.WithOrigin(ctx, p.String())
	}
	r, err := a.eng.Apply(ctx, ns, wires)
	return p2p.ApplyResult{
		Applied:      r.Applied,
		Duplicate:    r.Duplicate,
		Pending:      r.Pending,
		Refused:      r.Refused,
		LocalRefused: r.LocalRefused,
		FirstRefusal: r.FirstRefusal,
		Missing:      r.Missing,
	}, nsErr(err)
}

func (a *engineAdapter) Heads(ns p2p.NamespaceID) ([]p2p.OpID, uint64, error) {
	h, n, err := a.eng.Heads(ns)
	return h, n, nsErr(err)
}

func (a *engineAdapter) Locator(ns p2p.NamespaceID, max int) ([]p2p.OpID, error) {
	l, err := a.eng.Locator(ns, max)
	return l, nsErr(err)
}

func (a *engineAdapter) OpsMissing(ns p2p.NamespaceID, known []p2p.OpID, fn func([]byte) error) error {
	return nsErr(a.eng.OpsMissing(ns, known, fn))
}

func (n *Node) openEngine(st *store.Store) (*governance.Engine, error) {
	eng, err := governance.New(governance.Config{Store: st, Logger: n.log.With("component", "governance"), Registerer: n.reg, Pending: n.cfg.Pending})
	if err != nil {
		return nil, fmt.Errorf("starting governance: %w", err)
	}
	return eng, nil
}

// publish gossips ops this node authored (already applied locally). A
// failure is logged, not returned: the ops are in the DAG, and heartbeats
// and syncs carry them to peers that missed them.
func (n *Node) publish(ctx context.Context, ns governance.NamespaceID, wires [][]byte) *OpResult {
	res := &OpResult{}
	for _, w := range wires {
		if id, err := governance.Validate(ns, w); err == nil {
			res.Ops = append(res.Ops, id.String())
		}
		if err := n.net.PublishOp(ctx, ns, w); err != nil {
			n.log.Warn("publishing op", "namespace", ns.String(), "err", err)
		}
	}
	if len(res.Ops) > 0 {
		res.Op = res.Ops[0]
	}
	if n.ctxs != nil {
		n.ctxs.Notify(ns) // membership changes can change which context ops take effect
	}
	return res
}

// CreateNamespace creates a namespace whose first Admin is this node's new
// namespace identity, joins its topic and publishes the genesis op.
func (n *Node) CreateNamespace(ctx context.Context) (*NamespaceInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns, wires, err := n.eng.CreateNamespace(ctx)
	if err != nil {
		return nil, fmt.Errorf("creating namespace: %w", err)
	}
	if err := n.net.Join(ns); err != nil {
		return nil, err
	}
	n.publish(ctx, ns, wires)
	return n.Namespace(ns, false)
}

// JoinNamespace makes (once) this node's identity for ns, joins the topic and
// syncs from connected peers. Hand MemberKeys to an admin to be added.
func (n *Node) JoinNamespace(_ context.Context, ns governance.NamespaceID) (*JoinResult, error) {
	keys, err := n.eng.JoinNamespace(ns)
	if err != nil {
		return nil, fmt.Errorf("joining namespace: %w", err)
	}
	if err := n.net.Join(ns); err != nil {
		return nil, err
	}
	return &JoinResult{Namespace: ns.String(), MemberKeys: keys.String()}, nil
}

// Namespaces lists the namespaces this node takes part in.
func (n *Node) Namespaces() ([]NamespaceInfo, error) {
	nss, err := n.eng.Namespaces()
	if err != nil {
		return nil, err
	}
	out := []NamespaceInfo{}
	for _, ns := range nss {
		info, err := n.Namespace(ns, false)
		if err != nil {
			return nil, err
		}
		out = append(out, *info)
	}
	return out, nil
}

// Namespace describes ns; withMembers adds each group's members.
func (n *Node) Namespace(ns governance.NamespaceID, withMembers bool) (*NamespaceInfo, error) {
	gi, err := n.eng.Namespace(ns)
	if err != nil {
		return nil, err
	}
	info := &NamespaceInfo{
		ID:         ns.String(),
		MemberKeys: gi.Identity,
		Ops:        uint64(gi.Ops),
		Pending:    gi.Pending,
		Heads:      []string{},
		HasPolicy:  gi.HasPolicy,
		Complete:   gi.Complete,
	}
	if gi.Role != 0 {
		info.Role = gi.Role.String()
	}
	for _, h := range gi.Heads {
		info.Heads = append(info.Heads, h.String())
	}
	for _, g := range gi.Groups {
		out := GroupInfo{ID: g.ID.String(), HasKey: g.HaveCurrentKey}
		if g.Parent != nil {
			out.Parent = g.Parent.String()
		}
		if withMembers || g.Parent == nil {
			ms, err := n.Members(ns, g.ID)
			if err != nil {
				return nil, err
			}
			if g.Parent == nil {
				info.Members = len(ms)
			}
			if withMembers {
				out.Members = ms
			}
		}
		info.Groups = append(info.Groups, out)
	}
	return info, nil
}

// Members lists a group's members (direct and inherited).
func (n *Node) Members(ns governance.NamespaceID, g governance.GroupID) ([]MemberInfo, error) {
	ms, err := n.eng.Members(ns, g)
	if err != nil {
		return nil, err
	}
	out := make([]MemberInfo, 0, len(ms))
	for _, m := range ms {
		mi := MemberInfo{Key: m.Member.String(), Keys: m.Keys.String(), Role: m.Role.String(),
			Capabilities: uint32(m.Capabilities), CapNames: m.CapabilityNames}
		if m.InheritedFrom != nil {
			mi.InheritedFrom = m.InheritedFrom.String()
		}
		out = append(out, mi)
	}
	return out, nil
}

// CreateGroup creates a subgroup of parent.
func (n *Node) CreateGroup(ctx context.Context, ns governance.NamespaceID, parent governance.GroupID) (*OpResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	g, wires, err := n.eng.CreateGroup(ctx, ns, parent)
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	res := n.publish(ctx, ns, wires)
	res.GroupID = g.String()
	return res, nil
}

// AddMember adds a member to g and delivers the group keys to it.
func (n *Node) AddMember(ctx context.Context, ns governance.NamespaceID, g governance.GroupID, m governance.MemberKeys, role governance.Role, caps governance.Capabilities) (*OpResult, error) {
	return n.write(ctx, ns, "adding member", func() ([][]byte, error) { return n.eng.AddMember(ctx, ns, g, m, role, caps) })
}

// RemoveMember removes a member from g and rotates the group key.
func (n *Node) RemoveMember(ctx context.Context, ns governance.NamespaceID, g governance.GroupID, m governance.PublicKey) (*OpResult, error) {
	return n.write(ctx, ns, "removing member", func() ([][]byte, error) { return n.eng.RemoveMember(ctx, ns, g, m) })
}

// SetRole changes a member's role.
func (n *Node) SetRole(ctx context.Context, ns governance.NamespaceID, g governance.GroupID, m governance.PublicKey, role governance.Role) (*OpResult, error) {
	return n.write(ctx, ns, "setting role", func() ([][]byte, error) { return n.eng.SetMemberRole(ctx, ns, g, m, role) })
}

// SetCapabilities replaces a member's capability bits.
func (n *Node) SetCapabilities(ctx context.Context, ns governance.NamespaceID, g governance.GroupID, m governance.PublicKey, caps governance.Capabilities) (*OpResult, error) {
	return n.write(ctx, ns, "setting capabilities", func() ([][]byte, error) { return n.eng.SetMemberCapabilities(ctx, ns, g, m, caps) })
}

// SetPolicy sets the namespace's TeeAdmissionPolicy (TeeAdmissionPolicySet).
func (n *Node) SetPolicy(ctx context.Context, ns governance.NamespaceID, p *attest.Policy) (*OpResult, error) {
	return n.write(ctx, ns, "setting policy", func() ([][]byte, error) { return n.eng.SetPolicy(ctx, ns, p) })
}

// Policy returns the namespace's TeeAdmissionPolicy.
func (n *Node) Policy(ns governance.NamespaceID) (*attest.Policy, error) {
	p, err := n.eng.Policy(ns)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("namespace %s has no TeeAdmissionPolicy: %w", ns, errNotFound)
	}
	return p, nil
}

func (n *Node) write(ctx context.Context, ns governance.NamespaceID, what string, author func() ([][]byte, error)) (*OpResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	wires, err := author()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return n.publish(ctx, ns, wires), nil
}
