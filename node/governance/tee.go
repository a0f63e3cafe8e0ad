package governance

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/fleet"
	"github.com/fleetbox/fleetbox/node/store"
)

// MemberJoinedViaTeeAttestation admits a hardware-attested fleet replica to
// the root group as ReadOnlyTee (RootOp key 5). A member of the root group
// with Admin or MANAGE_MEMBERS publishes it after checking the replica's
// TeeAttestationAnnounce (node/fleet). It is the only op that grants
// ReadOnlyTee; the row is never inherited by subgroups.
//
// Every peer re-checks the recorded values against the namespace's
// TeeAdmissionPolicy when it applies the op (fleet.Recheck: a pure function,
// so all peers agree), refuses a member that is already one, and refuses a
// quote hash already recorded: the record is namespace-wide and survives the
// member's removal, so no quote admits twice. Two verifiers racing on one
// announce both get their op into the DAG; in the replay the one that sorts
// second finds the quote used and has no effect, leaving one membership.
type MemberJoinedViaTeeAttestation struct {
	Member       MemberKeys       `cbor:"1,keyasint"`
	QuoteHash    attest.QuoteHash `cbor:"2,keyasint"`
	MRTD         attest.MRTD      `cbor:"3,keyasint"`
	RTMR         [4]attest.RTMR   `cbor:"4,keyasint"`
	TDAttributes [8]byte          `cbor:"5,keyasint"`
	TcbStatus    string           `cbor:"6,keyasint"`
	Mock         bool             `cbor:"7,keyasint"`
	Role         Role             `cbor:"8,keyasint"`
	// EventLogChecked and Rtmr3Events: the RTMR3 events of the event log
	// the replica's announce carried (fleet.Admission); absent when it
	// carried none. They are replayed to RTMR[3] again on every recheck.
	EventLogChecked bool                `cbor:"9,keyasint,omitempty"`
	Rtmr3Events     []attest.Rtmr3Event `cbor:"10,keyasint,omitempty"`
}

func (m *MemberJoinedViaTeeAttestation) check() error {
	if m.Role != RoleReadOnlyTee {
		return fmt.Errorf("%w: MemberJoinedViaTeeAttestation grants ReadOnlyTee, not %s", ErrMalformed, m.Role)
	}
	s := attest.TcbStatus(m.TcbStatus)
	if !slices.Contains(attest.IntelStatuses, s) && s != attest.TcbMock && s != attest.TcbNoMatchingLevel && s != attest.TcbUnverified {
		return fmt.Errorf("%w: MemberJoinedViaTeeAttestation: unknown TCB status %q", ErrMalformed, m.TcbStatus)
	}
	if (s == attest.TcbMock) != m.Mock {
		return fmt.Errorf("%w: MemberJoinedViaTeeAttestation: mock flag and TCB status disagree", ErrMalformed)
	}
	if len(m.Rtmr3Events) > 0 && !m.EventLogChecked {
		return fmt.Errorf("%w: MemberJoinedViaTeeAttestation: rtmr3 events without a checked event log", ErrMalformed)
	}
	if err := attest.CheckRtmr3Events(m.Rtmr3Events); err != nil {
		return fmt.Errorf("%w: MemberJoinedViaTeeAttestation: %v", ErrMalformed, err)
	}
	return nil
}

func (m *MemberJoinedViaTeeAttestation) admission() *fleet.Admission {
	return &fleet.Admission{
		Member: m.Member.Signing, Agreement: m.Member.Agreement, QuoteHash: m.QuoteHash,
		MRTD: m.MRTD, RTMR: m.RTMR, TDAttributes: m.TDAttributes,
		TcbStatus: attest.TcbStatus(m.TcbStatus), Mock: m.Mock,
		EventLogChecked: m.EventLogChecked, Rtmr3Events: m.Rtmr3Events,
	}
}

// applyTeeJoin is applyRoot's case for MemberJoinedViaTeeAttestation.
func (st *state) applyTeeJoin(n *opNode) *RefusedError {
	b := &n.op.body
	id := n.op.id
	mj := b.Root.MemberJoinedViaTeeAttestation
	root := st.ns.Root()
	row, rerr := st.writer(root, b.Signer, id)
	if rerr != nil {
		return rerr
	}
	if row.Role != RoleAdmin && !row.Caps.Has(ManageMembers) {
		return unauthorized(id, "MemberJoinedViaTeeAttestation needs Admin or MANAGE_MEMBERS in the root group")
	}
	if st.policy == nil {
		return invalid(id, "MemberJoinedViaTeeAttestation in a namespace without a TeeAdmissionPolicy")
	}
	if _, err := st.admissionPolicy(); err != nil {
		return invalid(id, "the namespace TeeAdmissionPolicy does not parse: %v", err)
	}
	if err := st.polCache.recheck(id, mj.admission()); err != nil {
		return unauthorized(id, "admission fails the namespace TeeAdmissionPolicy: %v", err)
	}
	if by, used := st.quotes[mj.QuoteHash]; used {
		return invalid(id, "quote %s already admitted member %s", mj.QuoteHash.String()[:12], shortKey(by))
	}
	gs := st.groups[root]
	if gs.members[mj.Member.Signing] != nil {
		return invalid(id, "%s is already a member of the root group", shortKey(mj.Member.Signing))
	}
	st.quotes[mj.QuoteHash] = mj.Member.Signing
	st.admissions[mj.Member.Signing] = mj
	gs.members[mj.Member.Signing] = &memberRow{Keys: mj.Member, Role: RoleReadOnlyTee}
	return nil
}

// parsedPolicy is a state's policy bytes decoded once. The bytes never change
// once set, and every replay re-applies every admission against them: parsing
// them for each admission made a replica's first sync and every causal-state
// replay quadratic in the admissions (a fifth of a fleet join's CPU).
type parsedPolicy struct {
	once sync.Once
	p    *attest.Policy
	err  error

	// rechecked memoizes fleet.Recheck of each admission op against p: a
	// replay re-applies every admission, and the answer for one op under
	// one policy never changes.
	mu        sync.Mutex
	rechecked map[OpID]error
}

// recheck is fleet.Recheck of op's admission against the policy, memoized.
func (c *parsedPolicy) recheck(op OpID, adm *fleet.Admission) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err, ok := c.rechecked[op]; ok {
		return err
	}
	if c.rechecked == nil {
		c.rechecked = map[OpID]error{}
	}
	err := fleet.Recheck(c.p, adm)
	c.rechecked[op] = err
	return err
}

// admissionPolicy returns st.policy decoded (st.policy must be set). The
// result is shared: callers must not change it.
func (st *state) admissionPolicy() (*attest.Policy, error) {
	if st.polCache == nil {
		st.polCache = &parsedPolicy{}
	}
	c := st.polCache
	c.once.Do(func() { c.p, c.err = attest.ParsePolicy(st.policy) })
	return c.p, c.err
}

// AdmitTeeMember publishes MemberJoinedViaTeeAttestation for a checked
// announce and delivers the root group's keys to the replica. It refuses
// locally, before signing, what every peer would refuse.
func (e *Engine) AdmitTeeMember(ctx context.Context, ns NamespaceID, adm *fleet.Admission) ([][]byte, error) {
	mj := &MemberJoinedViaTeeAttestation{
		Member:    MemberKeys{Signing: adm.Member, Agreement: AgreementKey(adm.Agreement)},
		QuoteHash: adm.QuoteHash, MRTD: adm.MRTD, RTMR: adm.RTMR, TDAttributes: adm.TDAttributes,
		TcbStatus: string(adm.TcbStatus), Mock: adm.Mock, Role: RoleReadOnlyTee,
		EventLogChecked: adm.EventLogChecked, Rtmr3Events: adm.Rtmr3Events,
	}
	if err := mj.check(); err != nil {
		return nil, err
	}
	return e.author(ctx, ns, func(a *authoring) error {
		row, err := a.requireWriter(ns.Root())
		if err != nil {
			return err
		}
		if row.Role != RoleAdmin && !row.Caps.Has(ManageMembers) {
			return fmt.Errorf("%w: admitting a fleet replica needs Admin or MANAGE_MEMBERS", ErrNotAuthorized)
		}
		if _, err := a.root(&RootOp{MemberJoinedViaTeeAttestation: mj}); err != nil {
			return err
		}
		return a.deliver(mj.Member, a.heldKeys([]GroupID{ns.Root()}))
	})
}

// TeeView answers a fleet verifier's questions from the current state.
type TeeView struct {
	Policy    *attest.Policy
	members   map[PublicKey]bool
	quotes    map[attest.QuoteHash]PublicKey
	CanManage bool // this node may publish admissions
}

// IsMember reports whether pk is a member of the root group.
func (v *TeeView) IsMember(pk [32]byte) bool { return v.members[pk] }

// QuoteUsed reports whether the quote hash has ever admitted a replica.
func (v *TeeView) QuoteUsed(h attest.QuoteHash) bool { _, ok := v.quotes[h]; return ok }

// TeeView snapshots what a verifier needs to check an announce for ns.
func (e *Engine) TeeView(ns NamespaceID) (*TeeView, error) {
	v := &TeeView{members: map[PublicKey]bool{}, quotes: map[attest.QuoteHash]PublicKey{}}
	return v, e.readTip(ns, func(sp *space, st *state) error {
		v.fill(sp, st)
		return nil
	})
}

func (v *TeeView) fill(sp *space, st *state) {
	ns := st.ns
	for pk := range st.effectiveMembers(ns.Root()) {
		v.members[pk] = true
	}
	for h, pk := range st.quotes {
		v.quotes[h] = pk
	}
	if st.policy != nil {
		if p, err := attest.ParsePolicy(st.policy); err == nil {
			v.Policy = p
		}
	}
	if r, _ := st.effective(ns.Root(), sp.id.public().Signing); r != nil && r.Role.CanWrite() && (r.Role == RoleAdmin || r.Caps.Has(ManageMembers)) {
		v.CanManage = true
	}
}

// Replica is one fleet replica's admission record, judged against the
// namespace's current TeeAdmissionPolicy.
type Replica struct {
	// Admission holds the values the admitting verifier recorded.
	Admission *fleet.Admission
	// Member: the replica is a member of the root group now (false once
	// it was removed).
	Member bool
	// PolicyErr is nil when the recorded values meet the current policy;
	// otherwise it is what fleet.Recheck refuses (fleet.Reasons lists the
	// reasons). A policy tightened after admission does not remove anyone
	// by itself: this is how an admin finds whom it no longer covers.
	PolicyErr error
}

// Replicas lists every replica ever admitted to ns, sorted by key, with
// whether it is still a member and whether it meets the current policy.
func (e *Engine) Replicas(ns NamespaceID) ([]Replica, error) {
	var out []Replica
	return out, e.readTip(ns, func(_ *space, st *state) error {
		var pol *attest.Policy
		if st.policy != nil {
			pol, _ = attest.ParsePolicy(st.policy) // nil (refuses all) if unparsable
		}
		for _, pk := range slices.SortedFunc(maps.Keys(st.admissions), func(x, y PublicKey) int { return bytes.Compare(x[:], y[:]) }) {
			adm := st.admissions[pk].admission()
			row, _ := st.effective(st.ns.Root(), pk)
			out = append(out, Replica{Admission: adm, Member: row != nil, PolicyErr: fleet.Recheck(pol, adm)})
		}
		return nil
	})
}

// TeeStatus is this node's standing as a fleet replica in a namespace.
type TeeStatus struct {
	// Admitted: some MemberJoinedViaTeeAttestation admitted this node's
	// identity (also if it was removed since).
	Admitted bool
	// Member: the identity is a member of the root group now.
	Member bool
	// HasRootKey: the node holds the root group's current key.
	HasRootKey bool
	// Groups are the groups where the identity has a direct row.
	Groups []GroupID
	// Incomplete: some ops could not be read, so the answer may be wrong.
	Incomplete bool
}

// TeeStatus reports this node's fleet-replica standing in ns.
func (e *Engine) TeeStatus(ns NamespaceID) (*TeeStatus, error) {
	s := &TeeStatus{}
	return s, e.readTip(ns, func(sp *space, st *state) error {
		s.fill(sp, st)
		return nil
	})
}

func (s *TeeStatus) fill(sp *space, st *state) {
	ns := st.ns
	me := sp.id.public().Signing
	s.Incomplete = st.incomplete
	for _, pk := range st.quotes {
		if pk == me {
			s.Admitted = true
		}
	}
	if r, _ := st.effective(ns.Root(), me); r != nil {
		s.Member = true
	}
	if gs := st.groups[ns.Root()]; gs != nil && len(gs.keyIDs) > 0 {
		_, s.HasRootKey = sp.d.keys[gs.keyIDs[len(gs.keyIDs)-1]]
	}
	for g, gs := range st.groups {
		if gs.members[me] != nil {
			s.Groups = append(s.Groups, g)
		}
	}
	sortGroups(s.Groups)
}

// HasNamespaceRows reports whether any row of ns remains.
func HasNamespaceRows(tx *store.Tx, ns NamespaceID) (bool, error) {
	found := false
	err := tx.ForEach(store.Group, rowKey(prefNS, ns, nil), func(_, _ []byte) error { found = true; return nil })
	return found, err
}

// GroupKeyIDs lists the ids of group g's keys in ns.
func (e *Engine) GroupKeyIDs(ns NamespaceID, g GroupID) ([]KeyID, error) {
	var ids []KeyID
	return ids, e.readTip(ns, func(_ *space, st *state) error {
		gs := st.groups[g]
		if gs == nil {
			return fmt.Errorf("%w: %s", ErrUnknownGroup, g)
		}
		ids = slices.Clone(gs.keyIDs)
		return nil
	})
}

// DeleteGroupKeyRows deletes, inside tx, the stored keys with the given ids.
func DeleteGroupKeyRows(tx *store.Tx, ns NamespaceID, ids []KeyID) (int, error) {
	n := 0
	for _, id := range ids {
		if err := tx.Delete(store.Keys, rowKey(prefKey, ns, id[:])); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// ForgetKeys drops group keys from memory after their rows were deleted.
func (e *Engine) ForgetKeys(ns NamespaceID, ids []KeyID) {
	sp, err := e.space(ns)
	if err != nil {
		return
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for _, id := range ids {
		delete(sp.d.keys, id)
	}
}

// IdentityKeys returns this node's namespace identity secret signing key and
// its X25519 public key, for signing TeeAttestationAnnounces. The caller
// must not keep the secret longer than it needs it.
func (e *Engine) IdentityKeys(ns NamespaceID) (ed25519.PrivateKey, [32]byte, error) {
	sp, err := e.space(ns)
	if err != nil {
		return nil, [32]byte{}, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return slices.Clone(sp.id.signing), [32]byte(sp.id.public().Agreement), nil
}
