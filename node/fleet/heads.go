package fleet

import (
	"sync"
	"time"
)

// HeadTracker remembers, per namespace, when each DAG head stopped being a
// head, so a verifier can tell how fresh the head an announce names is. It
// keeps a bounded number of superseded heads per namespace.
type HeadTracker struct {
	mu sync.Mutex // guards spaces
	// spaces maps a namespace to its current heads and superseded ones.
	spaces map[[32]byte]*headSpace
}

type headSpace struct {
	current    map[[32]byte]bool
	superseded map[[32]byte]time.Time
}

// maxSuperseded bounds the remembered superseded heads per namespace.
const maxSuperseded = 4096

// NewHeadTracker returns an empty tracker.
func NewHeadTracker() *HeadTracker { return &HeadTracker{spaces: map[[32]byte]*headSpace{}} }

// Observe records the namespace's current heads at time now.
func Observe[H ~[32]byte](t *HeadTracker, ns [32]byte, heads []H, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.spaces[ns]
	if s == nil {
		s = &headSpace{current: map[[32]byte]bool{}, superseded: map[[32]byte]time.Time{}}
		t.spaces[ns] = s
	}
	next := make(map[[32]byte]bool, len(heads))
	for _, h := range heads {
		next[[32]byte(h)] = true
	}
	for h := range s.current {
		if !next[h] {
			if len(s.superseded) >= maxSuperseded {
				var oldest [32]byte
				var ot time.Time
				for k, v := range s.superseded {
					if ot.IsZero() || v.Before(ot) {
						oldest, ot = k, v
					}
				}
				delete(s.superseded, oldest)
			}
			s.superseded[h] = now
		}
	}
	for h := range next {
		delete(s.superseded, h)
	}
	s.current = next
}

// Age reports how long ago head stopped being a head of ns (0 while it is
// one), or known=false if the tracker never saw it as a head.
func (t *HeadTracker) Age(ns [32]byte, head [32]byte, now time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.spaces[ns]
	if s == nil {
		return 0, false
	}
	if s.current[head] {
		return 0, true
	}
	if at, ok := s.superseded[head]; ok {
		return now.Sub(at), true
	}
	return 0, false
}
