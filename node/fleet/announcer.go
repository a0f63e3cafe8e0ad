package fleet

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"time"

	"github.com/fleetbox/fleetbox/attest"
)

// AnnouncerConfig configures an Announcer.
type AnnouncerConfig struct {
	Namespace [32]byte
	// Identity is the candidate's namespace identity key; Agreement its
	// X25519 public key for KeyDelivery.
	Identity  ed25519.PrivateKey
	Agreement [32]byte
	// Source makes the quotes.
	Source attest.Source
	// Head returns a current head of the namespace DAG as this node sees it.
	Head func() ([32]byte, error)
	// Publish sends the announce's wire bytes on the namespace topic.
	Publish func(ctx context.Context, wire []byte) error
	// Admitted reports whether the replica is now a member with its group key.
	Admitted func() bool
	// Wake, if set, delivers a signal whenever the namespace state changes,
	// so the announcer notices admission without waiting out its backoff.
	Wake <-chan struct{}
	// MinBackoff and MaxBackoff bound the wait between announces (default
	// 500 ms doubling to 30 s).
	MinBackoff, MaxBackoff time.Duration
	// FirstRetry is the wait after the first announce (default 100 ms, at
	// most MinBackoff). A replica's first announce goes out the moment it
	// sees a peer's subscription, which says nothing of its own stream to
	// that peer: gossipsub drops a message for a peer whose outbound
	// stream is not open yet, so about one first announce in a hundred
	// reached no verifier and the join waited out the 500 ms backoff. One
	// early repeat covers that; an announce answered before it costs
	// nothing, and two admissions of one replica converge to one (the
	// later op has no effect).
	FirstRetry time.Duration
	// Fetch, if set, is called every FetchInterval (default 50 ms) while an
	// announce waits for its answer: it asks peers for ops this node lacks.
	// The ops that admit a replica are gossiped the moment a verifier has
	// checked the announce, when the replica has just joined the topic and
	// its peers may not count it in yet (their view of its subscription
	// lags, and an op that reached a peer before its parents is not
	// forwarded), so gossip alone missed them in about one join of fifty
	// and the replica waited for the next heartbeat (30 s in production).
	Fetch         func()
	FetchInterval time.Duration
	// FetchFor bounds how long after each announce Fetch keeps being
	// called (default 2 s): long enough for any verifier's answer, short
	// enough that a replica nobody admits does not ask its peers every
	// FetchInterval for the whole backoff.
	FetchFor time.Duration
	Logger   *slog.Logger
}

// Announcer publishes TeeAttestationAnnounces until the replica is admitted.
type Announcer struct {
	cfg AnnouncerConfig
	log *slog.Logger
}

// NewAnnouncer returns an announcer. It starts nothing.
func NewAnnouncer(cfg AnnouncerConfig) *Announcer {
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.FetchInterval == 0 {
		cfg.FetchInterval = 25 * time.Millisecond
	}
	if cfg.FetchFor == 0 {
		cfg.FetchFor = 2 * time.Second
	}
	if cfg.FirstRetry == 0 || cfg.FirstRetry > cfg.MinBackoff {
		cfg.FirstRetry = min(100*time.Millisecond, cfg.MinBackoff)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Announcer{cfg: cfg, log: log}
}

// Run announces, with a fresh nonce and quote each time, until Admitted
// reports true (it returns nil) or ctx ends (it returns nil: cancellation is
// not an error). Failures to get a quote or publish are logged and retried.
func (a *Announcer) Run(ctx context.Context) error {
	wait := a.cfg.FirstRetry
	for attempt := 1; ; attempt++ {
		if a.cfg.Admitted() {
			a.log.Info("fleet replica admitted", "namespace", fmt.Sprintf("%x", a.cfg.Namespace[:8]), "announces", attempt-1)
			return nil
		}
		published := false
		if err := a.announceOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn("announce failed; will retry", "attempt", attempt, "err", err)
		} else {
			published = true
			a.log.Info("TeeAttestationAnnounce published", "namespace", fmt.Sprintf("%x", a.cfg.Namespace[:8]), "attempt", attempt, "source", a.cfg.Source.Kind())
		}
		deadline := time.NewTimer(wait)
		var fetch <-chan time.Time
		var fetchTicker *time.Ticker
		fetchUntil := time.Now().Add(a.cfg.FetchFor)
		if published && a.cfg.Fetch != nil {
			fetchTicker = time.NewTicker(a.cfg.FetchInterval)
			fetch = fetchTicker.C
		}
	waiting:
		for {
			select {
			case <-ctx.Done():
				deadline.Stop()
				if fetchTicker != nil {
					fetchTicker.Stop()
				}
				return nil
			case <-fetch:
				if time.Now().After(fetchUntil) {
					fetchTicker.Stop()
					fetch = nil
					continue
				}
				a.cfg.Fetch()
			case <-deadline.C:
				break waiting
			case <-a.cfg.Wake:
				// Admitted, or the namespace changed after a failed
				// attempt (say the DAG synced): go on at once.
				if a.cfg.Admitted() || !published {
					deadline.Stop()
					break waiting
				}
			}
		}
		if fetchTicker != nil {
			fetchTicker.Stop()
		}
		if published {
			if attempt == 1 {
				wait = a.cfg.MinBackoff
			} else {
				wait = min(2*wait, a.cfg.MaxBackoff)
			}
		}
	}
}

func (a *Announcer) announceOnce(ctx context.Context) error {
	head, err := a.cfg.Head()
	if err != nil {
		return fmt.Errorf("reading the namespace head: %w", err)
	}
	ann, err := NewAnnounce(ctx, a.cfg.Source, a.cfg.Namespace, a.cfg.Identity, a.cfg.Agreement, head)
	if err != nil {
		return err
	}
	wire, err := ann.Encode()
	if err != nil {
		return err
	}
	return a.cfg.Publish(ctx, wire)
}
