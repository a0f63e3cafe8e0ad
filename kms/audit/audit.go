// Package audit is the KMS's append-only, hash-chained decision log.
//
// Every key release decision (granted or denied) becomes a Record. Records
// are stored in bbolt under their sequence number; each record names the hash
// of the one before it (Prev), and its own hash is
//
//	SHA-256("fleetbox/kms/audit/v1" 0x00 || record JSON)
//
// over the exact stored JSON bytes. The head (last sequence number and hash,
// and the time of the commit) is signed with the KMS's Ed25519 key, so a copy
// of the log can be checked against the head without trusting whoever served
// it.
//
// Appends are group-committed: one writer goroutine (Run) takes every append
// waiting at the time, writes them in a single bbolt transaction (two
// fdatasyncs), and only then releases the callers. Durability then costs one
// commit per batch, not per decision.
package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/fleetbox/fleetbox/internal/strictjson"

	bolt "go.etcd.io/bbolt"
)

// Decisions.
const (
	Granted = "granted"
	Denied  = "denied"
)

// Event is what the KMS records about one decision.
type Event struct {
	Time   time.Time `json:"time"`
	PeerID string    `json:"peerId,omitempty"`
	// InstanceID is set when an instance key was asked for.
	InstanceID string   `json:"instanceId,omitempty"`
	QuoteHash  string   `json:"quoteHash,omitempty"`
	MRTD       string   `json:"mrtd,omitempty"`
	RTMR       []string `json:"rtmr,omitempty"`
	TcbStatus  string   `json:"tcbStatus,omitempty"`
	Mock       bool     `json:"mock,omitempty"`
	// Rtmr3Events are the RTMR3 runtime events of the event log that came
	// with the quote and replayed to it (name -> payloads, hex): what a
	// policy's rtmr3Events judged.
	Rtmr3Events map[string][]string `json:"rtmr3Events,omitempty"`
	Decision    string              `json:"decision"`
	// Reason is the API error code of a denial; empty for a grant.
	Reason  string   `json:"reason,omitempty"`
	Details []string `json:"details,omitempty"`
	Profile string   `json:"profile,omitempty"`
	Sealed  bool     `json:"sealed,omitempty"`
}

// Record is a stored Event with its place in the chain.
type Record struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"` // hex SHA-256 of the previous record; zeros for the first
	Event
}

// Hash is a record hash.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

const recordDomain = "fleetbox/kms/audit/v1\x00"
const headDomain = "fleetbox/kms/audit-head/v1\x00"

// RecordHash hashes a record's stored JSON bytes.
func RecordHash(recordJSON []byte) Hash {
	h := sha256.New()
	h.Write([]byte(recordDomain))
	h.Write(recordJSON)
	var out Hash
	h.Sum(out[:0])
	return out
}

// Head is the signed tip of the chain.
type Head struct {
	Seq       uint64
	Hash      Hash
	Time      time.Time
	Signature []byte
}

// headMessage is what the KMS key signs: domain, seq, hash, unix nanoseconds.
func headMessage(seq uint64, h Hash, t time.Time) []byte {
	m := make([]byte, 0, len(headDomain)+8+32+8)
	m = append(m, headDomain...)
	m = binary.BigEndian.AppendUint64(m, seq)
	m = append(m, h[:]...)
	return binary.BigEndian.AppendUint64(m, uint64(t.UnixNano()))
}

// SignedHead is the wire form of a Head with the key that signed it.
type SignedHead struct {
	Seq          uint64    `json:"seq"`
	Hash         string    `json:"hash"`
	Time         time.Time `json:"time"`
	SignatureB64 string    `json:"signatureB64"`
	PublicKeyB64 string    `json:"publicKeyB64"`
}

// Entry is the wire form of a stored record: the exact stored JSON, and its
// hash for convenience (verifiers recompute it).
type Entry struct {
	Seq    uint64          `json:"seq"`
	Hash   string          `json:"hash"`
	Record json.RawMessage `json:"record"`
}

// Page is what GET /audit?after=N returns: entries after N, the head read in
// the same transaction, and whether entries up to the head remain.
type Page struct {
	Entries []Entry    `json:"entries"`
	Head    SignedHead `json:"head"`
	More    bool       `json:"more"`
}

// Errors.
var (
	// ErrCorrupt: the database file is damaged (bbolt found a bad page).
	ErrCorrupt     = errors.New("audit database is corrupt")
	ErrClosed      = errors.New("audit log is not running")
	ErrKeyMismatch = errors.New("audit log was created with a different signing key")
	ErrChain       = errors.New("audit chain does not verify")
	ErrHead        = errors.New("audit head does not verify")
	// ErrRollback: the log ends below, or forks from, a head the KMS
	// signed and published (a witness, a receipt): records were dropped.
	ErrRollback = errors.New("audit log was rolled back")
)

var (
	bucketRecords = []byte("records")
	bucketMeta    = []byte("meta")
	keyHead       = []byte("head")
	keyPublicKey  = []byte("publicKey")
	// keyCheckpoint is seq (u64be) || hash of the last record that start-up
	// verified; the next start-up verifies from there.
	keyCheckpoint = []byte("checkpoint")
)

// Config configures a Log.
type Config struct {
	// DB is an open bbolt database; the Log creates its buckets in it and
	// does not close it.
	DB *bolt.DB
	// Signer signs the head. Required.
	Signer ed25519.PrivateKey
	// MaxBatch bounds the appends in one commit. Zero: 512.
	MaxBatch int
	// Now stamps heads. Nil: time.Now.
	Now func() time.Time
	// OnCommit, if set, is called after each commit with the batch size and
	// the time the commit took (for metrics).
	OnCommit func(n int, d time.Duration)
	// Witness, if set, is a file on a volume other than the database's. It
	// holds the newest signed head, rewritten (and fsynced) after every
	// commit before any caller is released; Open refuses a log that ends
	// below it or forks from it. Empty: no witness.
	Witness string
	Logger  *slog.Logger
}

// Log is the audit log. Append is safe for concurrent use; Run must be
// running for appends to complete.
type Log struct {
	cfg  Config
	db   *bolt.DB
	log  *slog.Logger
	reqs chan *appendReq
	// stopped is closed when Run returns.
	stopped  chan struct{}
	stopOnce sync.Once

	mu   sync.RWMutex // guards head and failed
	head Head
	// failed is the last commit's error while appends fail (a full disk, a
	// size cap), nil once one succeeds again.
	failed error
}

// probeInterval is how often a failed log retries a commit by itself, so
// that it reports healthy again once space is freed, without a request.
const probeInterval = 5 * time.Second

type appendReq struct {
	ev   Event
	done chan appendRes
}

type appendRes struct {
	seq uint64
	err error
}

// Open prepares the log in cfg.DB: creates its buckets, records the signing
// key on first use (and refuses another key later), and checks that the
// stored head matches the last record. It starts nothing.
func Open(cfg Config) (*Log, error) {
	if cfg.DB == nil || len(cfg.Signer) != ed25519.PrivateKeySize {
		return nil, errors.New("audit: DB and an Ed25519 Signer are required")
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 512
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	l := &Log{cfg: cfg, db: cfg.DB, log: lg, reqs: make(chan *appendReq, cfg.MaxBatch), stopped: make(chan struct{})}
	pub := cfg.Signer.Public().(ed25519.PublicKey)
	err := guard(func() error {
		return l.db.Update(func(tx *bolt.Tx) error {
			recs, err := tx.CreateBucketIfNotExists(bucketRecords)
			if err != nil {
				return err
			}
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			if stored := meta.Get(keyPublicKey); stored == nil {
				if err := meta.Put(keyPublicKey, pub); err != nil {
					return err
				}
			} else if subtle.ConstantTimeCompare(stored, pub) != 1 {
				return ErrKeyMismatch
			}
			var h Head
			if raw := meta.Get(keyHead); raw != nil {
				sh, err := decodeSignedHead(raw)
				if err != nil {
					return fmt.Errorf("reading head: %w", err)
				}
				if h, err = sh.verify(pub); err != nil {
					return err
				}
			}
			// The chain must run from the checkpoint to the signed head, every
			// record naming its predecessor: a crash cannot split a record from
			// its head (one transaction writes both), so a break means damage
			// or tampering, and the log refuses to serve.
			if err := verifyFromCheckpoint(recs, meta, h); err != nil {
				return err
			}
			if meta.Get(keyHead) == nil {
				h = l.sign(0, Hash{})
				if err := meta.Put(keyHead, l.encodeHead(h)); err != nil {
					return err
				}
			}
			l.head = h
			return meta.Put(keyCheckpoint, checkpointBytes(h.Seq, h.Hash))
		})
	})
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	if cfg.Witness != "" {
		if err := l.checkWitness(); err != nil {
			return nil, fmt.Errorf("opening audit log: %w", err)
		}
	}
	return l, nil
}

// seqKey is a record's key: its sequence number, big-endian.
func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func seqFromKey(k []byte) uint64 { return binary.BigEndian.Uint64(k) }

func checkpointBytes(seq uint64, h Hash) []byte {
	return append(binary.BigEndian.AppendUint64(nil, seq), h[:]...)
}

// verifyFromCheckpoint walks the records after the checkpoint (the last
// record an earlier start-up verified) to the signed head. Start-up then
// costs the records written since the last start, not the whole log; `kms
// audit verify` walks everything.
func verifyFromCheckpoint(recs, meta *bolt.Bucket, head Head) error {
	v := &ChainVerifier{}
	if cp := meta.Get(keyCheckpoint); cp != nil {
		if len(cp) != 8+32 {
			return fmt.Errorf("%w: checkpoint is %d bytes", ErrChain, len(cp))
		}
		v.seq = binary.BigEndian.Uint64(cp)
		copy(v.prev[:], cp[8:])
		if v.seq > head.Seq {
			return fmt.Errorf("%w: checkpoint at record %d is past the signed head %d", ErrChain, v.seq, head.Seq)
		}
		if v.seq > 0 {
			rec := recs.Get(seqKey(v.seq))
			if rec == nil || RecordHash(rec) != v.prev {
				return fmt.Errorf("%w: record %d changed since start-up verified it", ErrChain, v.seq)
			}
		}
	}
	c := recs.Cursor()
	for k, rec := c.Seek(seqKey(v.seq + 1)); k != nil; k, rec = c.Next() {
		if err := v.Add([]Entry{{Seq: binary.BigEndian.Uint64(k), Record: rec}}); err != nil {
			return err
		}
	}
	if v.seq != head.Seq || v.prev != head.Hash {
		return fmt.Errorf("%w: records end at %d (%s), the signed head is %d (%s)", ErrChain, v.seq, v.prev, head.Seq, head.Hash)
	}
	return nil
}

func (l *Log) sign(seq uint64, h Hash) Head {
	t := l.cfg.Now().UTC()
	return Head{Seq: seq, Hash: h, Time: t, Signature: ed25519.Sign(l.cfg.Signer, headMessage(seq, h, t))}
}

func (l *Log) encodeHead(h Head) []byte {
	b, _ := json.Marshal(l.signedHead(h))
	return b
}

func (l *Log) signedHead(h Head) SignedHead {
	return SignedHead{
		Seq: h.Seq, Hash: h.Hash.String(), Time: h.Time,
		SignatureB64: base64.StdEncoding.EncodeToString(h.Signature),
		PublicKeyB64: base64.StdEncoding.EncodeToString(l.PublicKey()),
	}
}

func decodeSignedHead(b []byte) (SignedHead, error) {
	var sh SignedHead
	err := strictjson.Unmarshal(b, &sh)
	return sh, err
}

// verify checks the head's signature with pub and returns it decoded.
func (sh SignedHead) verify(pub ed25519.PublicKey) (Head, error) {
	var h Head
	hb, err := hex.DecodeString(sh.Hash)
	if err != nil || len(hb) != 32 {
		return h, fmt.Errorf("%w: hash is not 32 hex bytes", ErrHead)
	}
	copy(h.Hash[:], hb)
	h.Seq, h.Time = sh.Seq, sh.Time
	if h.Signature, err = base64.StdEncoding.DecodeString(sh.SignatureB64); err != nil {
		return h, fmt.Errorf("%w: signature: %v", ErrHead, err)
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, headMessage(h.Seq, h.Hash, h.Time), h.Signature) {
		return h, fmt.Errorf("%w: signature by %s", ErrHead, base64.StdEncoding.EncodeToString(pub))
	}
	return h, nil
}

// VerifyHead checks a served head against a public key (base64 in the head
// when pub is nil — then it proves only consistency, not who signed it).
func VerifyHead(sh SignedHead, pub ed25519.PublicKey) (Head, error) {
	if pub == nil {
		b, err := base64.StdEncoding.DecodeString(sh.PublicKeyB64)
		if err != nil {
			return Head{}, fmt.Errorf("%w: publicKeyB64: %v", ErrHead, err)
		}
		pub = b
	}
	return sh.verify(pub)
}

// PublicKey returns the head-signing key.
func (l *Log) PublicKey() ed25519.PublicKey { return l.cfg.Signer.Public().(ed25519.PublicKey) }

// Head returns the current signed head.
func (l *Log) Head() SignedHead {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.signedHead(l.head)
}

// Append records ev and returns its sequence number once it is on disk.
func (l *Log) Append(ctx context.Context, ev Event) (uint64, error) {
	r := &appendReq{ev: ev, done: make(chan appendRes, 1)}
	select {
	case l.reqs <- r:
	case <-l.stopped:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, fmt.Errorf("appending audit record: %w", ctx.Err())
	}
	// Once queued the writer commits or fails the record. A caller that stops
	// waiting (ctx) gets an error and must not act on the decision; the record
	// may still land, so the log can over-report a grant, never miss one.
	select {
	case res := <-r.done:
		return res.seq, res.err
	case <-ctx.Done():
		return 0, fmt.Errorf("appending audit record: %w", ctx.Err())
	case <-l.stopped:
		select {
		case res := <-r.done:
			return res.seq, res.err
		default:
			return 0, ErrClosed
		}
	}
}

// Err returns why appends fail, or nil while they succeed. A log whose
// appends fail cannot record decisions, so the KMS releases no key: its
// health check reports not ready with this error.
func (l *Log) Err() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.failed
}

func (l *Log) setFailed(err error) {
	l.mu.Lock()
	l.failed = err
	l.mu.Unlock()
}

// probe rewrites the head in a transaction of its own: it succeeds once
// the database can take a commit again.
func (l *Log) probe() {
	l.mu.RLock()
	head := l.head
	l.mu.RUnlock()
	err := guard(func() error {
		return l.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyHead, l.encodeHead(head))
		})
	})
	if err == nil {
		l.log.Info("audit log takes commits again")
	}
	l.setFailed(err)
}

// Run is the single writer: it commits queued appends in batches until ctx
// ends, then fails what is still queued with ErrClosed and returns nil.
func (l *Log) Run(ctx context.Context) error {
	defer l.stopOnce.Do(func() { close(l.stopped) })
	batch := make([]*appendReq, 0, l.cfg.MaxBatch)
	probe := time.NewTicker(probeInterval)
	defer probe.Stop()
	for {
		select {
		case <-probe.C:
			if l.Err() != nil {
				l.probe()
			}
		case <-ctx.Done():
			l.stopOnce.Do(func() { close(l.stopped) })
			for {
				select {
				case r := <-l.reqs:
					r.done <- appendRes{err: ErrClosed}
				default:
					return nil
				}
			}
		case r := <-l.reqs:
			batch = append(batch[:0], r)
		fill:
			for len(batch) < l.cfg.MaxBatch {
				select {
				case r := <-l.reqs:
					batch = append(batch, r)
				default:
					break fill
				}
			}
			l.commit(batch)
		}
	}
}

func (l *Log) commit(batch []*appendReq) {
	start := time.Now()
	l.mu.RLock()
	head := l.head
	l.mu.RUnlock()
	seqs := make([]uint64, len(batch))
	var newHead Head
	err := guard(func() error {
		return l.db.Update(func(tx *bolt.Tx) error {
			recs := tx.Bucket(bucketRecords)
			seq, prev := head.Seq, head.Hash
			for i, r := range batch {
				seq++
				js, err := json.Marshal(Record{Seq: seq, Prev: prev.String(), Event: r.ev})
				if err != nil {
					return err
				}
				if err := recs.Put(seqKey(seq), js); err != nil {
					return err
				}
				prev = RecordHash(js)
				seqs[i] = seq
			}
			newHead = l.sign(seq, prev)
			return tx.Bucket(bucketMeta).Put(keyHead, l.encodeHead(newHead))
		})
	})
	if err == nil && l.cfg.Witness != "" {
		// The witness never lags what a caller was told: any head a client
		// saw is at most the one the witness holds.
		if werr := writeWitness(l.cfg.Witness, l.signedHead(newHead)); werr != nil {
			err = fmt.Errorf("writing the audit witness: %w", werr)
			// The records are committed but not acknowledged; the head
			// moves on so that later commits chain from them.
			l.mu.Lock()
			l.head = newHead
			l.mu.Unlock()
		}
	}
	if err != nil {
		if l.Err() == nil {
			l.log.Error("audit commit failed; no key is released until commits succeed again", "records", len(batch), "err", err)
		}
		l.setFailed(err)
		for _, r := range batch {
			r.done <- appendRes{err: fmt.Errorf("committing audit records: %w", err)}
		}
		return
	}
	l.mu.Lock()
	l.head = newHead
	if l.failed != nil {
		l.log.Info("audit log takes commits again")
	}
	l.failed = nil
	l.mu.Unlock()
	// Count the commit before acknowledging it, so a writer that saw its
	// record acknowledged also sees it in the metrics.
	if l.cfg.OnCommit != nil {
		l.cfg.OnCommit(len(batch), time.Since(start))
	}
	for i, r := range batch {
		r.done <- appendRes{seq: seqs[i]}
	}
}

// MaxPage bounds the entries in one Page.
const MaxPage = 1000

// Entries returns up to limit records after seq after, with the head read in
// the same transaction.
func (l *Log) Entries(after uint64, limit int) (*Page, error) {
	return ReadPage(l.db, after, limit)
}

// ReadPage reads a page from a database holding an audit log (also one
// opened read-only by `fleetbox kms audit verify --state`).
func ReadPage(db *bolt.DB, after uint64, limit int) (*Page, error) {
	if limit <= 0 || limit > MaxPage {
		limit = MaxPage
	}
	p := &Page{Entries: []Entry{}}
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			recs, meta := tx.Bucket(bucketRecords), tx.Bucket(bucketMeta)
			if recs == nil || meta == nil {
				return errors.New("no audit log in this database")
			}
			sh, err := decodeSignedHead(meta.Get(keyHead))
			if err != nil {
				return fmt.Errorf("reading head: %w", err)
			}
			sh.PublicKeyB64 = base64.StdEncoding.EncodeToString(meta.Get(keyPublicKey))
			p.Head = sh
			p.More = after < sh.Seq
			if after == math.MaxUint64 {
				return nil // nothing follows the last sequence number (after+1 would wrap to 0)
			}
			c := recs.Cursor()
			var last uint64 = after
			for k, v := c.Seek(seqKey(after + 1)); k != nil && len(p.Entries) < limit; k, v = c.Next() {
				seq := binary.BigEndian.Uint64(k)
				p.Entries = append(p.Entries, Entry{Seq: seq, Hash: RecordHash(v).String(), Record: bytes.Clone(v)})
				last = seq
			}
			p.More = last < sh.Seq
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("reading audit log: %w", err)
	}
	return p, nil
}

// ChainVerifier checks a log page by page, from the first record.
type ChainVerifier struct {
	seq  uint64
	prev Hash
	// Counts of decisions seen.
	Granted, Denied int

	expect map[uint64][]expectation
	broken []error
}

// expectation is a place the log must hold, named by something the KMS
// signed and handed out (a receipt).
type expectation struct {
	what  string
	check func(Hash, Record) error
}

// Expect registers a receipt: the record at seq must exist and satisfy
// check. Finish fails with ErrRollback if the chain ends before seq or check
// fails: the KMS signed that record, and the log no longer holds it.
func (v *ChainVerifier) Expect(seq uint64, what string, check func(Hash, Record) error) {
	if v.expect == nil {
		v.expect = make(map[uint64][]expectation)
	}
	v.expect[seq] = append(v.expect[seq], expectation{what, check})
}

// ExpectHead registers a signed head (a witness, or a head saved from GET
// /audit): the log must hold its record, with its hash.
func (v *ChainVerifier) ExpectHead(h Head, what string) {
	v.Expect(h.Seq, what, func(got Hash, _ Record) error {
		if got != h.Hash {
			return fmt.Errorf("record %d hashes to %s, the signed head says %s (the log forked)", h.Seq, got, h.Hash)
		}
		return nil
	})
}

// Add checks entries that continue the chain.
func (v *ChainVerifier) Add(entries []Entry) error {
	for _, e := range entries {
		var r Record
		if err := strictjson.Unmarshal(e.Record, &r); err != nil {
			return fmt.Errorf("%w: record %d: %v", ErrChain, e.Seq, err)
		}
		if r.Seq != v.seq+1 || e.Seq != r.Seq {
			return fmt.Errorf("%w: record %d follows %d (a record is missing, duplicated or reordered)", ErrChain, r.Seq, v.seq)
		}
		wantPrev := v.prev.String()
		if r.Prev != wantPrev {
			return fmt.Errorf("%w: record %d names previous hash %s, want %s", ErrChain, r.Seq, r.Prev, wantPrev)
		}
		h := RecordHash(e.Record)
		if e.Hash != "" && e.Hash != h.String() {
			return fmt.Errorf("%w: record %d: served hash %s, computed %s", ErrChain, r.Seq, e.Hash, h)
		}
		switch r.Decision {
		case Granted:
			v.Granted++
		case Denied:
			v.Denied++
		default:
			return fmt.Errorf("%w: record %d: decision %q", ErrChain, r.Seq, r.Decision)
		}
		v.seq, v.prev = r.Seq, h
		for _, x := range v.expect[r.Seq] {
			if err := x.check(h, r); err != nil {
				v.broken = append(v.broken, fmt.Errorf("%w: %s: %v", ErrRollback, x.what, err))
			}
		}
		delete(v.expect, r.Seq)
	}
	return nil
}

// Finish checks that the chain verified so far ends exactly at the signed
// head, and the head's signature with pub (the key served with the head when
// pub is nil).
func (v *ChainVerifier) Finish(sh SignedHead, pub ed25519.PublicKey) (Head, error) {
	h, err := VerifyHead(sh, pub)
	if err != nil {
		return h, err
	}
	if h.Seq != v.seq || h.Hash != v.prev {
		return h, fmt.Errorf("%w: chain ends at record %d (%s), signed head is %d (%s)", ErrChain, v.seq, v.prev, h.Seq, h.Hash)
	}
	errs := v.broken
	for seq, xs := range v.expect {
		if seq == 0 {
			continue // a head of the empty log
		}
		for _, x := range xs {
			errs = append(errs, fmt.Errorf("%w: %s names record %d, but the log ends at %d", ErrRollback, x.what, seq, v.seq))
		}
	}
	return h, errors.Join(errs...)
}

// Seq returns the last verified sequence number.
func (v *ChainVerifier) Seq() uint64 { return v.seq }

// VerifyPages reads a whole log through fetch (a page of entries after a
// sequence number) and checks the chain and the signed head. pub pins the
// KMS key; nil trusts the key served with the head, which then proves only
// that the log is consistent, not who wrote it.
func VerifyPages(fetch func(after uint64) (*Page, error), pub ed25519.PublicKey) (*ChainVerifier, Head, error) {
	v := &ChainVerifier{}
	h, err := v.VerifyPages(fetch, pub)
	return v, h, err
}

// VerifyPages is the function VerifyPages on a verifier that may hold
// expectations (Expect, ExpectHead).
func (v *ChainVerifier) VerifyPages(fetch func(after uint64) (*Page, error), pub ed25519.PublicKey) (Head, error) {
	for {
		p, err := fetch(v.seq)
		if err != nil {
			return Head{}, err
		}
		if err := v.Add(p.Entries); err != nil {
			return Head{}, err
		}
		if !p.More {
			return v.Finish(p.Head, pub)
		}
		if len(p.Entries) == 0 {
			return Head{}, fmt.Errorf("%w: no records after %d, but the head is at %d", ErrChain, v.seq, p.Head.Seq)
		}
	}
}

// guard runs f and turns a panic into an error wrapping ErrCorrupt. bbolt
// panics, rather than failing, when it meets a damaged page (a bad page type
// or an out-of-range page id); a corrupt kms.db must stop the KMS with a
// clear error, not a stack trace.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w (restore kms.db from a backup, and check it with `fleetbox kms audit verify --state`): %v", ErrCorrupt, r)
		}
	}()
	return f()
}
