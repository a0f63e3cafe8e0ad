package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/fleet"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/selfpurge"
	"github.com/fleetbox/fleetbox/node/store"
)

// FleetConfig configures fleet replicas: this node as a candidate replica
// (it announces with quotes from QuoteSource) and as a verifier of other
// candidates (it checks their announces with Verifier).
type FleetConfig struct {
	// QuoteSource makes this node's quotes; nil: this node cannot fleet-join.
	QuoteSource attest.Source
	// Verifier checks candidates' quotes. Nil: the Intel root with no
	// collateral, whose Unverified status only a mock-accepting or
	// permissive policy admits.
	Verifier *attest.Verifier
	// Window is how long a superseded DAG head stays fresh in announces.
	Window time.Duration
	// AnnounceMinBackoff and AnnounceMaxBackoff bound re-announcing.
	AnnounceMinBackoff, AnnounceMaxBackoff time.Duration
}

// fleetState is the node's fleet-replica machinery. mu guards the maps.
type fleetState struct {
	n       *Node
	checker *fleet.Checker
	heads   *fleet.HeadTracker
	purger  *selfpurge.Purger
	events  chan selfpurge.Target
	m       *fleetMetrics

	mu       sync.Mutex
	joining  map[governance.NamespaceID]*announcing // running announcers
	groups   map[governance.NamespaceID][]governance.GroupID
	admitted map[governance.NamespaceID]bool
	inflight map[[32]byte]bool // members being admitted by this node
}

// announcing is a running announcer: its wake channel and how to stop it.
type announcing struct {
	wake chan struct{}
	stop context.CancelFunc
}

type fleetMetrics struct {
	refused  *prometheus.CounterVec
	admitted prometheus.Counter
}

// fleetJoinPrefix keys, in the Config column, the namespaces this node
// fleet-joined, so it resumes announcing after a restart and purges them
// on eviction.
const fleetJoinPrefix = "fleet/join/"

func fleetJoinKey(ns governance.NamespaceID) []byte {
	return append([]byte(fleetJoinPrefix), ns[:]...)
}

// fleetEvictedKey is one Config row whose sealed value lists the namespaces
// this node was evicted from, so a configured fleetJoin does not re-join
// them at the next start (an operator re-joins with ctl fleet-join). The
// ids live only in the sealed value, never in a cleartext row key.
var fleetEvictedKey = []byte("fleet/evicted")

func evicted(tx *store.Tx) ([]governance.NamespaceID, error) {
	v, err := tx.Get(store.Config, fleetEvictedKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []governance.NamespaceID
	for len(v) >= 32 {
		out = append(out, governance.NamespaceID(v[:32]))
		v = v[32:]
	}
	return out, nil
}

func setEvicted(tx *store.Tx, ns governance.NamespaceID, on bool) error {
	list, err := evicted(tx)
	if err != nil {
		return err
	}
	var buf []byte
	for _, x := range list {
		if x != ns {
			buf = append(buf, x[:]...)
		}
	}
	if on {
		buf = append(buf, ns[:]...)
	}
	return tx.Put(store.Config, fleetEvictedKey, buf)
}

func (n *Node) newFleet(st *store.Store) *fleetState {
	v := n.cfg.Fleet.Verifier
	if v == nil {
		v = attest.NewVerifier(attest.VerifierConfig{Logger: n.log})
	}
	f := &fleetState{
		n:        n,
		checker:  &fleet.Checker{Verifier: v, Window: n.cfg.Fleet.Window},
		heads:    fleet.NewHeadTracker(),
		events:   make(chan selfpurge.Target, 64),
		joining:  map[governance.NamespaceID]*announcing{},
		groups:   map[governance.NamespaceID][]governance.GroupID{},
		admitted: map[governance.NamespaceID]bool{},
		inflight: map[[32]byte]bool{},
		m: &fleetMetrics{
			refused: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "fleet_announces_refused_total",
				Help: "TeeAttestationAnnounces this node refused, by reason.",
			}, []string{"reason"}),
			admitted: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "fleet_replicas_admitted_total",
				Help: "Fleet replicas this node admitted (MemberJoinedViaTeeAttestation published).",
			}),
		},
	}
	n.reg.MustRegister(f.m.refused, f.m.admitted)
	rows := &purgeRows{eng: func() *governance.Engine { return n.eng }, keys: map[selfpurge.Target][]governance.KeyID{}}
	cp := newContextPurge(n, rows)
	f.purger = selfpurge.New(selfpurge.Config{
		Store: st,
		Rows:  cp,
		Unsubscribe: func(ns [32]byte) {
			if n.net != nil {
				if err := n.net.Leave(p2p.NamespaceID(ns)); err != nil {
					n.log.Warn("leaving the namespace topic", "err", err)
				}
			}
		},
		BeforeDelete: func(t selfpurge.Target) {
			cp.before(t)
			if t.Whole() {
				// Retire first: an in-flight sync batch must not write the
				// namespace back after its rows are deleted.
				n.eng.Forget(governance.NamespaceID(t.Namespace))
				return
			}
			// Read the subgroup's key ids now: Delete runs inside the store
			// transaction, where taking the engine's lock could deadlock
			// with a commit waiting for that transaction.
			ids, err := n.eng.GroupKeyIDs(governance.NamespaceID(t.Namespace), governance.GroupID(t.Group))
			rows.mu.Lock()
			if err == nil {
				rows.keys[t] = ids
			} else {
				delete(rows.keys, t)
			}
			rows.mu.Unlock()
		},
		AfterDelete: func(t selfpurge.Target) {
			cp.after(t)
			if t.Whole() {
				f.mu.Lock()
				delete(f.groups, governance.NamespaceID(t.Namespace))
				delete(f.admitted, governance.NamespaceID(t.Namespace))
				f.mu.Unlock()
			}
		},
		Registerer: n.reg,
		Logger:     n.log.With("component", "self-purge"),
	})
	return f
}

// purgeRows tells the self-purge where a namespace lives in the store.
type purgeRows struct {
	eng func() *governance.Engine

	mu   sync.Mutex // guards keys
	keys map[selfpurge.Target][]governance.KeyID
}

func (r *purgeRows) Delete(tx *store.Tx, t selfpurge.Target) (int, error) {
	ns := governance.NamespaceID(t.Namespace)
	if t.Whole() {
		n, err := governance.DeleteNamespaceRows(tx, ns)
		if err != nil {
			return n, err
		}
		if err := tx.Delete(store.Config, fleetJoinKey(ns)); err != nil {
			return n, err
		}
		if err := setEvicted(tx, ns, true); err != nil {
			return n, err
		}
		return n + 1, nil
	}
	r.mu.Lock()
	ids := r.keys[t]
	delete(r.keys, t)
	r.mu.Unlock()
	return governance.DeleteGroupKeyRows(tx, ns, ids)
}

func (r *purgeRows) Decide(tx *store.Tx, m selfpurge.Marker) (selfpurge.Decision, error) {
	ns := governance.NamespaceID(m.Target.Namespace)
	has, err := governance.HasNamespaceRows(tx, ns)
	if err != nil {
		return selfpurge.Undecided, err
	}
	if !has {
		return selfpurge.AlreadyPurged, nil
	}
	st, err := r.eng().TeeStatus(ns)
	if err != nil {
		return selfpurge.Undecided, err
	}
	if st.Incomplete {
		return selfpurge.Undecided, nil
	}
	if m.Target.Whole() {
		if st.Member {
			return selfpurge.Readmitted, nil
		}
		return selfpurge.StillEvicted, nil
	}
	for _, g := range st.Groups {
		if g == governance.GroupID(m.Target.Group) {
			return selfpurge.Readmitted, nil
		}
	}
	return selfpurge.StillEvicted, nil
}

// reconcile runs the self-purge sweep at start-up, and purges fleet-joined
// namespaces this node was evicted from while it was not running (or whose
// purge event was dropped).
func (f *fleetState) reconcile(ctx context.Context) error {
	rep, err := f.purger.Reconcile(ctx)
	if rep != (selfpurge.Report{}) {
		f.n.log.Info("self-purge reconcile", "completed", rep.Completed, "staleCleared", rep.StaleCleared, "kept", rep.Kept)
	}
	if err != nil {
		f.n.log.Warn("self-purge reconcile left work", "err", err)
	}
	for _, ns := range f.joined() {
		st, err := f.n.eng.TeeStatus(ns)
		if err != nil {
			continue
		}
		if st.Admitted && !st.Member && !st.Incomplete {
			if perr := f.purger.Purge(ctx, selfpurge.Target{Namespace: ns}, f.me(ns)); perr != nil {
				f.n.log.Error("self-purge at start-up", "namespace", ns.String(), "err", perr)
			}
			continue
		}
		f.remember(ns, st)
	}
	return nil
}

func (f *fleetState) me(ns governance.NamespaceID) [32]byte {
	keys, err := f.n.eng.Identity(ns)
	if err != nil {
		return [32]byte{}
	}
	return keys.Signing
}

func (f *fleetState) remember(ns governance.NamespaceID, st *governance.TeeStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.Admitted && st.Member {
		f.admitted[ns] = true
	}
	f.groups[ns] = st.Groups
}

// joined lists the namespaces this node fleet-joined.
func (f *fleetState) joined() []governance.NamespaceID {
	var out []governance.NamespaceID
	_ = f.n.st.View(func(tx *store.Tx) error {
		return tx.ForEach(store.Config, []byte(fleetJoinPrefix), func(k, _ []byte) error {
			var ns governance.NamespaceID
			copy(ns[:], k[len(fleetJoinPrefix):])
			out = append(out, ns)
			return nil
		})
	})
	return out
}

// join makes this node a candidate replica of ns: its namespace identity,
// the topic, a durable record, and an announcer until it is admitted.
func (f *fleetState) join(ctx context.Context, ns governance.NamespaceID) (*FleetJoinResult, error) {
	return f.joinAs(ctx, ns, true)
}

// joinAs joins ns; explicit is an operator's request, which also lifts a
// past eviction, while a configured join at start skips evicted namespaces.
func (f *fleetState) joinAs(ctx context.Context, ns governance.NamespaceID, explicit bool) (*FleetJoinResult, error) {
	if !explicit {
		var ev []governance.NamespaceID
		_ = f.n.st.View(func(tx *store.Tx) error { var err error; ev, err = evicted(tx); return err })
		if containsNS(ev, ns) {
			return nil, fmt.Errorf("this node was evicted from namespace %s; not re-joining it at start (fleetbox ctl fleet-join joins it again)", ns)
		}
	}
	if f.n.cfg.Fleet.QuoteSource == nil {
		return nil, badRequest("this node has no quote source (run with --tdx or --mock-tdx) and cannot fleet-join")
	}
	keys, err := f.n.eng.JoinNamespace(ns)
	if err != nil {
		return nil, fmt.Errorf("fleet-join: %w", err)
	}
	if err := f.n.st.Update(func(tx *store.Tx) error {
		if err := setEvicted(tx, ns, false); err != nil {
			return err
		}
		return tx.Put(store.Config, fleetJoinKey(ns), []byte{1})
	}); err != nil {
		return nil, fmt.Errorf("fleet-join: recording the namespace: %w", err)
	}
	if err := f.n.net.Join(p2p.NamespaceID(ns)); err != nil {
		return nil, err
	}
	f.startAnnouncer(ctx, ns)
	return &FleetJoinResult{Namespace: ns.String(), MemberKeys: keys.String(), Source: f.n.cfg.Fleet.QuoteSource.Kind()}, nil
}

// startAnnouncer runs an announcer for ns on the node's run context unless
// one runs or the node is admitted already.
func (f *fleetState) startAnnouncer(_ context.Context, ns governance.NamespaceID) {
	if st, err := f.n.eng.TeeStatus(ns); err == nil && st.Member && st.HasRootKey {
		return
	}
	f.mu.Lock()
	if _, running := f.joining[ns]; running {
		f.mu.Unlock()
		return
	}
	wake := make(chan struct{}, 1)
	actx, stop := context.WithCancel(f.n.bgCtx)
	f.joining[ns] = &announcing{wake: wake, stop: stop}
	f.mu.Unlock()
	id, err := f.n.eng.Identity(ns)
	if err != nil {
		f.n.log.Error("fleet-join: no namespace identity", "err", err)
		return
	}
	sk, agreement, err := f.n.eng.IdentityKeys(ns)
	if err != nil {
		f.n.log.Error("fleet-join: no namespace identity", "err", err)
		return
	}
	_ = id
	a := fleet.NewAnnouncer(fleet.AnnouncerConfig{
		Namespace: ns, Identity: sk, Agreement: agreement, Source: f.n.cfg.Fleet.QuoteSource,
		Head: func() ([32]byte, error) {
			heads, _, err := f.n.eng.Heads(ns)
			if err != nil {
				return [32]byte{}, err
			}
			if len(heads) == 0 {
				return [32]byte{}, errors.New("the namespace DAG has not synced yet")
			}
			return heads[len(heads)-1], nil
		},
		Publish: func(ctx context.Context, wire []byte) error {
			return f.n.net.PublishAnnounce(ctx, p2p.NamespaceID(ns), wire)
		},
		Admitted: func() bool {
			st, err := f.n.eng.TeeStatus(ns)
			return err == nil && st.Member && st.HasRootKey
		},
		Wake:       wake,
		MinBackoff: f.n.cfg.Fleet.AnnounceMinBackoff, MaxBackoff: f.n.cfg.Fleet.AnnounceMaxBackoff,
		Logger: f.n.log.With("component", "fleet-join", "namespace", ns.String()[:16]),
	})
	f.n.goRun(func(context.Context) {
		defer stop()
		_ = a.Run(actx)
		f.mu.Lock()
		delete(f.joining, ns)
		f.mu.Unlock()
		if st, err := f.n.eng.TeeStatus(ns); err == nil {
			f.remember(ns, st)
		}
	})
}

// onApplied runs after ops from the network were applied to ns: it wakes an
// announcer, tracks heads for announce freshness, and detects this node's
// eviction.
func (f *fleetState) onApplied(ns governance.NamespaceID) {
	if heads, _, err := f.n.eng.Heads(ns); err == nil {
		fleet.Observe(f.heads, [32]byte(ns), heads, time.Now())
	}
	f.mu.Lock()
	if an := f.joining[ns]; an != nil {
		select {
		case an.wake <- struct{}{}:
		default:
		}
	}
	f.mu.Unlock()
	st, err := f.n.eng.TeeStatus(ns)
	if err != nil || st.Incomplete {
		return
	}
	f.mu.Lock()
	was := f.admitted[ns]
	prevGroups := f.groups[ns]
	if st.Admitted && st.Member {
		f.admitted[ns] = true
	}
	if was && st.Admitted && !st.Member {
		delete(f.admitted, ns) // one purge event per eviction, however many applies see it
	}
	f.groups[ns] = st.Groups
	f.mu.Unlock()
	var targets []selfpurge.Target
	if was && st.Admitted && !st.Member {
		targets = append(targets, selfpurge.Target{Namespace: ns})
	} else if st.Member {
		for _, g := range prevGroups {
			if g != ns.Root() && !containsGroup(st.Groups, g) {
				targets = append(targets, selfpurge.Target{Namespace: ns, Group: g})
			}
		}
	}
	for _, t := range targets {
		select {
		case f.events <- t:
		default:
			f.purger.Dropped.Inc()
			f.n.log.Warn("self-purge event dropped; the next reconcile sweep will purge", "target", t.String())
		}
	}
}

func containsNS(list []governance.NamespaceID, ns governance.NamespaceID) bool {
	for _, x := range list {
		if x == ns {
			return true
		}
	}
	return false
}

func containsGroup(gs []governance.GroupID, g governance.GroupID) bool {
	for _, x := range gs {
		if x == g {
			return true
		}
	}
	return false
}

// runPurges executes purge events until ctx ends.
func (f *fleetState) runPurges(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-f.events:
			if err := f.purger.Purge(ctx, t, f.me(governance.NamespaceID(t.Namespace))); err != nil {
				f.n.log.Error("self-purge failed; the marker stays for the reconcile sweep", "target", t.String(), "err", err)
			}
		}
	}
}

// onAnnounce is the gossip validator for TeeAttestationAnnounces. Every node
// checks shape and signature before an announce spreads; a node that may
// admit members also judges it fully, off the validator's path.
func (f *fleetState) onAnnounce(ctx context.Context, pns p2p.NamespaceID, from peer.ID, wire []byte) pubsub.ValidationResult {
	ns := governance.NamespaceID(pns)
	a, err := fleet.DecodeAnnounce(wire)
	if err != nil {
		f.m.refused.WithLabelValues(string(fleet.ReasonMalformed)).Inc()
		return pubsub.ValidationReject
	}
	if a.Namespace != [32]byte(ns) {
		f.m.refused.WithLabelValues(string(fleet.ReasonWrongNamespace)).Inc()
		return pubsub.ValidationReject
	}
	if !a.VerifySignature() {
		f.m.refused.WithLabelValues(string(fleet.ReasonBadSignature)).Inc()
		return pubsub.ValidationReject
	}
	if from == f.n.net.ID() {
		return pubsub.ValidationAccept // our own announce
	}
	view, err := f.n.eng.TeeView(ns)
	if err != nil || !view.CanManage {
		return pubsub.ValidationAccept // not ours to judge; let it reach those who can
	}
	f.mu.Lock()
	busy := f.inflight[a.Member]
	if !busy {
		f.inflight[a.Member] = true
	}
	f.mu.Unlock()
	if !busy {
		f.n.goRun(func(ctx context.Context) {
			defer func() {
				f.mu.Lock()
				delete(f.inflight, a.Member)
				f.mu.Unlock()
			}()
			f.admit(ctx, ns, a)
		})
	}
	return pubsub.ValidationAccept
}

// verifierView adapts governance's view and the head tracker to fleet.View.
type verifierView struct {
	*governance.TeeView
	ns    governance.NamespaceID
	heads *fleet.HeadTracker
}

func (v verifierView) Policy() *attest.Policy { return v.TeeView.Policy }
func (v verifierView) HeadAge(h [32]byte) (time.Duration, bool) {
	return v.heads.Age([32]byte(v.ns), h, time.Now())
}

// admit checks an announce and, if it passes, publishes
// MemberJoinedViaTeeAttestation and the root keys for the replica.
func (f *fleetState) admit(ctx context.Context, ns governance.NamespaceID, a *fleet.Announce) {
	view, err := f.n.eng.TeeView(ns)
	if err != nil {
		return
	}
	if heads, _, err := f.n.eng.Heads(ns); err == nil {
		fleet.Observe(f.heads, [32]byte(ns), heads, time.Now())
	}
	adm, err := f.checker.Check(ctx, [32]byte(ns), a, verifierView{TeeView: view, ns: ns, heads: f.heads})
	if err != nil {
		reasons := fleet.Reasons(err)
		for _, r := range reasons {
			f.m.refused.WithLabelValues(string(r)).Inc()
		}
		lvl := slog.LevelWarn
		if len(reasons) == 1 && reasons[0] == fleet.ReasonAlreadyMember {
			lvl = slog.LevelDebug // re-announces in flight while admission spreads
		}
		f.n.log.Log(ctx, lvl, "TeeAttestationAnnounce refused", "namespace", ns.String()[:16], "member", fmt.Sprintf("%x", a.Member[:8]), "reasons", reasons, "err", err)
		return
	}
	// A short random delay lets a concurrent verifier's admission arrive
	// first, so racing verifiers rarely both publish (both would still
	// converge to one membership).
	select {
	case <-time.After(time.Duration(rand.IntN(20)) * time.Millisecond):
	case <-ctx.Done():
		return
	}
	if v, err := f.n.eng.TeeView(ns); err == nil && (v.IsMember(adm.Member) || v.QuoteUsed(adm.QuoteHash)) {
		return
	}
	f.n.mu.Lock()
	wires, err := f.n.eng.AdmitTeeMember(ctx, ns, adm)
	if err == nil {
		f.n.publish(ctx, ns, wires)
	}
	f.n.mu.Unlock()
	if err != nil {
		f.n.log.Warn("admitting fleet replica", "err", err)
		return
	}
	f.m.admitted.Inc()
	mode := "TDX"
	if adm.Mock {
		mode = "MOCK TDX"
	}
	f.n.log.Info("fleet replica admitted as ReadOnlyTee", "namespace", ns.String()[:16], "member", fmt.Sprintf("%x", adm.Member[:8]),
		"mrtd", adm.MRTD.String()[:16], "tcbStatus", adm.TcbStatus, "quote", mode)
}

// FleetJoin makes this node a candidate fleet replica of ns.
func (n *Node) FleetJoin(ctx context.Context, ns governance.NamespaceID) (*FleetJoinResult, error) {
	return n.fleet.join(ctx, ns)
}

// FleetLeave stops announcing for ns and forgets the fleet-join record. It
// does not purge: an admitted replica stays a member until an admin removes
// it.
func (n *Node) FleetLeave(ns governance.NamespaceID) (*FleetStatus, error) {
	n.fleet.mu.Lock()
	if an := n.fleet.joining[ns]; an != nil {
		an.stop()
		delete(n.fleet.joining, ns)
	}
	n.fleet.mu.Unlock()
	if err := n.st.Update(func(tx *store.Tx) error { return tx.Delete(store.Config, fleetJoinKey(ns)) }); err != nil {
		return nil, fmt.Errorf("fleet-join stop: %w", err)
	}
	return n.FleetStatus(ns)
}

// FleetStatus reports this node's standing as a replica of ns.
func (n *Node) FleetStatus(ns governance.NamespaceID) (*FleetStatus, error) {
	st, err := n.eng.TeeStatus(ns)
	if err != nil {
		return nil, err
	}
	n.fleet.mu.Lock()
	_, announcing := n.fleet.joining[ns]
	n.fleet.mu.Unlock()
	return &FleetStatus{Namespace: ns.String(), Admitted: st.Admitted && st.Member, HasGroupKey: st.HasRootKey, Announcing: announcing}, nil
}

// FleetReplicas lists every replica ever admitted to ns with whether it is
// still a member and whether its recorded measurements meet the
// namespace's current TeeAdmissionPolicy.
func (n *Node) FleetReplicas(ns governance.NamespaceID) ([]ReplicaInfo, error) {
	reps, err := n.eng.Replicas(ns)
	if err != nil {
		return nil, err
	}
	out := make([]ReplicaInfo, 0, len(reps))
	for _, r := range reps {
		a := r.Admission
		ri := ReplicaInfo{
			Key: governance.PublicKey(a.Member).String(), Member: r.Member, QuoteHash: a.QuoteHash.String(),
			MRTD: a.MRTD.String(), TcbStatus: string(a.TcbStatus), Mock: a.Mock, MeetsPolicy: r.PolicyErr == nil,
		}
		for i := range a.RTMR {
			ri.RTMR[i] = a.RTMR[i].String()
		}
		if r.PolicyErr != nil {
			ri.PolicyError = r.PolicyErr.Error()
			for _, reason := range fleet.Reasons(r.PolicyErr) {
				ri.Reasons = append(ri.Reasons, string(reason))
			}
		}
		out = append(out, ri)
	}
	return out, nil
}

// resume starts announcers for fleet-joined namespaces (recorded, or listed
// in the config) that are not admitted yet.
func (f *fleetState) resume(ctx context.Context) {
	for _, s := range f.n.cfg.FleetJoin {
		ns, err := governance.ParseNamespaceID(s)
		if err != nil {
			f.n.log.Error("config fleetJoin: bad namespace id", "id", s, "err", err)
			continue
		}
		if _, err := f.joinAs(ctx, ns, false); err != nil {
			f.n.log.Warn("fleet-join at start", "namespace", s, "err", err)
		}
	}
	for _, ns := range f.joined() {
		if err := f.n.net.Join(p2p.NamespaceID(ns)); err != nil {
			continue
		}
		f.startAnnouncer(ctx, ns)
	}
}

// FleetJoinResult answers a fleet-join.
type FleetJoinResult struct {
	Namespace  string `json:"namespace"`
	MemberKeys string `json:"memberKeys"`
	// Source is the quote source: "tdx", or "mock" (no hardware).
	Source string `json:"source"`
}

// FleetStatus is a node's standing as a fleet replica of a namespace.
type FleetStatus struct {
	Namespace   string `json:"namespace"`
	Admitted    bool   `json:"admitted"`
	HasGroupKey bool   `json:"hasGroupKey"`
	Announcing  bool   `json:"announcing"`
}

// ReplicaInfo is one fleet replica's admission record, judged against the
// namespace's current TeeAdmissionPolicy.
type ReplicaInfo struct {
	Key string `json:"key"`
	// Member: still a member of the namespace (false once removed).
	Member    bool      `json:"member"`
	QuoteHash string    `json:"quoteHash"`
	MRTD      string    `json:"mrtd"`
	RTMR      [4]string `json:"rtmr"`
	TcbStatus string    `json:"tcbStatus"`
	Mock      bool      `json:"mock"`
	// MeetsPolicy: the recorded values pass the current policy. A policy
	// changed after admission removes no one by itself.
	MeetsPolicy bool     `json:"meetsPolicy"`
	Reasons     []string `json:"reasons,omitempty"`
	PolicyError string   `json:"policyError,omitempty"`
}

// ReconcileReport is what a stand-alone reconcile sweep did.
type ReconcileReport struct {
	Completed    int `json:"completed"`
	StaleCleared int `json:"staleCleared"`
	Kept         int `json:"kept"`
	// Evicted counts fleet-joined namespaces found evicted without a
	// marker (an event lost to a crash) and purged now.
	Evicted int `json:"evicted"`
}

// Reconcile runs the self-purge sweep without starting the network: what
// `fleetbox node self-purge reconcile` does from a systemd oneshot before
// the node starts. It opens the store with the configured key source.
func Reconcile(ctx context.Context, cfg Config) (*ReconcileReport, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	key, src, err := loadStoreKey(&n.cfg, n.log)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(n.cfg.Home, StoreFile), key, store.Options{NoSync: n.cfg.NoSync, Logger: n.log})
	key.Wipe()
	if err != nil {
		return nil, fmt.Errorf("opening store with the %s key: %w", src, err)
	}
	defer st.Close()
	n.st = st
	if n.eng, err = n.openEngine(st); err != nil {
		return nil, err
	}
	n.fleet = n.newFleet(st)
	rep, err := n.fleet.purger.Reconcile(ctx)
	out := &ReconcileReport{Completed: rep.Completed, StaleCleared: rep.StaleCleared, Kept: rep.Kept}
	for _, ns := range n.fleet.joined() {
		ts, terr := n.eng.TeeStatus(ns)
		if terr != nil || !ts.Admitted || ts.Member || ts.Incomplete {
			continue
		}
		if perr := n.fleet.purger.Purge(ctx, selfpurge.Target{Namespace: ns}, n.fleet.me(ns)); perr != nil {
			err = errors.Join(err, perr)
			continue
		}
		out.Evicted++
	}
	return out, err
}

// Metrics returns the node's Prometheus registry (for tests and the
// reconcile command's report).
func (n *Node) Metrics() *prometheus.Registry { return n.reg }
