package contexts

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/store"
)

// CallResult is what a call, query or creation returns to its caller.
type CallResult struct {
	Context ContextID `json:"context"`
	// Op is the recorded op (empty for a query).
	Op string `json:"op,omitempty"`
	// Output is the return value; OutputText repeats it when it is UTF-8.
	Output     []byte           `json:"output"`
	OutputText string           `json:"outputText,omitempty"`
	Writes     int              `json:"writes"`
	Logs       []string         `json:"logs,omitempty"`
	Events     []wasmhost.Event `json:"events,omitempty"`
	// Wires are the ops to publish (not in JSON).
	Wires [][]byte `json:"-"`
}

func result(c ContextID, r *wasmhost.Result) *CallResult {
	out := &CallResult{Context: c, Output: r.Output, Writes: len(r.Writes), Logs: r.Logs, Events: r.Events}
	if out.Output == nil {
		out.Output = []byte{}
	}
	if utf8.Valid(r.Output) {
		out.OutputText = string(r.Output)
	}
	return out
}

func toGov(ws []wasmhost.Write) []governance.ContextWrite {
	out := make([]governance.ContextWrite, len(ws))
	for i, w := range ws {
		out[i] = governance.ContextWrite{Key: w.Key, Value: w.Value, Delete: w.Delete}
	}
	return out
}

// observe counts a call and its outcome.
func (e *Engine) observe(kind string, start time.Time, err error) {
	e.m.calls.WithLabelValues(kind).Inc()
	e.m.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	if err != nil {
		reason := wasmhost.Reason(err)
		switch {
		case errors.Is(err, governance.ErrReadOnly):
			reason = "read_only"
		case errors.Is(err, governance.ErrNotMember), errors.Is(err, governance.ErrNotAuthorized):
			reason = "unauthorized"
		case errors.Is(err, governance.ErrUnknownContext):
			reason = "unknown_context"
		case errors.Is(err, ErrAppUnavailable):
			reason = "app_unavailable"
		}
		e.m.failures.WithLabelValues(reason).Inc()
	}
}

// Create creates a context of app in group g: it runs the application's
// init method (if it has one) with init as input, as this node's identity,
// against empty state, and records a ContextCreated with its writes.
func (e *Engine) Create(ctx context.Context, ns NamespaceID, g GroupID, app ApplicationID, init []byte) (res *CallResult, err error) {
	start := time.Now()
	defer func() { e.observe("create", start, err) }()
	if err := e.ensureApp(ctx, ns, app); err != nil {
		return nil, err
	}
	me, err := e.gov.Identity(ns)
	if err != nil {
		return nil, err
	}
	s := e.space(ns, true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := e.syncLocked(ns, s); err != nil {
		return nil, err
	}
	r := &wasmhost.Result{}
	methods, _ := e.host.Methods(wasmhost.ApplicationID(app))
	hasInit := false
	for _, m := range methods {
		hasInit = hasInit || m == wasmhost.InitMethod
	}
	if hasInit {
		// The context id is not known before the op is signed; init sees
		// the zero id.
		r, err = e.host.Call(ctx, wasmhost.ApplicationID(app), &wasmhost.Request{Caller: me.Signing, Method: wasmhost.InitMethod, Input: init}, emptyState{})
		if err != nil {
			return nil, fmt.Errorf("running init of application %s: %w", app.String()[:12], err)
		}
	} else if len(init) > 0 {
		return nil, fmt.Errorf("%w: application %s has no init method to take init arguments", wasmhost.ErrNoMethod, app.String()[:12])
	}
	writes := toGov(r.Writes)
	var c *ctxState
	var op OpKey
	cid, wires, err := e.gov.CreateContext(ctx, ns, g, app, init, writes, func(tx *store.Tx, id ContextID, key OpKey) error {
		c, op = newCtxState(id), key
		c.apply(&governance.ContextEntry{Key: key, Context: id, Created: &governance.ContextCreated{Context: id, Application: app, Init: init, Writes: writes}})
		return persist(tx, ns, c)
	})
	if err != nil {
		return nil, fmt.Errorf("creating a context: %w", err)
	}
	s.contexts[cid] = c
	res = result(cid, r)
	res.Op, res.Wires = op.ID.String(), wires
	return res, nil
}

type emptyState struct{}

func (emptyState) Get(string) ([]byte, bool) { return nil, false }

// Call runs a mutating call as this node's namespace identity and records
// it: the writes become a ContextCall op, stored with the new state in one
// transaction. A failed call records nothing and changes nothing.
// ReadOnly and ReadOnlyTee members are refused here, before anything runs.
//
// Concurrent calls in a namespace are group-committed: one caller leads,
// executes the queued calls in order (each sees the writes of those before
// it) and records them as a chain of ops in one store transaction.
func (e *Engine) Call(ctx context.Context, ns NamespaceID, cid ContextID, method string, input []byte) (res *CallResult, err error) {
	start := time.Now()
	defer func() { e.observe("call", start, err) }()
	acc, err := e.gov.Context(ns, cid, true)
	if err != nil {
		return nil, fmt.Errorf("calling %s on context %s: %w", method, cid.String()[:12], err)
	}
	if !governance.ValidMethod(method) {
		return nil, fmt.Errorf("%w: %q is not a method name", wasmhost.ErrNoMethod, method)
	}
	req := &callReq{ctx: ctx, cid: cid, req: wasmhost.Request{Context: cid, Caller: acc.Me, Method: method, Input: input},
		done: make(chan callOut, 1)}
	s := e.space(ns, true)
	s.qmu.Lock()
	s.queue = append(s.queue, req)
	lead := !s.leading
	s.leading = true
	s.qmu.Unlock()
	if lead {
		e.lead(ns, s)
	}
	out := <-req.done
	return out.res, out.err
}

// callReq is a queued call; callOut its outcome.
type callReq struct {
	ctx  context.Context
	cid  ContextID
	req  wasmhost.Request
	done chan callOut
}

type callOut struct {
	res *CallResult
	err error
}

// lead runs one batch of queued calls, then hands the lead to a new
// goroutine if more calls queued meanwhile (so no caller waits on others'
// calls for long).
func (e *Engine) lead(ns NamespaceID, s *nsState) {
	s.qmu.Lock()
	batch := s.queue
	s.queue = nil
	s.qmu.Unlock()
	e.runBatch(ns, s, batch)
	s.qmu.Lock()
	more := len(s.queue) > 0
	if !more {
		s.leading = false
	}
	s.qmu.Unlock()
	if more {
		go e.lead(ns, s)
	}
}

// overlay is a context's state with a batch's earlier writes on top.
type overlay struct {
	c *ctxState
	w map[string]governance.ContextWrite
}

func (o overlay) Get(k string) ([]byte, bool) {
	if w, ok := o.w[k]; ok {
		return w.Value, !w.Delete
	}
	return o.c.Get(k)
}

func (e *Engine) runBatch(ns NamespaceID, s *nsState, batch []*callReq) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fail := func(r *callReq, err error) {
		r.done <- callOut{err: fmt.Errorf("calling %s on context %s: %w", r.req.Method, r.cid.String()[:12], err)}
	}
	if err := e.syncLocked(ns, s); err != nil {
		for _, r := range batch {
			fail(r, err)
		}
		return
	}
	over := map[ContextID]overlay{}
	var calls []*governance.ContextCall
	var ok []*callReq
	var results []*wasmhost.Result
	for _, r := range batch {
		c := s.contexts[r.cid]
		if c == nil || !c.created || c.deleted {
			fail(r, fmt.Errorf("%w: %s", governance.ErrUnknownContext, r.cid))
			continue
		}
		if err := e.ensureApp(r.ctx, ns, c.app); err != nil {
			fail(r, err)
			continue
		}
		o, have := over[r.cid]
		if !have {
			o = overlay{c: c, w: map[string]governance.ContextWrite{}}
			over[r.cid] = o
		}
		res, err := e.host.Call(r.ctx, wasmhost.ApplicationID(c.app), &r.req, o)
		if err != nil {
			fail(r, err)
			continue
		}
		call := &governance.ContextCall{Context: r.cid, Method: r.req.Method, Input: r.req.Input, Writes: toGov(res.Writes)}
		for _, w := range call.Writes {
			o.w[string(w.Key)] = w
		}
		calls, ok, results = append(calls, call), append(ok, r), append(results, res)
	}
	if len(calls) == 0 {
		return
	}
	var applied []*ctxState
	wires, keys, err := e.gov.CallBatch(context.WithoutCancel(ok[0].ctx), ns, calls, func(tx *store.Tx, keys []OpKey) error {
		touched := map[ContextID]*ctxState{}
		for i, call := range calls {
			c := s.contexts[call.Context]
			c.apply(&governance.ContextEntry{Key: keys[i], Context: call.Context, Call: call})
			applied = append(applied, c)
			touched[call.Context] = c
		}
		for _, c := range touched {
			if err := persist(tx, ns, c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for i := len(applied) - 1; i >= 0; i-- {
			applied[i].undoLast()
		}
		for _, r := range ok {
			fail(r, fmt.Errorf("recording the call: %w", err))
		}
		return
	}
	e.m.applied.Add(float64(len(calls)))
	for _, o := range over {
		o.c.trim(e.window, e.budget)
	}
	for i, r := range ok {
		res := result(r.cid, results[i])
		res.Op, res.Wires = keys[i].ID.String(), [][]byte{wires[i]}
		r.done <- callOut{res: res}
	}
}

// Query runs a read-only call against this node's current state. Any
// member of the context's group may query, ReadOnlyTee replicas included.
func (e *Engine) Query(ctx context.Context, ns NamespaceID, cid ContextID, method string, input []byte) (res *CallResult, err error) {
	start := time.Now()
	defer func() { e.observe("query", start, err) }()
	acc, err := e.gov.Context(ns, cid, false)
	if err != nil {
		return nil, fmt.Errorf("querying %s on context %s: %w", method, cid.String()[:12], err)
	}
	s := e.space(ns, true)
	s.mu.RLock()
	c := s.contexts[cid]
	var app ApplicationID
	live := c != nil && c.created && !c.deleted
	if live {
		app = c.app
	}
	s.mu.RUnlock()
	if !live {
		return nil, fmt.Errorf("%w: %s (not applied on this node yet?)", governance.ErrUnknownContext, cid)
	}
	if err := e.ensureApp(ctx, ns, app); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, err := e.host.Call(ctx, wasmhost.ApplicationID(c.app), &wasmhost.Request{Context: cid, Caller: acc.Me, Method: method, Input: input, ReadOnly: true}, c)
	if err != nil {
		return nil, fmt.Errorf("querying %s on context %s: %w", method, cid.String()[:12], err)
	}
	return result(cid, r), nil
}

// Upgrade points a context at another application (Admin or
// MANAGE_APPLICATION). The application must be installed or fetchable.
func (e *Engine) Upgrade(ctx context.Context, ns NamespaceID, cid ContextID, app ApplicationID) ([][]byte, error) {
	if err := e.ensureApp(ctx, ns, app); err != nil {
		return nil, err
	}
	w, err := e.gov.UpgradeContext(ctx, ns, cid, app)
	if err == nil {
		err = e.Sync(ns)
	}
	return w, err
}

// Delete deletes a context and its state (Admin or MANAGE_APPLICATION).
func (e *Engine) Delete(ctx context.Context, ns NamespaceID, cid ContextID) ([][]byte, error) {
	w, err := e.gov.DeleteContext(ctx, ns, cid)
	if err == nil {
		err = e.Sync(ns)
	}
	return w, err
}

// ContextState is a context as this node holds it.
type ContextState struct {
	ID          ContextID     `json:"id"`
	Namespace   NamespaceID   `json:"namespace"`
	Group       GroupID       `json:"group"`
	Application ApplicationID `json:"application"`
	Deleted     bool          `json:"deleted,omitempty"`
	// Root is the state root hash (package doc); equal on every node that
	// applied the same ops.
	Root string `json:"root"`
	Keys int    `json:"keys"`
	// Bytes is the size of keys plus values.
	Bytes int `json:"bytes"`
	// Ops is how many context ops this node applied to it.
	Ops uint64 `json:"ops"`
}

// List describes the contexts of ns that governance knows.
func (e *Engine) List(ns NamespaceID) ([]ContextState, error) {
	infos, err := e.gov.Contexts(ns)
	if err != nil {
		return nil, err
	}
	out := make([]ContextState, 0, len(infos))
	for _, ci := range infos {
		out = append(out, e.describe(ns, ci))
	}
	return out, nil
}

// Show describes one context, with its state root.
func (e *Engine) Show(ns NamespaceID, cid ContextID) (*ContextState, error) {
	infos, err := e.gov.Contexts(ns)
	if err != nil {
		return nil, err
	}
	for _, ci := range infos {
		if ci.ID == cid {
			cs := e.describe(ns, ci)
			return &cs, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", governance.ErrUnknownContext, cid)
}

func (e *Engine) describe(ns NamespaceID, ci governance.ContextInfo) ContextState {
	cs := ContextState{ID: ci.ID, Namespace: ns, Group: ci.Group, Application: ci.Application, Deleted: ci.Deleted}
	s := e.space(ns, false)
	if s == nil {
		return cs
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if c := s.contexts[ci.ID]; c != nil {
		root := c.Root()
		cs.Root, cs.Keys, cs.Bytes, cs.Ops = hex.EncodeToString(root[:]), len(c.kv), c.bytes, c.count()
		cs.Application, cs.Deleted = c.app, c.deleted
	}
	return cs
}

// Root returns a context's state root hash on this node (tests, benchmarks).
func (e *Engine) Root(ns NamespaceID, cid ContextID) ([32]byte, uint64, bool) {
	s := e.space(ns, false)
	if s == nil {
		return [32]byte{}, 0, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.contexts[cid]
	if c == nil {
		return [32]byte{}, 0, false
	}
	return c.Root(), c.count(), true
}
