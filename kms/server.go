// Package kms is fleetbox's key service: it releases a node's storage key
// only to a quote that verifies, binds the request, and satisfies the
// TeeAdmissionPolicy, and records every decision in a signed, hash-chained
// audit log (kms/audit). The wire format is in kms/api, the client in
// kms/client; README.md beside this file describes the API.
package kms

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/audit"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// Defaults.
const (
	DefaultChallengeTTL         = 60 * time.Second
	DefaultMaxPendingChallenges = 10000
	DefaultProfile              = "default"
)

// Files in the state directory.
const (
	StateDBFile      = "kms.db"
	SigningKeyFile   = "kms-signing.key"
	RootSecretFile   = "root.secret"
	stateLockTimeout = 2 * time.Second
)

var profileRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Config configures a Server. Zero values are documented per field.
type Config struct {
	// StateDir holds the audit database and the KMS signing key. Required.
	StateDir string
	// RootSecret is the secret storage keys derive from (LoadFileRootSecret,
	// DstackAgent.RootSecret). Required.
	RootSecret *RootSecret
	// Verifier checks quotes; give it the collateral source (a cache
	// refreshed from PCS/PCCS, or a file). Required.
	Verifier *attest.Verifier
	// Policy is the TeeAdmissionPolicy a quote must satisfy. Nil: /get-key
	// answers policy_not_ready until ReloadPolicy loads one.
	Policy *attest.Policy
	// PolicyFile is what ReloadPolicy reads. Empty: ReloadPolicy fails.
	PolicyFile string
	// Profile names the image profile keys are derived for (part of the HKDF
	// info). Empty: "default".
	Profile string
	// Source produces the KMS's own quotes for /attest. Nil: mock quotes,
	// marked mock in the response.
	Source attest.Source
	// ChallengeTTL: zero means 60 s. MaxPendingChallenges: zero means 10,000.
	ChallengeTTL         time.Duration
	MaxPendingChallenges int
	// Limits bound what one client can take (rates, pending challenges).
	Limits Limits
	// AuditMaxBatch bounds records per audit commit. Zero: 512.
	AuditMaxBatch int
	// AuditWitness, if set, is a file on another volume that holds the
	// newest signed audit head; the KMS refuses to start when its log ends
	// below it (a restored older kms.db, a damaged meta page). Empty: none.
	AuditWitness string
	// StateMaxSize caps kms.db in bytes (bbolt's MaxSize): past it every
	// append fails, as on a full disk, and /health says so. Zero: no cap.
	StateMaxSize int
	// Now is the clock for challenges, quote verification and audit times.
	// Nil: time.Now.
	Now func() time.Time
	// Registry receives the metrics. Nil: a fresh registry.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// ExpectedEvents, if set, are the events a boot of the admitted image
	// extends (measurements.json: the profile's predicted RTMR1-3 events).
	// When the policy refuses a quote that came with an event log, the
	// refusal and its audit record name the events that differ.
	ExpectedEvents []eventlog.Event
}

// Server is the KMS. Create it with NewServer, serve it with Run (or mount
// Handler elsewhere and call RunWorkers), and Close it when done.
type Server struct {
	cfg     Config
	log     *slog.Logger
	db      *bolt.DB
	audit   *audit.Log
	ch      *challenges
	signer  ed25519.PrivateKey
	source  attest.Source
	reg     *prometheus.Registry
	m       *metrics
	handler http.Handler
	limits  Limits
	byAddr  *buckets // POST requests per source address
	byPeer  *buckets // /get-key per verified peer ID

	policy   atomic.Pointer[attest.Policy]
	reloadMu sync.Mutex // serializes ReloadPolicy
}

// NewServer checks cfg, loads (or creates) the signing key and opens the
// audit state. It starts nothing.
func NewServer(cfg Config) (*Server, error) {
	switch {
	case cfg.StateDir == "":
		return nil, errors.New("kms: StateDir is required")
	case cfg.RootSecret == nil:
		return nil, errors.New("kms: RootSecret is required")
	case cfg.Verifier == nil:
		return nil, errors.New("kms: Verifier is required")
	}
	if cfg.Profile == "" {
		cfg.Profile = DefaultProfile
	}
	if !profileRe.MatchString(cfg.Profile) {
		return nil, fmt.Errorf("kms: profile %q: want 1-64 of a-z 0-9 . _ - starting with a letter or digit", cfg.Profile)
	}
	if cfg.Policy != nil {
		if err := cfg.Policy.Validate(); err != nil {
			return nil, fmt.Errorf("kms: policy: %w", err)
		}
	}
	if cfg.ChallengeTTL <= 0 {
		cfg.ChallengeTTL = DefaultChallengeTTL
	}
	if cfg.MaxPendingChallenges <= 0 {
		cfg.MaxPendingChallenges = DefaultMaxPendingChallenges
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("kms: creating state dir: %w", err)
	}
	signer, err := LoadSigningKey(filepath.Join(cfg.StateDir, SigningKeyFile))
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	// The freelist is not synced (rebuilt by a scan after a crash): each
	// commit writes less, and the two fsyncs per commit stay the same.
	db, err := bolt.Open(filepath.Join(cfg.StateDir, StateDBFile), 0o600, &bolt.Options{
		Timeout: stateLockTimeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType,
		MaxSize: cfg.StateMaxSize,
	})
	if err != nil {
		return nil, fmt.Errorf("kms: opening state %s: %w", filepath.Join(cfg.StateDir, StateDBFile), err)
	}
	s := &Server{cfg: cfg, log: lg, db: db, signer: signer, reg: cfg.Registry, source: cfg.Source}
	s.limits = cfg.Limits.withDefaults(cfg.MaxPendingChallenges)
	s.byAddr = newBuckets(s.limits.AddressRate, s.limits.AddressBurst)
	s.byPeer = newBuckets(s.limits.PeerRate, s.limits.PeerBurst)
	s.ch = newChallenges(cfg.ChallengeTTL, cfg.MaxPendingChallenges, s.limits.PendingPerAddress, cfg.Now)
	s.m = newMetrics(cfg.Registry, func() float64 { return float64(s.ch.count()) })
	s.audit, err = audit.Open(audit.Config{
		DB: db, Signer: signer, MaxBatch: cfg.AuditMaxBatch, Now: cfg.Now, Logger: lg, Witness: cfg.AuditWitness,
		OnCommit: func(n int, d time.Duration) {
			s.m.auditBatch.Observe(float64(n))
			s.m.auditCommit.Observe(d.Seconds())
		},
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("kms: %w", err)
	}
	if s.source == nil {
		s.source = &attest.MockSource{Quote: attest.MockQuote{
			MRTD: attest.MockMeasurement("fleetbox-kms mrtd"),
			RTMR: [4]attest.RTMR{
				attest.MockMeasurement("fleetbox-kms rtmr0"), attest.MockMeasurement("fleetbox-kms rtmr1"),
				attest.MockMeasurement("fleetbox-kms rtmr2"), attest.MockMeasurement("fleetbox-kms rtmr3"),
			},
		}}
	}
	if cfg.Policy != nil {
		s.policy.Store(cfg.Policy)
		s.m.policyReady.Set(1)
	}
	s.handler = s.routes()
	return s, nil
}

// Handler serves the KMS API. Appends to the audit log complete only while
// Run or RunWorkers is running.
func (s *Server) Handler() http.Handler { return s.handler }

// PublicKey is the KMS's Ed25519 signing key: it signs the audit head and is
// bound into /attest quotes.
func (s *Server) PublicKey() ed25519.PublicKey { return s.signer.Public().(ed25519.PublicKey) }

// Profile returns the key derivation profile.
func (s *Server) Profile() string { return s.cfg.Profile }

// Policy returns the policy in force (nil when none is loaded).
func (s *Server) Policy() *attest.Policy { return s.policy.Load() }

// SetPolicy replaces the policy after validating it.
func (s *Server) SetPolicy(p *attest.Policy) error {
	if p == nil {
		return errors.New("kms: nil policy")
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("kms: policy: %w", err)
	}
	s.policy.Store(p)
	s.m.policyReady.Set(1)
	return nil
}

// ReloadPolicy re-reads Config.PolicyFile. On any error the policy in force
// stays, and the error says why (the command logs it on SIGHUP).
func (s *Server) ReloadPolicy() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.cfg.PolicyFile == "" {
		s.m.policyReloads.WithLabelValues("error").Inc()
		return errors.New("kms: no policy file configured to reload")
	}
	p, err := attest.LoadPolicyFile(s.cfg.PolicyFile)
	if err != nil {
		s.m.policyReloads.WithLabelValues("error").Inc()
		s.log.Error("policy reload failed; keeping the policy in force", "file", s.cfg.PolicyFile, "err", err)
		return fmt.Errorf("kms: reloading policy: %w", err)
	}
	s.policy.Store(p)
	s.m.policyReady.Set(1)
	s.m.policyReloads.WithLabelValues("ok").Inc()
	s.log.Info("policy reloaded", "file", s.cfg.PolicyFile)
	return nil
}

// RunWorkers runs what the handler needs besides HTTP (the audit writer)
// until ctx ends; for callers that serve Handler themselves.
func (s *Server) RunWorkers(ctx context.Context) error {
	return s.audit.Run(ctx)
}

// Run serves the API on ln until ctx ends, then shuts the HTTP server down
// (letting in-flight requests finish their audit records) and stops the
// audit writer. It returns nil on cancellation.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	auditCtx, stopAudit := context.WithCancel(context.Background())
	auditDone := make(chan error, 1)
	go func() { auditDone <- s.audit.Run(auditCtx) }()

	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	s.log.Info("kms serving", "addr", ln.Addr().String(), "profile", s.cfg.Profile, "policyReady", s.policy.Load() != nil)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("kms: serving: %w", err)
	}
	shCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if serr := srv.Shutdown(shCtx); serr != nil && err == nil {
		err = fmt.Errorf("kms: shutting down: %w", serr)
	}
	cancel()
	if err == nil {
		if e := <-serveErr; e != nil && !errors.Is(e, http.ErrServerClosed) {
			err = fmt.Errorf("kms: serving: %w", e)
		}
	}
	stopAudit()
	<-auditDone
	return err
}

// Close releases the state database.
func (s *Server) Close() error { return s.db.Close() }

// AuditPage returns audit entries after seq after (for in-process callers).
func (s *Server) AuditPage(after uint64, limit int) (*audit.Page, error) {
	return s.audit.Entries(after, limit)
}

// ErrCollateralUnavailable marks a failure to get collateral at all (an
// empty cache and an unreachable PCS/PCCS): the KMS's problem, not the
// node's, so the answer is collateral_unavailable (503) and clients retry.
var ErrCollateralUnavailable = errors.New("collateral unavailable")

// CollateralSource wraps a collateral source so that its failures carry
// ErrCollateralUnavailable. Give the wrapped source to the Verifier.
func CollateralSource(src attest.CollateralSource) attest.CollateralSource {
	if src == nil {
		return nil
	}
	return markedCollateral{src}
}

type markedCollateral struct{ attest.CollateralSource }

func (m markedCollateral) Collateral(ctx context.Context, fmspc attest.FMSPC, ca string) (*attest.Collateral, error) {
	c, err := m.CollateralSource.Collateral(ctx, fmspc, ca)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCollateralUnavailable, err)
	}
	return c, nil
}
