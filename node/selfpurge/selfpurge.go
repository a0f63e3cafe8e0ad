// Package selfpurge destroys a fleet replica's copy of a namespace (or of one
// subgroup) when the replica is evicted, and finishes any purge a crash
// interrupted.
//
// A purge runs in steps, each durable before the next:
//
//  1. write a PendingSelfPurge marker (Meta column, one bbolt commit);
//  2. delete every row the node holds for the target — ops, group keys,
//     namespace identity keys, memberships, contexts and state — in one
//     transaction (the Rows implementation knows the layout);
//  3. unsubscribe from the namespace topic;
//  4. compact the database file, so the deleted bytes leave it;
//  5. clear the marker.
//
// A crash between 1 and 5 leaves the marker. Reconcile, run at start-up and
// by `fleetbox node self-purge reconcile` from a systemd oneshot before the
// node starts, finishes marked purges (the delete is idempotent and the
// compaction is redone), clears stale markers (the node was re-admitted), and
// keeps markers it cannot decide on.
package selfpurge

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetbox/fleetbox/node/store"
)

// Target is what a purge destroys: a whole namespace, or one subgroup of it.
type Target struct {
	Namespace [32]byte `json:"namespace"`
	// Group is the subgroup, or zero for the whole namespace.
	Group [32]byte `json:"group"`
}

// Whole reports whether the target is the whole namespace.
func (t Target) Whole() bool { return t.Group == [32]byte{} }

// Branch is the metrics label of the target's scope.
func (t Target) Branch() string {
	if t.Whole() {
		return "namespace"
	}
	return "subgroup"
}

func (t Target) String() string {
	if t.Whole() {
		return fmt.Sprintf("namespace %x", t.Namespace[:8])
	}
	return fmt.Sprintf("subgroup %x of namespace %x", t.Group[:8], t.Namespace[:8])
}

// markerPrefix is this package's key prefix in the Meta column. A marker's
// row key is the prefix and a random id, never the namespace id: row keys
// are cleartext, and the marker is cleared after the compaction, so its key
// stays in a freed page. The target lives in the sealed value.
const markerPrefix = "selfpurge/pending/"

func markerKey(m Marker) []byte { return append([]byte(markerPrefix), m.ID[:]...) }

// Marker is a PendingSelfPurge record.
type Marker struct {
	ID      [16]byte  `json:"id"`
	Target  Target    `json:"target"`
	Member  [32]byte  `json:"member"` // the evicted namespace identity
	Created time.Time `json:"created"`
}

// Decision is what Reconcile should do with a marker.
type Decision int

const (
	// Undecided: the node cannot tell (for example, state it cannot read).
	Undecided Decision = iota
	// StillEvicted: the replica is still removed; finish the purge.
	StillEvicted
	// Readmitted: the replica is a member again; the marker is stale.
	Readmitted
	// AlreadyPurged: the rows are gone (the crash came after the delete);
	// the marker is stale once the file is compacted.
	AlreadyPurged
)

// Rows knows how the node lays out a namespace in the store.
type Rows interface {
	// Delete removes, inside tx, every row the node holds for t, and
	// returns how many. It must be idempotent.
	Delete(tx *store.Tx, t Target) (int, error)
	// Decide says whether the marker's member is still evicted from t,
	// judged from the replicated state this node holds.
	Decide(tx *store.Tx, m Marker) (Decision, error)
}

// Config configures a Purger.
type Config struct {
	Store *store.Store
	Rows  Rows
	// Unsubscribe leaves the namespace topic (whole-namespace purges); nil
	// when no network runs (the reconcile command).
	Unsubscribe func(ns [32]byte)
	// BeforeDelete, if set, runs before the delete transaction: the node
	// stops everything that could write the target back (in-flight syncs).
	BeforeDelete func(t Target)
	// AfterDelete, if set, runs once the delete has committed (the node
	// drops group keys from memory there).
	AfterDelete func(t Target)
	// Registerer receives the metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Purger runs purges and reconcile sweeps. It is safe for concurrent use;
// purges are serialized.
type Purger struct {
	cfg Config
	log *slog.Logger

	failures  *prometheus.CounterVec
	reconcile *prometheus.CounterVec
	completed *prometheus.CounterVec
	// Dropped counts purge events the node could not queue; the next
	// reconcile sweep catches them up (self_purge_events_dropped_total).
	Dropped prometheus.Counter

	sem chan struct{}
}

// New returns a Purger. It starts nothing.
func New(cfg Config) *Purger {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Purger{
		cfg: cfg, log: log, sem: make(chan struct{}, 1),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "self_purge_failures_total", Help: "Self-purge steps that failed, by scope (branch) and step (class).",
		}, []string{"branch", "class"}),
		reconcile: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "self_purge_reconcile_total", Help: "Markers handled by reconcile sweeps, by outcome.",
		}, []string{"outcome"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "self_purge_completed_total", Help: "Self-purges finished (marker cleared), by scope.",
		}, []string{"branch"}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "self_purge_events_dropped_total", Help: "Self-purge events dropped because the queue was full; reconcile catches them up.",
		}),
	}
	for _, o := range []string{OutcomeCompleted, OutcomeStaleCleared, OutcomeKept} {
		p.reconcile.WithLabelValues(o)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.failures, p.reconcile, p.completed, p.Dropped)
	}
	return p
}

// Step names, the class label of self_purge_failures_total.
const (
	StepMarker      = "marker"
	StepDelete      = "delete"
	StepCompact     = "compact"
	StepClearMarker = "clear_marker"
	StepDecide      = "decide"
)

// Reconcile outcomes, the outcome label of self_purge_reconcile_total.
const (
	OutcomeCompleted    = "completed"
	OutcomeStaleCleared = "stale_cleared"
	OutcomeKept         = "kept"
)

// StallEnv names a fault-injection hook for crash tests: when it is set to
// a step name ("marked" or "deleted"), a purge blocks forever after that
// step so a test can kill the process mid-purge. It only delays; it never
// skips a step.
const StallEnv = "FLEETBOX_SELF_PURGE_STALL"

// Purge destroys the node's copy of t after the node applied its own
// eviction. Every step is durable before the next; a failure leaves the
// marker for Reconcile.
func (p *Purger) Purge(ctx context.Context, t Target, member [32]byte) error {
	p.sem <- struct{}{}
	defer func() { <-p.sem }()
	m := Marker{Target: t, Member: member, Created: time.Now().UTC()}
	if _, err := rand.Read(m.ID[:]); err != nil {
		return err
	}
	if err := p.cfg.Store.Update(func(tx *store.Tx) error { return putMarker(tx, m) }); err != nil {
		p.failures.WithLabelValues(t.Branch(), StepMarker).Inc()
		return fmt.Errorf("self-purge of %s: writing the marker: %w", t, err)
	}
	p.log.Warn("evicted: self-purge started", "target", t.String())
	if os.Getenv(StallEnv) == "marked" {
		p.log.Warn("self-purge stalled by " + StallEnv + " (crash test)")
		<-make(chan struct{})
	}
	return p.finish(ctx, m)
}

// finish runs steps 2-5 for a marker that is already durable.
func (p *Purger) finish(ctx context.Context, m Marker) error {
	t := m.Target
	if p.cfg.BeforeDelete != nil {
		p.cfg.BeforeDelete(t)
	}
	var n int
	err := p.cfg.Store.Update(func(tx *store.Tx) error {
		var err error
		n, err = p.cfg.Rows.Delete(tx, t)
		return err
	})
	if err != nil {
		p.failures.WithLabelValues(t.Branch(), StepDelete).Inc()
		return fmt.Errorf("self-purge of %s: deleting rows: %w", t, err)
	}
	if p.cfg.AfterDelete != nil {
		p.cfg.AfterDelete(t)
	}
	if os.Getenv(StallEnv) == "deleted" {
		p.log.Warn("self-purge stalled by " + StallEnv + " (crash test)")
		<-make(chan struct{})
	}
	if t.Whole() && p.cfg.Unsubscribe != nil {
		p.cfg.Unsubscribe(t.Namespace)
	}
	if err := p.cfg.Store.Compact(ctx); err != nil {
		p.failures.WithLabelValues(t.Branch(), StepCompact).Inc()
		return fmt.Errorf("self-purge of %s: compacting: %w", t, err)
	}
	if err := p.cfg.Store.Update(func(tx *store.Tx) error { return tx.Delete(store.Meta, markerKey(m)) }); err != nil {
		p.failures.WithLabelValues(t.Branch(), StepClearMarker).Inc()
		return fmt.Errorf("self-purge of %s: clearing the marker: %w", t, err)
	}
	p.completed.WithLabelValues(t.Branch()).Inc()
	p.log.Warn("self-purge complete", "target", t.String(), "rows_deleted", n)
	return nil
}

// Report counts what a reconcile sweep did.
type Report struct {
	Completed, StaleCleared, Kept int
}

// Reconcile handles every PendingSelfPurge marker: finishes purges of
// replicas still evicted, clears markers of re-admitted ones, keeps markers
// it cannot decide on. Errors on one marker do not stop the others; they
// are joined in the returned error.
func (p *Purger) Reconcile(ctx context.Context) (Report, error) {
	p.sem <- struct{}{}
	defer func() { <-p.sem }()
	var (
		rep     Report
		errs    []error
		markers []Marker
	)
	err := p.cfg.Store.View(func(tx *store.Tx) error {
		return tx.ForEach(store.Meta, []byte(markerPrefix), func(_, v []byte) error {
			var m Marker
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("reading a self-purge marker: %w", err)
			}
			markers = append(markers, m)
			return nil
		})
	})
	if err != nil {
		return rep, err
	}
	for _, m := range markers {
		var d Decision
		err := p.cfg.Store.View(func(tx *store.Tx) error {
			var err error
			d, err = p.cfg.Rows.Decide(tx, m)
			return err
		})
		switch {
		case err != nil:
			p.failures.WithLabelValues(m.Target.Branch(), StepDecide).Inc()
			errs = append(errs, fmt.Errorf("deciding on %s: %w", m.Target, err))
			fallthrough
		case d == Undecided:
			rep.Kept++
			p.reconcile.WithLabelValues(OutcomeKept).Inc()
			p.log.Warn("self-purge marker kept: cannot decide", "target", m.Target.String())
		case d == Readmitted:
			if err := p.cfg.Store.Update(func(tx *store.Tx) error { return tx.Delete(store.Meta, markerKey(m)) }); err != nil {
				p.failures.WithLabelValues(m.Target.Branch(), StepClearMarker).Inc()
				errs = append(errs, err)
				continue
			}
			rep.StaleCleared++
			p.reconcile.WithLabelValues(OutcomeStaleCleared).Inc()
			p.log.Info("stale self-purge marker cleared: re-admitted", "target", m.Target.String())
		case d == AlreadyPurged:
			err := p.cfg.Store.Compact(ctx)
			if err == nil {
				err = p.cfg.Store.Update(func(tx *store.Tx) error { return tx.Delete(store.Meta, markerKey(m)) })
			}
			if err != nil {
				p.failures.WithLabelValues(m.Target.Branch(), StepCompact).Inc()
				errs = append(errs, fmt.Errorf("finishing %s: %w", m.Target, err))
				continue
			}
			rep.StaleCleared++
			p.reconcile.WithLabelValues(OutcomeStaleCleared).Inc()
			p.log.Info("stale self-purge marker cleared: rows already gone, file compacted", "target", m.Target.String())
		case d == StillEvicted:
			if err := p.finish(ctx, m); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Completed++
			p.reconcile.WithLabelValues(OutcomeCompleted).Inc()
		}
	}
	return rep, errors.Join(errs...)
}

// Pending lists the markers present.
func (p *Purger) Pending() ([]Marker, error) {
	var out []Marker
	err := p.cfg.Store.View(func(tx *store.Tx) error {
		return tx.ForEach(store.Meta, []byte(markerPrefix), func(_, v []byte) error {
			var m Marker
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}

func putMarker(tx *store.Tx, m Marker) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Put(store.Meta, markerKey(m), b)
}
