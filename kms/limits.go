package kms

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Limits bound what one client can take from the KMS, so that no client can
// exhaust what the others need (the pending-challenge pool, the audit log's
// disk, CPU for quote verification). Zero values are documented per field;
// a negative value switches that limit off (benchmarks on one address).
//
// A source address is the connection's IP (an IPv6 address counts by its
// /64, which one host usually holds whole). A peer ID is limited only where
// it is proven, at /get-key after the signature check: the peerId of a
// /challenge is a claim, and a limit on claims would let anyone lock a node
// out by claiming its ID.
type Limits struct {
	// AddressRate is POST requests per second per source address, and
	// AddressBurst the bucket's size. Zero: 20/s, burst 40 (a node needs
	// two requests per key).
	AddressRate  float64
	AddressBurst int
	// PendingPerAddress caps the challenges pending for one source address.
	// Zero: MaxPendingChallenges/20 (500 by default), so one address cannot
	// take the global pool.
	PendingPerAddress int
	// PeerRate is /get-key requests per second per verified peer ID, and
	// PeerBurst the bucket's size. Zero: 1/s, burst 5.
	PeerRate  float64
	PeerBurst int
}

func (l Limits) withDefaults(maxPending int) Limits {
	if l.AddressRate == 0 {
		l.AddressRate = 20
	}
	if l.AddressBurst <= 0 {
		l.AddressBurst = max(1, int(2*l.AddressRate))
	}
	if l.PendingPerAddress == 0 {
		l.PendingPerAddress = max(1, maxPending/20)
	}
	if l.PeerRate == 0 {
		l.PeerRate = 1
	}
	if l.PeerBurst <= 0 {
		l.PeerBurst = 5
	}
	return l
}

// bucket is a token bucket: tokens refill at rate per second up to burst.
type bucket struct {
	tokens float64
	at     time.Time
}

// buckets is a set of token buckets by key. A bucket that has refilled
// completely is the same as a new one, so the sweep drops those and the map
// holds only clients active in the last burst/rate seconds.
type buckets struct {
	rate  float64 // tokens per second; negative: unlimited
	burst float64

	mu    sync.Mutex // guards m and swept
	m     map[string]*bucket
	swept time.Time
}

func newBuckets(rate float64, burst int) *buckets {
	return &buckets{rate: rate, burst: float64(burst), m: make(map[string]*bucket)}
}

// take takes one token for key at now. When none is left it returns how
// long until one is.
func (b *buckets) take(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if b.rate < 0 {
		return true, 0
	}
	full := time.Duration(b.burst / b.rate * float64(time.Second))
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.swept) > full {
		for k, e := range b.m {
			if now.Sub(e.at) >= full {
				delete(b.m, k)
			}
		}
		b.swept = now
	}
	e := b.m[key]
	if e == nil {
		e = &bucket{tokens: b.burst, at: now}
		b.m[key] = e
	}
	if el := now.Sub(e.at); el > 0 {
		e.tokens = math.Min(b.burst, e.tokens+el.Seconds()*b.rate)
		e.at = now
	}
	if e.tokens >= 1 {
		e.tokens--
		return true, 0
	}
	return false, time.Duration((1 - e.tokens) / b.rate * float64(time.Second))
}

// sourceKey names the client a request came from: its IP, or its /64 for
// IPv6. Proxies are not trusted: put the KMS where it sees its clients.
func sourceKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// retryAfterSeconds rounds a delay up to whole seconds for Retry-After.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
