package p2p

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// fakeEngine is a tiny in-memory op DAG. An op's wire bytes are
// ns(32) | nparents(1) | parents(32 each) | signer(32) | payload | sig(64);
// the signature covers everything before it. Ops by signers not in allowed
// are refused on apply.
type fakeEngine struct {
	mu      sync.Mutex
	ns      NamespaceID
	joined  bool
	allowed map[string]bool
	ops     map[OpID][]byte
	parents map[OpID][]OpID
	order   []OpID // applied, parents first
	heads   map[OpID]bool
	pending map[OpID][]byte
}

var errFakeRefused = errors.New("fake: signer not allowed")

func newFakeEngine(ns NamespaceID, joined bool, allowed ...ed25519.PublicKey) *fakeEngine {
	e := &fakeEngine{ns: ns, joined: joined, allowed: map[string]bool{}, ops: map[OpID][]byte{},
		parents: map[OpID][]OpID{}, heads: map[OpID]bool{}, pending: map[OpID][]byte{}}
	for _, k := range allowed {
		e.allowed[string(k)] = true
	}
	return e
}

func fakeOp(ns NamespaceID, parents []OpID, sk ed25519.PrivateKey, payload []byte) []byte {
	var b bytes.Buffer
	b.Write(ns[:])
	b.WriteByte(byte(len(parents)))
	for _, p := range parents {
		b.Write(p[:])
	}
	b.Write(sk.Public().(ed25519.PublicKey))
	b.Write(payload)
	b.Write(ed25519.Sign(sk, b.Bytes()))
	return b.Bytes()
}

type fakeParsed struct {
	id      OpID
	ns      NamespaceID
	parents []OpID
	signer  ed25519.PublicKey
	wire    []byte
}

func parseFake(wire []byte) (*fakeParsed, error) {
	if len(wire) < 32+1+32+64 {
		return nil, errors.New("fake: short op")
	}
	np := int(wire[32])
	if len(wire) < 33+32*np+32+64 {
		return nil, errors.New("fake: short op")
	}
	p := &fakeParsed{id: sha256.Sum256(wire), ns: NamespaceID(wire[:32])}
	for i := range np {
		p.parents = append(p.parents, OpID(wire[33+32*i:]))
	}
	p.signer = ed25519.PublicKey(wire[33+32*np : 33+32*np+32])
	body, sig := wire[:len(wire)-64], wire[len(wire)-64:]
	if !ed25519.Verify(p.signer, body, sig) {
		return nil, errors.New("fake: bad signature")
	}
	return p, nil
}

func (e *fakeEngine) Namespaces() ([]NamespaceID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.joined {
		return nil, nil
	}
	return []NamespaceID{e.ns}, nil
}

func (e *fakeEngine) CheckOp(ns NamespaceID, wire []byte) (OpID, error) {
	p, err := parseFake(wire)
	if err != nil {
		return OpID{}, err
	}
	if p.ns != ns {
		return OpID{}, errors.New("fake: wrong namespace")
	}
	return p.id, nil
}

func (e *fakeEngine) Known(ns NamespaceID, id OpID) (applied, pending bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, applied = e.ops[id]
	_, pending = e.pending[id]
	return applied, pending, nil
}

func (e *fakeEngine) Apply(_ context.Context, ns NamespaceID, wires [][]byte) (ApplyResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var r ApplyResult
	if ns != e.ns || !e.joined {
		return r, ErrUnknownNamespace
	}
	var fresh []*fakeParsed
	for _, w := range wires {
		p, err := parseFake(w)
		if err == nil && !e.allowed[string(p.signer)] {
			err = errFakeRefused
		}
		if err != nil {
			r.Refused++
			if r.FirstRefusal == nil {
				r.FirstRefusal = err
			}
			continue
		}
		if _, ok := e.ops[p.id]; ok {
			r.Duplicate++
			continue
		}
		p.wire = w
		fresh = append(fresh, p)
	}
	ready := func(p *fakeParsed) bool {
		return !slices.ContainsFunc(p.parents, func(q OpID) bool { _, ok := e.ops[q]; return !ok })
	}
	apply := func(p *fakeParsed) {
		e.ops[p.id], e.parents[p.id] = p.wire, p.parents
		e.order = append(e.order, p.id)
		for _, q := range p.parents {
			delete(e.heads, q)
		}
		e.heads[p.id] = true
		delete(e.pending, p.id)
		r.Applied++
	}
	// In arrival order first (a sync sends parents first), then whatever
	// waits, until nothing more applies.
	for _, p := range fresh {
		if ready(p) {
			apply(p)
		} else {
			e.pending[p.id] = p.wire
		}
	}
	for progress := len(e.pending) > 0; progress; {
		progress = false
		for _, w := range e.pending {
			p, _ := parseFake(w)
			if ready(p) {
				p.wire = w
				apply(p)
				progress = true
			}
		}
	}
	seen := map[OpID]bool{}
	for _, w := range e.pending {
		p, _ := parseFake(w)
		for _, q := range p.parents {
			if _, ok := e.ops[q]; !ok && e.pending[q] == nil && !seen[q] {
				seen[q] = true
				r.Missing = append(r.Missing, q)
			}
		}
	}
	r.Pending = len(e.pending)
	return r, nil
}

func (e *fakeEngine) sortedHeads() []OpID {
	var hs []OpID
	for h := range e.heads {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b OpID) int { return bytes.Compare(a[:], b[:]) })
	return hs
}

func (e *fakeEngine) Heads(ns NamespaceID) ([]OpID, uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ns != e.ns || !e.joined {
		return nil, 0, ErrUnknownNamespace
	}
	return e.sortedHeads(), uint64(len(e.order)), nil
}

func (e *fakeEngine) Locator(ns NamespaceID, max int) ([]OpID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ns != e.ns || !e.joined {
		return nil, ErrUnknownNamespace
	}
	out := e.sortedHeads()
	for step, i := 1, len(e.order)-1; i >= 0 && len(out) < max; step, i = step*2, i-step {
		out = append(out, e.order[i])
	}
	return out, nil
}

func (e *fakeEngine) OpsMissing(ns NamespaceID, known []OpID, fn func([]byte) error) error {
	e.mu.Lock()
	if ns != e.ns || !e.joined {
		e.mu.Unlock()
		return ErrUnknownNamespace
	}
	have := map[OpID]bool{}
	stack := slices.Clone(known)
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if _, ok := e.ops[id]; !ok || have[id] {
			continue
		}
		have[id] = true
		stack = append(stack, e.parents[id]...)
	}
	var send [][]byte
	for _, id := range e.order {
		if !have[id] {
			send = append(send, e.ops[id])
		}
	}
	e.mu.Unlock()
	for _, w := range send {
		if err := fn(w); err != nil {
			return err
		}
	}
	return nil
}

func (e *fakeEngine) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.order)
}

func (e *fakeEngine) headsString() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Sprint(e.sortedHeads())
}

// author builds ops on top of the engine's current heads and applies them.
func (e *fakeEngine) author(sk ed25519.PrivateKey, payload string) []byte {
	e.mu.Lock()
	w := fakeOp(e.ns, e.sortedHeads(), sk, []byte(payload))
	e.mu.Unlock()
	if _, err := e.Apply(context.Background(), e.ns, [][]byte{w}); err != nil {
		panic(err)
	}
	return w
}
