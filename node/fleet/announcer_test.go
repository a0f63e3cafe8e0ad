package fleet

import (
	"context"
	"crypto/ed25519"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
)

func TestAnnouncerReannouncesUntilAdmitted(t *testing.T) {
	_, id, _ := ed25519.GenerateKey(nil)
	var (
		mu    sync.Mutex
		wires [][]byte
	)
	var admitted atomic.Bool
	wake := make(chan struct{}, 1)
	failFirst := true
	a := NewAnnouncer(AnnouncerConfig{
		Namespace: testNS, Identity: id, Agreement: [32]byte{1},
		Source: &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD}},
		Head:   func() ([32]byte, error) { return headNow, nil },
		Publish: func(_ context.Context, w []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if failFirst {
				failFirst = false
				return errors.New("no peers yet")
			}
			wires = append(wires, w)
			if len(wires) == 3 {
				admitted.Store(true)
				wake <- struct{}{}
			}
			return nil
		},
		Admitted:   admitted.Load,
		Wake:       wake,
		MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if !admitted.Load() || ctx.Err() != nil {
		t.Fatal("announcer returned before admission")
	}
	seen := map[[32]byte]bool{}
	for _, w := range wires {
		ann, err := DecodeAnnounce(w)
		if err != nil || !ann.VerifySignature() {
			t.Fatalf("published announce: %v", err)
		}
		if seen[ann.Nonce()] {
			t.Fatal("two announces share a nonce")
		}
		seen[ann.Nonce()] = true
		q, _ := attest.ParseQuote(ann.Quote)
		if attest.CheckBinding(q.ReportData, ann.Nonce(), ann.Member[:]) != nil {
			t.Fatal("announce quote does not bind its nonce")
		}
	}
}

func TestAnnouncerStopsOnCancel(t *testing.T) {
	_, id, _ := ed25519.GenerateKey(nil)
	ctx, cancel := context.WithCancel(context.Background())
	a := NewAnnouncer(AnnouncerConfig{
		Namespace: testNS, Identity: id, Source: &attest.MockSource{},
		Head:     func() ([32]byte, error) { return headNow, nil },
		Publish:  func(context.Context, []byte) error { cancel(); return nil },
		Admitted: func() bool { return false },
	})
	if err := a.Run(ctx); err != nil {
		t.Fatalf("cancellation is not an error: %v", err)
	}
}

func TestHeadTracker(t *testing.T) {
	tr := NewHeadTracker()
	t0 := time.Unix(1000, 0)
	a, b, c := [32]byte{1}, [32]byte{2}, [32]byte{3}
	Observe(tr, testNS, [][32]byte{a}, t0)
	Observe(tr, testNS, [][32]byte{b, c}, t0.Add(time.Minute))
	cases := map[string]struct {
		head  [32]byte
		age   time.Duration
		known bool
	}{
		"current":    {b, 0, true},
		"superseded": {a, 2 * time.Minute, true},
		"never seen": {[32]byte{9}, 0, false},
	}
	for name, tc := range cases {
		age, known := tr.Age(testNS, tc.head, t0.Add(3*time.Minute))
		if age != tc.age || known != tc.known {
			t.Errorf("%s: age %v known %v, want %v %v", name, age, known, tc.age, tc.known)
		}
	}
	if _, known := tr.Age([32]byte{0x77}, a, t0); known {
		t.Error("head known in another namespace")
	}
}

// When the ops that admit the replica do not reach it by gossip, the
// announcer fetches them while it waits for an answer, rather than waiting
// out its backoff (here an hour) or the next heartbeat (30 s in production).
func TestAnnouncerFetchesWhileWaiting(t *testing.T) {
	_, id, _ := ed25519.GenerateKey(nil)
	var admitted atomic.Bool
	var published, fetched atomic.Int32
	wake := make(chan struct{}, 1)
	a := NewAnnouncer(AnnouncerConfig{
		Namespace: testNS, Identity: id, Agreement: [32]byte{1},
		Source:   &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD}},
		Head:     func() ([32]byte, error) { return headNow, nil },
		Publish:  func(context.Context, []byte) error { published.Add(1); return nil },
		Admitted: admitted.Load,
		Wake:     wake,
		// The admission ops reach this node only when it asks for them.
		Fetch: func() {
			if fetched.Add(1) == 2 {
				admitted.Store(true)
				wake <- struct{}{}
			}
		},
		FetchInterval: time.Millisecond,
		MinBackoff:    time.Hour, MaxBackoff: time.Hour,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // a guard against hangs
	defer cancel()
	if err := a.Run(ctx); err != nil || ctx.Err() != nil {
		t.Fatalf("Run: %v, ctx %v", err, ctx.Err())
	}
	if !admitted.Load() || published.Load() != 1 || fetched.Load() < 2 {
		t.Fatalf("admitted %v after %d announces and %d fetches", admitted.Load(), published.Load(), fetched.Load())
	}
}

// A first announce that reaches no verifier is repeated after FirstRetry,
// not after the (production) 500 ms backoff; later ones keep backing off.
// While a published announce waits, Fetch runs only for FetchFor.
func TestAnnouncerRepeatsTheFirstAnnounceSoon(t *testing.T) {
	_, id, _ := ed25519.GenerateKey(nil)
	var published, fetched atomic.Int32
	var admitted atomic.Bool
	wake := make(chan struct{}, 1)
	a := NewAnnouncer(AnnouncerConfig{
		Namespace: testNS, Identity: id, Agreement: [32]byte{1},
		Source: &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD}},
		Head:   func() ([32]byte, error) { return headNow, nil },
		Publish: func(context.Context, []byte) error {
			if published.Add(1) == 2 { // the first one was lost
				admitted.Store(true)
				wake <- struct{}{}
			}
			return nil
		},
		Admitted:   admitted.Load,
		Wake:       wake,
		MinBackoff: time.Hour, MaxBackoff: time.Hour,
		FirstRetry: 5 * time.Millisecond,
		Fetch:      func() { fetched.Add(1) }, FetchInterval: time.Millisecond, FetchFor: time.Hour,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil || !admitted.Load() || published.Load() != 2 {
		t.Fatalf("the lost first announce was not repeated soon: %v, %d published", err, published.Load())
	}

	// Nobody answers: after the first repeat the wait is MinBackoff, and
	// fetching stops after FetchFor.
	published.Store(0)
	fetched.Store(0)
	admitted.Store(false)
	b := NewAnnouncer(AnnouncerConfig{
		Namespace: testNS, Identity: id, Agreement: [32]byte{1},
		Source:     &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD}},
		Head:       func() ([32]byte, error) { return headNow, nil },
		Publish:    func(context.Context, []byte) error { published.Add(1); return nil },
		Admitted:   admitted.Load,
		MinBackoff: time.Hour, MaxBackoff: time.Hour, FirstRetry: time.Millisecond,
		Fetch: func() { fetched.Add(1) }, FetchInterval: time.Millisecond, FetchFor: 20 * time.Millisecond,
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	b.Run(ctx2)
	if published.Load() != 2 {
		t.Fatalf("%d announces in 300 ms with a one-hour backoff after the first repeat, want 2", published.Load())
	}
	if n := fetched.Load(); n == 0 || n > 60 {
		t.Fatalf("fetched %d times; want some, and none after FetchFor of each announce", n)
	}
}
