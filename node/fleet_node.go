package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

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
	d       fleetDeps
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

// fleetDeps is what the fleet machinery uses of its node, each named, where
// it used to reach everything through a pointer back to Node. The network and
// the run context exist only once the node runs (never in a stand-alone
// reconcile), so those are looked up when used.
type fleetDeps struct {
	eng       *governance.Engine
	st        *store.Store
	cfg       FleetConfig
	fleetJoin []string // namespaces the config fleet-joins at start
	log       *slog.Logger
	reg       prometheus.Registerer
	// net returns the running network, or nil.
	net func() fleetNet
	// goRun runs a function on the node's run context; runCtx is that
	// context.
	goRun  func(func(context.Context))
	runCtx func() context.Context
	// authoring serialises authoring and publishing ops (the node's lock),
	// and publish publishes authored ops.
	authoring sync.Locker
	publish   func(ctx context.Context, ns governance.NamespaceID, wires [][]byte) *OpResult
	// contextPurge, if set, wraps the purge's row deletion so that it
	// covers contexts too.
	contextPurge func(rows selfpurge.Rows) *contextPurge
}

// fleetNet is what the fleet uses of the network.
type fleetNet interface {
	ID() peer.ID
	Join(ns p2p.NamespaceID) error
	Leave(ns p2p.NamespaceID) error
	PublishAnnounce(ctx context.Context, ns p2p.NamespaceID, wire []byte) error
	RequestSync(ns p2p.NamespaceID)
}

// fleetDeps names what the fleet uses of n.
func (n *Node) fleetDeps() fleetDeps {
	return fleetDeps{
		eng: n.eng, st: n.st, cfg: n.cfg.Fleet, fleetJoin: n.cfg.FleetJoin, log: n.log, reg: n.reg,
		net: func() fleetNet {
			if n.net == nil {
				return nil
			}
			return n.net
		},
		goRun:     n.goRun,
		runCtx:    func() context.Context { return n.bgCtx },
		authoring: &n.mu,
		publish:   n.publish,
		contextPurge: func(rows selfpurge.Rows) *contextPurge {
			return newContextPurge(n, rows)
		},
	}
}

func newFleet(d fleetDeps) *fleetState {
	v := d.cfg.Verifier
	if v == nil {
		v = attest.NewVerifier(attest.VerifierConfig{Logger: d.log})
	}
	f := &fleetState{
		d:        d,
		checker:  &fleet.Checker{Verifier: v, Window: d.cfg.Window},
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
	d.reg.MustRegister(f.m.refused, f.m.admitted)
	rows := &purgeRows{eng: func() *governance.Engine { return d.eng }, keys: map[selfpurge.Target][]governance.KeyID{}}
	// The purge also deletes context state, the applications only this
	// namespace used and their compiled code (contexts_node.go).
	var purgeRowsOf selfpurge.Rows = rows
	var cp *contextPurge
	if d.contextPurge != nil {
		cp = d.contextPurge(rows)
		purgeRowsOf = cp
	}
	f.purger = selfpurge.New(selfpurge.Config{
		Store: d.st,
		Rows:  purgeRowsOf,
		Unsubscribe: func(ns [32]byte) {
			if net := d.net(); net != nil {
				if err := net.Leave(ns); err != nil {
					d.log.Warn("leaving the namespace topic", "err", err)
				}
			}
		},
		BeforeDelete: func(t selfpurge.Target) {
			cp.before(t)
			if t.Whole() {
				// Retire first: an in-flight sync batch must not write the
				// namespace back after its rows are deleted.
				d.eng.Forget(governance.NamespaceID(t.Namespace))
				return
			}
			// Read the subgroup's key ids now: Delete runs inside the store
			// transaction, where taking the engine's lock could deadlock
			// with a commit waiting for that transaction.
			ids, err := d.eng.GroupKeyIDs(governance.NamespaceID(t.Namespace), governance.GroupID(t.Group))
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
		Registerer: d.reg,
		Logger:     d.log.With("component", "self-purge"),
	})
	return f
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
		_ = f.d.st.View(func(tx *store.Tx) error { var err error; ev, err = evicted(tx); return err })
		if containsNS(ev, ns) {
			return nil, fmt.Errorf("this node was evicted from namespace %s; not re-joining it at start (fleetbox ctl fleet-join joins it again)", ns)
		}
	}
	if f.d.cfg.QuoteSource == nil {
		return nil, badRequest("this node has no quote source (run with --attest-source) and cannot fleet-join")
	}
	keys, err := f.d.eng.JoinNamespace(ns)
	if err != nil {
		return nil, fmt.Errorf("fleet-join: %w", err)
	}
	if err := f.d.st.Update(func(tx *store.Tx) error {
		if err := setEvicted(tx, ns, false); err != nil {
			return err
		}
		return tx.Put(store.Config, fleetJoinKey(ns), []byte{1})
	}); err != nil {
		return nil, fmt.Errorf("fleet-join: recording the namespace: %w", err)
	}
	if err := f.d.net().Join(ns); err != nil {
		return nil, err
	}
	if err := f.startAnnouncer(ctx, ns); err != nil {
		return nil, err
	}
	return &FleetJoinResult{Namespace: ns.String(), MemberKeys: keys.String(), Source: f.d.cfg.QuoteSource.Kind()}, nil
}

// startAnnouncer runs an announcer for ns on the node's run context unless
// one runs or the node is admitted already. Everything it needs is looked
// up before the namespace is registered as announcing: a failed lookup used
// to leave the entry (FleetStatus said Announcing with no announcer, and
// its cancel function was never called).
func (f *fleetState) startAnnouncer(_ context.Context, ns governance.NamespaceID) error {
	if st, err := f.d.eng.TeeStatus(ns); err == nil && st.Member && st.HasRootKey {
		return nil
	}
	sk, agreement, err := f.d.eng.IdentityKeys(ns)
	if err != nil {
		return fmt.Errorf("fleet-join of %s: no namespace identity: %w", ns, err)
	}
	f.mu.Lock()
	if _, running := f.joining[ns]; running {
		f.mu.Unlock()
		return nil
	}
	wake := make(chan struct{}, 1)
	actx, stop := context.WithCancel(f.d.runCtx())
	f.joining[ns] = &announcing{wake: wake, stop: stop}
	f.mu.Unlock()
	a := fleet.NewAnnouncer(fleet.AnnouncerConfig{
		Namespace: ns, Identity: sk, Agreement: agreement, Source: f.d.cfg.QuoteSource,
		Head: func() ([32]byte, error) {
			heads, _, err := f.d.eng.Heads(ns)
			if err != nil {
				return [32]byte{}, err
			}
			if len(heads) == 0 {
				return [32]byte{}, errors.New("the namespace DAG has not synced yet")
			}
			return heads[len(heads)-1], nil
		},
		Publish: func(ctx context.Context, wire []byte) error {
			return f.d.net().PublishAnnounce(ctx, ns, wire)
		},
		Admitted: func() bool {
			st, err := f.d.eng.TeeStatus(ns)
			return err == nil && st.Member && st.HasRootKey
		},
		Wake:       wake,
		MinBackoff: f.d.cfg.AnnounceMinBackoff, MaxBackoff: f.d.cfg.AnnounceMaxBackoff,
		Fetch:  func() { f.d.net().RequestSync(ns) },
		Logger: f.d.log.With("component", "fleet-join", "namespace", ns.String()[:16]),
	})
	f.d.goRun(func(context.Context) {
		defer stop()
		_ = a.Run(actx)
		f.mu.Lock()
		delete(f.joining, ns)
		f.mu.Unlock()
		if st, err := f.d.eng.TeeStatus(ns); err == nil {
			f.remember(ns, st)
		}
	})
	return nil
}

// onApplied runs after ops from the network were applied to ns: it wakes an
// announcer, tracks heads for announce freshness, and detects this node's
// eviction.
func (f *fleetState) onApplied(ns governance.NamespaceID) {
	if heads, _, err := f.d.eng.Heads(ns); err == nil {
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
	st, err := f.d.eng.TeeStatus(ns)
	if err != nil || st.Incomplete {
		return
	}
	for _, t := range f.purgeTargets(ns, *st) {
		select {
		case f.events <- t:
		default:
			f.purger.Dropped.Inc()
			f.d.log.Warn("self-purge event dropped; the next reconcile sweep will purge", "target", t.String())
		}
	}
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
	for _, s := range f.d.fleetJoin {
		ns, err := governance.ParseNamespaceID(s)
		if err != nil {
			f.d.log.Error("config fleetJoin: bad namespace id", "id", s, "err", err)
			continue
		}
		if _, err := f.joinAs(ctx, ns, false); err != nil {
			f.d.log.Warn("fleet-join at start", "namespace", s, "err", err)
		}
	}
	for _, ns := range f.joined() {
		if err := f.d.net().Join(ns); err != nil {
			continue
		}
		if err := f.startAnnouncer(ctx, ns); err != nil {
			f.d.log.Error("fleet-join at start", "namespace", ns.String(), "err", err)
		}
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

// Metrics returns the node's Prometheus registry (for tests and the
// reconcile command's report).
func (n *Node) Metrics() *prometheus.Registry { return n.reg }
