package governance

import (
	"context"
	"fmt"
	"slices"
)

// KeyGap is a member of a group that no effective KeyDelivery in the DAG
// has given the group's current key.
type KeyGap struct {
	Group  GroupID   `json:"group"`
	KeyID  KeyID     `json:"keyId"`
	Member PublicKey `json:"member"`
}

// keyHolders returns, per key id, who the DAG says holds it: the signer of
// the op that introduced it and the recipients of effective deliveries.
func keyHolders(d *dag) (creator map[KeyID]PublicKey, holders map[KeyID]map[PublicKey]bool) {
	creator = map[KeyID]PublicKey{}
	holders = map[KeyID]map[PublicKey]bool{}
	add := func(k KeyID, pk PublicKey) {
		if holders[k] == nil {
			holders[k] = map[PublicKey]bool{}
		}
		holders[k][pk] = true
	}
	for _, n := range d.order {
		if n.effect != nil {
			continue
		}
		b := &n.op.body
		var introduced *KeyID
		switch {
		case b.Root != nil && b.Root.NamespaceCreated != nil:
			introduced = &b.Root.NamespaceCreated.KeyID
		case b.Root != nil && b.Root.GroupCreated != nil:
			introduced = &b.Root.GroupCreated.KeyID
		case b.Root != nil && b.Root.KeyDelivery != nil:
			for _, r := range b.Root.KeyDelivery.Keys {
				add(r.KeyID, b.Root.KeyDelivery.Recipient)
			}
		case n.plain != nil && n.plain.MemberRemoved != nil:
			introduced = &n.plain.MemberRemoved.NewKeyID
			for _, r := range n.plain.MemberRemoved.SubgroupKeys {
				if _, seen := creator[r.KeyID]; !seen {
					creator[r.KeyID] = b.Signer
				}
				add(r.KeyID, b.Signer)
			}
		}
		if introduced != nil {
			if _, seen := creator[*introduced]; !seen {
				creator[*introduced] = b.Signer
			}
			add(*introduced, b.Signer)
		}
	}
	return creator, holders
}

// KeyGaps lists members that lack their group's current key according to
// the DAG. It happens when a member is added concurrently with a removal
// that rotated the key: the adder delivered the old key, the remover did not
// know the new member. RedeliverKeys closes the gaps.
func (e *Engine) KeyGaps(ns NamespaceID) ([]KeyGap, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return keyGaps(sp.d), nil
}

func keyGaps(d *dag) []KeyGap {
	_, holders := keyHolders(d)
	st := d.tip
	var gids []GroupID
	for id := range st.groups {
		gids = append(gids, id)
	}
	sortGroups(gids)
	var out []KeyGap
	for _, g := range gids {
		ks := st.groups[g].keyIDs
		if len(ks) == 0 {
			continue
		}
		cur := ks[len(ks)-1]
		for _, r := range sortedMembers(st, g) {
			if !holders[cur][r.Keys.Signing] {
				out = append(out, KeyGap{Group: g, KeyID: cur, Member: r.Keys.Signing})
			}
		}
	}
	return out
}

// RedeliverKeys publishes KeyDelivery ops that close this node's share of
// the key gaps: it delivers a group's current key to members lacking it when
// this node introduced that key (or when the key's creator can no longer
// write in the group, then any writer holding it does). It returns the ops
// to publish, or none. The daemon calls it periodically (say with each
// heads heartbeat); duplicates from racing nodes are harmless.
func (e *Engine) RedeliverKeys(ctx context.Context, ns NamespaceID) ([][]byte, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	incomplete := sp.d.tip.incomplete || sp.d.genesis == nil
	sp.mu.Unlock()
	if incomplete {
		return nil, nil
	}
	wires, err := e.author(ctx, ns, func(a *authoring) error {
		creator, _ := keyHolders(a.sp.d)
		gaps := keyGaps(a.sp.d)
		byMember := map[PublicKey][]KeyRef{}
		var order []PublicKey
		for _, gap := range gaps {
			if gap.Member == a.me.Signing {
				continue
			}
			if _, held := a.sp.d.keys[gap.KeyID]; !held {
				continue
			}
			if _, err := a.requireWriter(gap.Group); err != nil {
				continue
			}
			c := creator[gap.KeyID]
			if c != a.me.Signing {
				if row, _ := a.tip().effective(gap.Group, c); row != nil && row.Role.CanWrite() {
					continue // the creator is still around to deliver it
				}
			}
			if _, seen := byMember[gap.Member]; !seen {
				order = append(order, gap.Member)
			}
			byMember[gap.Member] = append(byMember[gap.Member], KeyRef{Group: gap.Group, KeyID: gap.KeyID})
		}
		for _, m := range order {
			row, _ := a.tip().effective(byMember[m][0].Group, m)
			if row == nil {
				continue
			}
			if err := usableAgreementKey(a.sp.id, row.Keys.Agreement); err != nil {
				continue
			}
			refs := byMember[m]
			// Deliver only refs for groups the member still belongs to.
			refs = slices.DeleteFunc(refs, func(r KeyRef) bool {
				rr, _ := a.tip().effective(r.Group, m)
				return rr == nil
			})
			if err := a.deliver(row.Keys, refs); err != nil {
				return fmt.Errorf("redelivering keys: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return wires, nil
}
