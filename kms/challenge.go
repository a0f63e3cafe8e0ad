package kms

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"sync"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
)

// Challenge errors.
var (
	ErrTooManyChallenges = errors.New("too many pending challenges")
	// ErrAddressChallenges: one source address holds its share of the pool.
	ErrAddressChallenges = errors.New("too many pending challenges for this source address")
	ErrUnknownChallenge  = errors.New("unknown or already used challenge")
	ErrChallengeExpired  = errors.New("challenge expired")
	ErrChallengePeer     = errors.New("challenge was issued to another peer")
)

type challenge struct {
	peerID  string
	addr    string // source address it was issued to (sourceKey)
	nonce   [attest.NonceSize]byte
	expires time.Time
}

type expiry struct {
	id      string
	expires time.Time
}

// challenges holds pending challenges: single use, bound to a peer, with a
// TTL and a cap. Since every challenge gets the same TTL, expiries come in
// issue order, and a FIFO queue finds the expired ones without a timer.
type challenges struct {
	ttl     time.Duration
	max     int
	maxAddr int // pending per source address; negative: no cap
	now     func() time.Time

	mu      sync.Mutex // guards pending, queue and perAddr
	pending map[string]*challenge
	queue   []expiry // issue order; entries of consumed challenges linger until they expire
	perAddr map[string]int
}

func newChallenges(ttl time.Duration, max, maxAddr int, now func() time.Time) *challenges {
	return &challenges{ttl: ttl, max: max, maxAddr: maxAddr, now: now, pending: make(map[string]*challenge), perAddr: make(map[string]int)}
}

// remove drops a pending challenge. Called with mu held.
func (c *challenges) remove(id string) (*challenge, bool) {
	ch, ok := c.pending[id]
	if !ok {
		return nil, false
	}
	delete(c.pending, id)
	if n := c.perAddr[ch.addr] - 1; n > 0 {
		c.perAddr[ch.addr] = n
	} else {
		delete(c.perAddr, ch.addr)
	}
	return ch, true
}

// sweep drops expired challenges. Called with mu held.
func (c *challenges) sweep(now time.Time) {
	i := 0
	for ; i < len(c.queue) && !now.Before(c.queue[i].expires); i++ {
		c.remove(c.queue[i].id)
	}
	if i > 0 {
		c.queue = append(c.queue[:0], c.queue[i:]...)
	}
	// Consumed challenges leave their queue entries behind; drop them when
	// they outnumber the live ones, so the queue stays O(max).
	if len(c.queue) > 2*c.max+1024 {
		live := c.queue[:0]
		for _, e := range c.queue {
			if _, ok := c.pending[e.id]; ok {
				live = append(live, e)
			}
		}
		c.queue = live
	}
}

// issue creates a challenge for peerID, asked for from source address addr.
func (c *challenges) issue(peerID, addr string) (id string, nonce [attest.NonceSize]byte, expires time.Time, err error) {
	var raw [api.ChallengeIDSize + attest.NonceSize]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", nonce, expires, err
	}
	id = base64.RawURLEncoding.EncodeToString(raw[:api.ChallengeIDSize])
	copy(nonce[:], raw[api.ChallengeIDSize:])
	now := c.now()
	expires = now.Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep(now)
	if c.maxAddr >= 0 && c.perAddr[addr] >= c.maxAddr {
		return "", nonce, expires, ErrAddressChallenges
	}
	if len(c.pending) >= c.max {
		return "", nonce, expires, ErrTooManyChallenges
	}
	c.pending[id] = &challenge{peerID: peerID, addr: addr, nonce: nonce, expires: expires}
	c.perAddr[addr]++
	c.queue = append(c.queue, expiry{id, expires})
	return id, nonce, expires, nil
}

// consume removes the challenge and returns its nonce if it is still valid
// and was issued to peerID. Whatever the outcome, the challenge is gone.
func (c *challenges) consume(id, peerID string) ([attest.NonceSize]byte, error) {
	now := c.now()
	c.mu.Lock()
	ch, ok := c.remove(id)
	c.mu.Unlock()
	switch {
	case !ok:
		return [attest.NonceSize]byte{}, ErrUnknownChallenge
	case !now.Before(ch.expires):
		return [attest.NonceSize]byte{}, ErrChallengeExpired
	case subtle.ConstantTimeCompare([]byte(ch.peerID), []byte(peerID)) != 1:
		return [attest.NonceSize]byte{}, ErrChallengePeer
	}
	return ch.nonce, nil
}

func (c *challenges) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep(c.now())
	return len(c.pending)
}
