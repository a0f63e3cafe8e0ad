// Package node is the fleetbox daemon: it opens the sealed store, runs
// namespace governance, carries it over libp2p (node/p2p), and serves the
// admin API (HTTP+JSON on loopback, bearer token) and Prometheus metrics.
//
//	n, err := node.New(cfg) // checks the config; starts nothing
//	err = n.Run(ctx)        // blocks; nil on cancellation (SIGTERM in main)
package node

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
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/fleetbox/fleetbox/node/contexts"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/store"
)

// Node is the daemon. Construct with New, then Run.
type Node struct {
	cfg   Config
	log   *slog.Logger
	reg   *prometheus.Registry
	token string
	id    ed25519.PrivateKey

	metrics *nodeMetrics
	ready   chan struct{}
	started time.Time

	// Set by Run before ready closes; read-only afterwards.
	st        *store.Store
	eng       *governance.Engine
	ctxs      *contexts.Engine
	net       *p2p.Network
	keySource storeKeySource
	adminAddr string
	fleet     *fleetState
	bg        *errgroup.Group // goroutines started after Run began
	bgCtx     context.Context

	mu sync.Mutex // serialises local op authoring and publishing
}

type nodeMetrics struct {
	adminRequests *prometheus.CounterVec
}

// New checks the configuration and reads the identity and admin token; it
// starts nothing and opens no store.
func New(cfg Config) (*Node, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	id, err := LoadIdentity(cfg.Home)
	if err != nil {
		return nil, err
	}
	if _, err := ensureAdminToken(cfg.Home); err != nil {
		return nil, err
	}
	tok, err := ReadAdminToken(filepath.Join(cfg.Home, AdminTokenFile))
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &nodeMetrics{adminRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetbox_admin_errors_total",
		Help: "Admin API requests that failed, by error code.",
	}, []string{"code"})}
	reg.MustRegister(m.adminRequests)
	return &Node{cfg: cfg, log: cfg.Logger, reg: reg, token: tok, id: id, metrics: m, ready: make(chan struct{})}, nil
}

// Ready is closed once Run has opened the store and started the network and
// the admin API.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// AdminURL is the admin API's base URL (valid after Ready).
func (n *Node) AdminURL() string { return "http://" + n.adminAddr }

// Network returns the p2p layer (valid after Ready).
func (n *Node) Network() *p2p.Network { return n.net }

// Engine returns the governance engine (valid after Ready).
func (n *Node) Engine() *governance.Engine { return n.eng }

// Token returns the admin bearer token.
func (n *Node) Token() string { return n.token }

// Run opens the store, starts governance, the network and the admin API, and
// blocks until ctx ends. It returns nil on cancellation, after closing
// everything it opened.
func (n *Node) Run(ctx context.Context) error {
	n.started = time.Now()
	key, src, err := loadStoreKey(&n.cfg, n.log)
	if err != nil {
		return err
	}
	n.keySource = src
	st, err := store.Open(filepath.Join(n.cfg.Home, StoreFile), key, store.Options{NoSync: n.cfg.NoSync, Logger: n.log})
	key.Wipe()
	if err != nil {
		if errors.Is(err, store.ErrWrongKey) {
			return fmt.Errorf("opening store: the store key (%s) does not open %s; nothing was changed: %w",
				src, filepath.Join(n.cfg.Home, StoreFile), err)
		}
		return fmt.Errorf("opening store: %w", err)
	}
	n.st = st
	defer st.Close()

	eng, err := n.openEngine(st)
	if err != nil {
		return err
	}
	n.eng = eng
	if n.ctxs, err = n.openContexts(st, eng); err != nil {
		return err
	}
	n.fleet = newFleet(n.fleetDeps())
	if err := n.fleet.reconcile(ctx); err != nil {
		return err
	}

	pn, err := p2p.New(p2p.Config{
		Identity:          n.id,
		ListenAddrs:       n.cfg.ListenAddrs,
		Bootstrap:         n.cfg.Bootstrap,
		Engine:            &engineAdapter{eng: eng},
		HeartbeatInterval: time.Duration(n.cfg.HeartbeatInterval),
		Logger:            n.log.With("component", "p2p"),
		Registerer:        n.reg,
		OnAnnounce:        n.fleet.onAnnounce,
		OnApplied: func(ns p2p.NamespaceID, _ int) {
			n.fleet.onApplied(ns)
			n.ctxs.Notify(ns)
		},
		StreamHandlers: n.streamHandlers(),
	})
	if err != nil {
		return err
	}
	n.net = pn

	ln, err := listenAdmin(n.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	n.adminAddr = ln.Addr().String()
	addrFile := filepath.Join(n.cfg.Home, AdminAddrFile)
	if err := os.WriteFile(addrFile, []byte(n.adminAddr+"\n"), 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("admin API: recording its address: %w", err)
	}
	defer os.Remove(addrFile)
	srv := &http.Server{
		Handler:           n.adminHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      120 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}

	g, gctx := errgroup.WithContext(ctx)
	n.bg, n.bgCtx = g, gctx
	g.Go(func() error { return pn.Run(gctx) })
	g.Go(func() error { return n.ctxs.Run(gctx) })
	g.Go(func() error { n.fleet.runPurges(gctx); return nil })
	g.Go(func() error { n.redeliverLoop(gctx); return nil })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	g.Go(func() error {
		select {
		case <-pn.Ready():
		case <-gctx.Done():
			return nil
		}
		n.log.Info("node running", "peer", pn.ID(), "admin", n.AdminURL(), "storeKey", string(src), "addrs", pn.Addrs())
		n.fleet.resume(gctx)
		close(n.ready)
		return nil
	})
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		n.log.Info("node shutting down")
	}
	return err
}

// goRun runs fn on the node's run context (valid after Run started).
func (n *Node) goRun(fn func(ctx context.Context)) {
	n.bg.Go(func() error { fn(n.bgCtx); return nil })
}

// listenAdmin listens on the admin address; check() made sure it is loopback.
func listenAdmin(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Status reports the node's identity and counts.
func (n *Node) Status() *Status {
	s := &Status{
		PeerID:         n.net.ID().String(),
		Addrs:          n.net.Addrs(),
		Version:        n.cfg.Version,
		Uptime:         time.Since(n.started).Round(time.Second).String(),
		Peers:          len(n.net.Peers()),
		StoreKeySource: string(n.keySource),
	}
	if nss, err := n.eng.Namespaces(); err == nil {
		s.Namespaces = len(nss)
	}
	if s.Addrs == nil {
		s.Addrs = []string{}
	}
	return s
}
