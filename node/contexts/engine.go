package contexts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/store"
)

// Fetcher fetches application bytes this node lacks from peers of ns. The
// node implements it over libp2p (fetch.go has the protocol).
type Fetcher interface {
	FetchApplication(ctx context.Context, ns NamespaceID, app ApplicationID) ([]byte, error)
}

// Config configures an Engine.
type Config struct {
	Store      *store.Store
	Governance *governance.Engine
	// CacheDir holds the compiled-code cache (one directory per
	// application); empty: no cache.
	CacheDir string
	// Limits of calls; zero fields take wasmhost's defaults, and the sizes
	// never exceed governance's context-op limits.
	Limits wasmhost.Limits
	// Fetcher gets missing applications; nil: only installed ones run.
	Fetcher Fetcher
	// UndoWindow bounds the undo records kept per context (default 4096
	// ops, and at most 64 MiB of them).
	UndoWindow int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Engine keeps the contexts of this node's namespaces. New loads them; Run
// applies what governance admits (Notify wakes it). Methods are safe for
// concurrent use.
type Engine struct {
	gov     *governance.Engine
	st      *store.Store
	host    *wasmhost.Host
	fetch   Fetcher
	log     *slog.Logger
	m       *metrics
	window  int
	budget  int
	wake    chan struct{}
	fetchMu sync.Mutex // one fetch of an application at a time

	mu      sync.Mutex // guards spaces and pending
	spaces  map[NamespaceID]*nsState
	pending map[NamespaceID]bool
}

// nsState is one namespace's contexts. mu is held while they change and
// during a call (execution and recording), so calls in a namespace are
// serial; queries share it for reading.
type nsState struct {
	mu       sync.RWMutex
	contexts map[ContextID]*ctxState
	gone     bool

	qmu     sync.Mutex // guards queue and leading
	queue   []*callReq // calls waiting for the leader (calls.go)
	leading bool
}

// New loads the stored contexts. It starts nothing.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil || cfg.Governance == nil {
		return nil, errors.New("contexts: Config needs Store and Governance")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UndoWindow <= 0 {
		cfg.UndoWindow = 4096
	}
	lim := cfg.Limits
	clamp := func(v *int, max int) {
		if *v <= 0 || *v > max {
			*v = max
		}
	}
	clamp(&lim.MaxInput, governance.MaxContextInput)
	clamp(&lim.MaxKey, governance.MaxContextKey)
	clamp(&lim.MaxValue, governance.MaxContextValue)
	clamp(&lim.MaxWrites, governance.MaxContextWrites)
	clamp(&lim.MaxWriteBytes, governance.MaxContextWriteBytes)
	e := &Engine{}
	m, err := newMetrics(cfg.Registerer, e)
	if err != nil {
		return nil, err
	}
	*e = Engine{gov: cfg.Governance, st: cfg.Store, fetch: cfg.Fetcher, log: cfg.Logger, m: m,
		window: cfg.UndoWindow, budget: 64 << 20, wake: make(chan struct{}, 1),
		spaces: map[NamespaceID]*nsState{}, pending: map[NamespaceID]bool{},
		host: wasmhost.New(wasmhost.Config{CacheDir: cfg.CacheDir, Limits: lim, Logger: cfg.Logger})}
	loaded, err := loadContexts(cfg.Store)
	if err != nil {
		return nil, fmt.Errorf("loading contexts: %w", err)
	}
	for ns, cs := range loaded {
		e.spaces[ns] = &nsState{contexts: cs}
		e.pending[ns] = true
	}
	nss, err := cfg.Governance.Namespaces()
	if err != nil {
		return nil, err
	}
	for _, ns := range nss {
		e.pending[ns] = true
	}
	return e, nil
}

// Host is the WASM host (limits, loaded applications).
func (e *Engine) Host() *wasmhost.Host { return e.host }

// Notify tells the engine that governance admitted ops in ns.
func (e *Engine) Notify(ns NamespaceID) {
	e.mu.Lock()
	e.pending[ns] = true
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run applies admitted context ops as Notify reports them, and fetches
// applications that contexts use and this node lacks, until ctx ends. It
// returns nil on cancellation.
func (e *Engine) Run(ctx context.Context) error {
	defer e.host.Close(context.Background())
	// Fetching waits on peers (for up to fetchPatience): it runs beside the
	// loop that applies ops, so a missing application never delays state.
	fetchNS := make(chan []NamespaceID, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case nss := <-fetchNS:
				e.prefetch(ctx, nss)
			}
		}
	})
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		e.mu.Lock()
		var todo []NamespaceID
		for ns := range e.pending {
			todo = append(todo, ns)
		}
		clear(e.pending)
		e.mu.Unlock()
		for _, ns := range todo {
			if err := e.Sync(ns); err != nil && !errors.Is(err, governance.ErrUnknownNamespace) {
				e.log.Warn("applying context ops", "namespace", ns.String(), "err", err)
			}
		}
		if len(todo) > 0 {
			select {
			case fetchNS <- todo:
			default: // a prefetch is running; the next tick retries
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-e.wake:
		case <-tick.C:
			e.mu.Lock()
			for ns := range e.spaces {
				e.pending[ns] = true
			}
			e.mu.Unlock()
		}
	}
}

func (e *Engine) space(ns NamespaceID, create bool) *nsState {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.spaces[ns]
	if s == nil && create {
		s = &nsState{contexts: map[ContextID]*ctxState{}}
		e.spaces[ns] = s
	}
	return s
}

// Sync applies every context op governance admitted in ns and this engine
// has not applied yet, and persists the result in one transaction.
func (e *Engine) Sync(ns NamespaceID) error {
	s := e.space(ns, true)
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.syncLocked(ns, s)
}

func (e *Engine) syncLocked(ns NamespaceID, s *nsState) error {
	if s.gone {
		return fmt.Errorf("%w: %s was purged", governance.ErrUnknownNamespace, ns)
	}
	from, entries, changed, err := e.gov.ContextChanges(ns)
	if err != nil || !changed {
		return err
	}
	byCtx := map[ContextID][]governance.ContextEntry{}
	for _, ce := range entries {
		byCtx[ce.Context] = append(byCtx[ce.Context], ce)
	}
	touched := map[ContextID]*ctxState{}
	for id, c := range s.contexts {
		if n := len(c.log); (n > 0 && c.log[n-1].key.Compare(from) >= 0) || (n == 0 && c.hasBase && c.baseKey.Compare(from) >= 0) {
			touched[id] = c
		}
	}
	for id := range byCtx {
		if s.contexts[id] == nil {
			s.contexts[id] = newCtxState(id)
		}
		touched[id] = s.contexts[id]
	}
	ids := make([]ContextID, 0, len(touched))
	for id := range touched {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b ContextID) int { return slices.Compare(a[:], b[:]) })
	for _, id := range ids {
		if err := e.reconcile(ns, touched[id], from, byCtx[id]); err != nil {
			return err
		}
	}
	dirty := false
	for _, id := range ids {
		dirty = dirty || touched[id].meta || len(touched[id].dirty) > 0
	}
	if !dirty {
		return nil // only ops applied already (this node's own calls)
	}
	err = e.st.Update(func(tx *store.Tx) error {
		for _, id := range ids {
			if err := persist(tx, ns, touched[id]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing context state of namespace %s: %w", ns, err)
	}
	return nil
}

// reconcile brings c to the ordered list: its applied ops before from
// stay; those at or after from are compared with tail (the effective ops
// from there on), the common prefix kept, the rest undone and tail's rest
// applied. A change reaching past the undo records rebuilds c from its
// whole history.
func (e *Engine) reconcile(ns NamespaceID, c *ctxState, from OpKey, tail []governance.ContextEntry) error {
	if c.hasBase && c.baseKey.Compare(from) >= 0 {
		return e.rebuild(ns, c)
	}
	// The applied ops at or after from, oldest first.
	i := len(c.log)
	for i > 0 && c.log[i-1].key.Compare(from) >= 0 {
		i--
	}
	old := c.log[i:]
	p := 0
	for p < len(old) && p < len(tail) && sameKey(old[p].key, tail[p].Key) {
		p++
	}
	if undo := len(old) - p; undo > 0 {
		e.m.reorders.Inc()
		for range undo {
			if !c.undoLast() {
				return e.rebuild(ns, c)
			}
		}
	}
	for k := p; k < len(tail); k++ {
		c.apply(&tail[k])
		e.m.applied.Inc()
	}
	c.trim(e.window, e.budget)
	return nil
}

// rebuild re-applies c's whole history, unless the stored ops are its
// prefix (a restart), in which case it applies only the rest.
func (e *Engine) rebuild(ns NamespaceID, c *ctxState) error {
	all, err := e.gov.ContextEntries(ns, c.id)
	if err != nil {
		return err
	}
	n := c.count()
	if len(c.log) == 0 && n <= uint64(len(all)) && chainOf(all[:n]) == c.baseChain {
		if n > 0 {
			c.baseKey = all[n-1].Key
		}
		for k := n; k < uint64(len(all)); k++ {
			c.apply(&all[k])
			e.m.applied.Inc()
		}
		c.trim(e.window, e.budget)
		return nil
	}
	e.m.rebuilds.Inc()
	e.log.Info("rebuilding a context from its history", "namespace", ns.String()[:16], "context", c.id.String()[:16], "ops", len(all))
	c.reset()
	for k := range all {
		c.apply(&all[k])
		e.m.applied.Inc()
	}
	c.trim(e.window, e.budget)
	return nil
}

// Forget drops ns from memory (self-purge) and unloads applications no
// other namespace uses. unload lists those applications.
func (e *Engine) Forget(ctx context.Context, ns NamespaceID, unload []ApplicationID) {
	e.mu.Lock()
	s := e.spaces[ns]
	delete(e.spaces, ns)
	delete(e.pending, ns)
	e.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		s.gone = true
		clear(s.contexts)
		s.mu.Unlock()
	}
	for _, a := range unload {
		if err := e.host.Unload(ctx, wasmhost.ApplicationID(a), true); err != nil {
			e.log.Warn("removing compiled code of a purged application", "app", a.String(), "err", err)
		}
	}
}

// ForgetContexts drops some contexts of ns from memory (a subgroup purge).
func (e *Engine) ForgetContexts(ns NamespaceID, ids []ContextID) {
	if s := e.space(ns, false); s != nil {
		s.mu.Lock()
		for _, id := range ids {
			delete(s.contexts, id)
		}
		s.mu.Unlock()
	}
}

// stateTotals sums the live contexts' state for the gauges.
func (e *Engine) stateTotals() (bytes, keys, n int) {
	e.mu.Lock()
	spaces := make([]*nsState, 0, len(e.spaces))
	for _, s := range e.spaces {
		spaces = append(spaces, s)
	}
	e.mu.Unlock()
	for _, s := range spaces {
		s.mu.RLock()
		for _, c := range s.contexts {
			if c.created && !c.deleted {
				bytes += c.bytes
				keys += len(c.kv)
				n++
			}
		}
		s.mu.RUnlock()
	}
	return bytes, keys, n
}
