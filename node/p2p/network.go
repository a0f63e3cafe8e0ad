// Package p2p carries namespace governance between nodes: a go-libp2p host
// (TCP and QUIC) with gossipsub, one topic "ns/<hex namespace id>" per
// namespace, topic validators that drop what does not decode, verify or fit
// the size limits before it spreads, a heads heartbeat, and a stream protocol
// (SyncProtocol) that fetches missing ops, because gossip loses messages.
//
// Syncs run when a peer connects, when a heartbeat names heads this node does
// not have, when an op arrives whose parents are missing, and when the node
// joins a namespace; a node that joins late catches up from any peer.
package p2p

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultHeartbeatInterval is how often heads are gossiped.
const DefaultHeartbeatInterval = 30 * time.Second

// ErrNotRunning is returned by methods that need the host before Run has
// started it or after it returned.
var ErrNotRunning = errors.New("p2p: network not running")

// Config configures a Network. Zero values take the defaults named.
type Config struct {
	// Identity is the node's Ed25519 key, also its libp2p identity. Required.
	Identity ed25519.PrivateKey
	// ListenAddrs are multiaddrs; nil means loopback TCP and QUIC on
	// ephemeral ports.
	ListenAddrs []string
	// Bootstrap are peers ("/ip4/.../tcp/.../p2p/<id>") dialled at start and
	// redialled while disconnected.
	Bootstrap []string
	// Engine is the governance behind the network. Required.
	Engine Engine
	// HeartbeatInterval defaults to DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// SyncTimeout bounds one sync exchange; default 60 s.
	SyncTimeout time.Duration
	// OnAnnounce, if set, judges a TeeAttestationAnnounce envelope; nil
	// ignores announces (they do not spread).
	OnAnnounce func(ctx context.Context, ns NamespaceID, from peer.ID, announce []byte) pubsub.ValidationResult
	// OnApplied, if set, is called after ops from the network were applied.
	OnApplied func(ns NamespaceID, applied int)
	Logger    *slog.Logger
	// Registerer receives the network's metrics; nil registers nothing.
	Registerer prometheus.Registerer

	// StreamHandlers are more stream protocols to serve (streams.go).
	StreamHandlers map[protocol.ID]network.StreamHandler
}

// Network is a running libp2p host with gossipsub and the sync protocol.
type Network struct {
	cfg     Config
	id      peer.ID
	log     *slog.Logger
	metrics *metrics
	ready   chan struct{}
	gater   *gater
	sem     chan struct{} // bounds concurrent outgoing syncs
	serving chan struct{} // bounds concurrent answered syncs

	mu      sync.Mutex // guards the fields below
	h       host.Host
	ps      *pubsub.PubSub
	runCtx  context.Context
	wg      *sync.WaitGroup
	topics  map[NamespaceID]*nsTopic
	syncing map[syncKey]*syncState
	// lastSync is when a sync of (ns, peer) last finished; heartbeats do
	// not trigger another within a quarter interval, so a peer spamming
	// heartbeats with heads it never serves cannot keep us syncing.
	lastSync map[syncKey]time.Time
}

type nsTopic struct {
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
	cancel context.CancelFunc
}

type syncKey struct {
	ns   NamespaceID
	peer peer.ID
}

type syncState struct{ again bool }

// New checks the configuration; it starts nothing.
func New(cfg Config) (*Network, error) {
	if len(cfg.Identity) != ed25519.PrivateKeySize {
		return nil, errors.New("p2p: config needs an Ed25519 identity")
	}
	if cfg.Engine == nil {
		return nil, errors.New("p2p: config needs an engine")
	}
	if cfg.ListenAddrs == nil {
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	}
	for _, a := range append(slices.Clone(cfg.ListenAddrs), cfg.Bootstrap...) {
		if _, err := multiaddr.NewMultiaddr(a); err != nil {
			return nil, fmt.Errorf("p2p: address %q: %w", a, err)
		}
	}
	for _, b := range cfg.Bootstrap {
		if _, err := peer.AddrInfoFromString(b); err != nil {
			return nil, fmt.Errorf("p2p: bootstrap peer %q needs a /p2p/<id> part: %w", b, err)
		}
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	id, err := PeerIDFromKey(cfg.Identity.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("p2p: identity: %w", err)
	}
	m := newMetrics()
	if cfg.Registerer != nil {
		if err := m.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("p2p: registering metrics: %w", err)
		}
	}
	return &Network{
		cfg:      cfg,
		id:       id,
		log:      cfg.Logger,
		metrics:  m,
		ready:    make(chan struct{}),
		gater:    newGater(),
		sem:      make(chan struct{}, 4),
		serving:  make(chan struct{}, maxServing),
		topics:   map[NamespaceID]*nsTopic{},
		syncing:  map[syncKey]*syncState{},
		lastSync: map[syncKey]time.Time{},
	}, nil
}

// PeerIDFromKey returns the libp2p peer id of an Ed25519 public key.
func PeerIDFromKey(pub ed25519.PublicKey) (peer.ID, error) {
	pk, err := crypto.UnmarshalEd25519PublicKey(pub)
	if err != nil {
		return "", err
	}
	return peer.IDFromPublicKey(pk)
}

// Ready is closed once Run has started the host and joined the namespaces.
func (n *Network) Ready() <-chan struct{} { return n.ready }

func (n *Network) host() host.Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.h
}

// ID returns the node's peer id.
func (n *Network) ID() peer.ID { return n.id }

// Addrs returns the listening addresses with the /p2p/<id> suffix.
func (n *Network) Addrs() []string {
	h := n.host()
	if h == nil {
		return nil
	}
	var out []string
	for _, a := range h.Addrs() {
		out = append(out, a.String()+"/p2p/"+h.ID().String())
	}
	return out
}

// Run starts the host, joins every namespace the engine lists, and blocks
// until ctx ends; it returns nil on cancellation.
func (n *Network) Run(ctx context.Context) error {
	sk, err := crypto.UnmarshalEd25519PrivateKey(n.cfg.Identity)
	if err != nil {
		return fmt.Errorf("p2p: identity: %w", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(sk),
		libp2p.ListenAddrStrings(n.cfg.ListenAddrs...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ConnectionGater(n.gater),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.UserAgent("fleetbox"),
	)
	if err != nil {
		return fmt.Errorf("p2p: starting libp2p host: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		n.mu.Lock()
		for ns, t := range n.topics {
			t.cancel()
			t.sub.Cancel()
			_ = t.topic.Close()
			delete(n.topics, ns)
		}
		n.h, n.ps, n.runCtx, n.wg = nil, nil, nil, nil
		n.mu.Unlock()
		_ = h.Close()
	}()
	ps, err := pubsub.NewGossipSub(runCtx, h,
		pubsub.WithMaxMessageSize(MaxEnvelopeSize+4096),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		// The default message id (author, seqno) is kept on purpose: a
		// content-addressed id would drop a heartbeat whose heads equal an
		// earlier one from another peer, and a node that missed an op would
		// then never hear of it again. Re-gossiped known ops are ignored by
		// the validator instead.
		pubsub.WithPeerExchange(false),
		pubsub.WithPeerScore(peerScoreParams(), peerScoreThresholds()),
		pubsub.WithPeerScoreInspect(pubsub.PeerScoreInspectFn(n.inspectScores), scoreInspectPeriod),
	)
	if err != nil {
		return fmt.Errorf("p2p: starting gossipsub: %w", err)
	}
	h.SetStreamHandler(SyncProtocol, n.serveSync)
	for proto, handler := range n.cfg.StreamHandlers {
		h.SetStreamHandler(proto, handler)
	}
	n.mu.Lock()
	n.h, n.ps, n.runCtx, n.wg = h, ps, runCtx, &wg
	n.mu.Unlock()

	h.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			n.metrics.peers.Set(float64(len(h.Network().Peers())))
			n.syncAllWith(c.RemotePeer())
		},
		DisconnectedF: func(_ network.Network, _ network.Conn) {
			n.metrics.peers.Set(float64(len(h.Network().Peers())))
		},
	})

	nss, err := n.cfg.Engine.Namespaces()
	if err != nil {
		return fmt.Errorf("p2p: listing namespaces: %w", err)
	}
	for _, ns := range nss {
		if err := n.Join(ns); err != nil {
			return err
		}
	}
	n.log.Info("p2p listening", "peer", h.ID(), "addrs", n.Addrs())
	close(n.ready)

	n.goRun(func(ctx context.Context) { n.bootstrapLoop(ctx) })
	n.goRun(func(ctx context.Context) { n.heartbeatLoop(ctx) })
	<-runCtx.Done()
	return nil
}

// goRun runs fn in a goroutine that Run waits for; it does nothing once Run
// is ending.
func (n *Network) goRun(fn func(ctx context.Context)) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.runCtx == nil || n.runCtx.Err() != nil {
		return false
	}
	ctx, wg := n.runCtx, n.wg
	wg.Add(1)
	go func() {
		defer wg.Done()
		fn(ctx)
	}()
	return true
}

// Join subscribes to a namespace's topic, registers its validator and syncs
// with every connected peer. Joining twice is a no-op.
func (n *Network) Join(ns NamespaceID) error {
	n.mu.Lock()
	if n.ps == nil {
		n.mu.Unlock()
		return ErrNotRunning
	}
	if _, ok := n.topics[ns]; ok {
		n.mu.Unlock()
		return nil
	}
	ps, runCtx, wg := n.ps, n.runCtx, n.wg
	name := Topic(ns)
	if err := ps.RegisterTopicValidator(name, n.validator(ns), pubsub.WithValidatorTimeout(30*time.Second)); err != nil {
		n.mu.Unlock()
		return fmt.Errorf("p2p: registering validator for %s: %w", name, err)
	}
	topic, err := ps.Join(name)
	if err != nil {
		_ = ps.UnregisterTopicValidator(name)
		n.mu.Unlock()
		return fmt.Errorf("p2p: joining %s: %w", name, err)
	}
	var sub *pubsub.Subscription
	if err = topic.SetScoreParams(topicScoreParams()); err == nil {
		sub, err = topic.Subscribe(pubsub.WithBufferSize(1024))
	}
	if err != nil {
		_ = topic.Close()
		_ = ps.UnregisterTopicValidator(name)
		n.mu.Unlock()
		return fmt.Errorf("p2p: scoring and subscribing to %s: %w", name, err)
	}
	ctx, cancel := context.WithCancel(runCtx)
	n.topics[ns] = &nsTopic{topic: topic, sub: sub, cancel: cancel}
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.readLoop(ctx, ns, sub)
	}()
	peers := n.h.Network().Peers()
	n.mu.Unlock()
	n.metrics.namespaces.Inc()
	if len(peers) > 0 {
		// The whole DAG from one peer first, then from the others only what
		// it lacked: syncing from every peer at once fetched and verified
		// the namespace once per peer, which is most of a fleet join's CPU.
		n.goRun(func(ctx context.Context) {
			n.runSync(ctx, ns, peers[0])
			for _, p := range peers[1:] {
				n.requestSync(ns, p)
			}
		})
	}
	return nil
}

// Leave unsubscribes from a namespace's topic.
func (n *Network) Leave(ns NamespaceID) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.topics[ns]
	if !ok {
		return nil
	}
	delete(n.topics, ns)
	t.cancel()
	t.sub.Cancel()
	_ = n.ps.UnregisterTopicValidator(Topic(ns))
	n.metrics.namespaces.Dec()
	if err := t.topic.Close(); err != nil {
		return fmt.Errorf("p2p: leaving %s: %w", Topic(ns), err)
	}
	return nil
}

func (n *Network) topicOf(ns NamespaceID) (*pubsub.Topic, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.topics[ns]
	if !ok {
		if n.ps == nil {
			return nil, ErrNotRunning
		}
		return nil, fmt.Errorf("p2p: namespace %s not joined: %w", ns, ErrUnknownNamespace)
	}
	return t.topic, nil
}

// PublishOp gossips an op this node has already applied.
func (n *Network) PublishOp(ctx context.Context, ns NamespaceID, wire []byte) error {
	return n.publish(ctx, ns, NewOpEnvelope(ns, wire))
}

// PublishAnnounce gossips a TeeAttestationAnnounce.
func (n *Network) PublishAnnounce(ctx context.Context, ns NamespaceID, announce []byte) error {
	// A replica announces right after it joined the topic, often right
	// after it connected: its pubsub may not know yet who else is in the
	// topic (their subscriptions arrive on streams opened after the
	// connect), and an announce published then reaches nobody, which cost
	// a whole re-announce backoff (500 ms) in one join of a hundred. Wait,
	// briefly and bounded, until some peer is known in the topic.
	if t, err := n.topicOf(ns); err == nil {
		deadline := time.Now().Add(announcePeerWait)
		for len(t.ListPeers()) == 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return n.publish(ctx, ns, NewAnnounce(ns, announce))
}

// announcePeerWait bounds how long an announce waits for a peer in its
// topic; the announcer re-announces anyway.
const announcePeerWait = 2 * time.Second

func (n *Network) publish(ctx context.Context, ns NamespaceID, e *Envelope) error {
	t, err := n.topicOf(ns)
	if err != nil {
		return err
	}
	b, err := e.Marshal()
	if err != nil {
		return fmt.Errorf("p2p: publishing %s: %w", e.Kind, err)
	}
	if err := t.Publish(ctx, b); err != nil {
		return fmt.Errorf("p2p: publishing %s on %s: %w", e.Kind, Topic(ns), err)
	}
	n.metrics.published.WithLabelValues(e.Kind.String()).Inc()
	return nil
}

// Heartbeat publishes the heads of every joined namespace now.
func (n *Network) Heartbeat(ctx context.Context) {
	n.mu.Lock()
	nss := make([]NamespaceID, 0, len(n.topics))
	for ns := range n.topics {
		nss = append(nss, ns)
	}
	n.mu.Unlock()
	for _, ns := range nss {
		heads, count, err := n.cfg.Engine.Heads(ns)
		if err != nil {
			n.log.Warn("reading heads for heartbeat", "namespace", ns, "err", err)
			continue
		}
		if err := n.publish(ctx, ns, NewHeartbeat(ns, heads, count)); err != nil && ctx.Err() == nil {
			n.log.Debug("heartbeat", "namespace", ns, "err", err)
		}
	}
}

func (n *Network) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.Heartbeat(ctx)
		}
	}
}

func (n *Network) bootstrapLoop(ctx context.Context) {
	if len(n.cfg.Bootstrap) == 0 {
		return
	}
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		for _, b := range n.cfg.Bootstrap {
			ai, err := peer.AddrInfoFromString(b)
			if err != nil {
				continue
			}
			if n.host().Network().Connectedness(ai.ID) == network.Connected {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := n.host().Connect(cctx, *ai); err != nil && ctx.Err() == nil {
				n.log.Debug("dialling bootstrap peer", "peer", ai.ID, "err", err)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Connect dials a peer given as a multiaddr with a /p2p/<id> part.
func (n *Network) Connect(ctx context.Context, addr string) error {
	ai, err := peer.AddrInfoFromString(addr)
	if err != nil {
		return fmt.Errorf("p2p: peer address %q: %w", addr, err)
	}
	h := n.host()
	if h == nil {
		return ErrNotRunning
	}
	if err := h.Connect(ctx, *ai); err != nil {
		return fmt.Errorf("p2p: connecting to %s: %w", ai.ID, err)
	}
	return nil
}

// Block refuses every connection with p (gossip and streams) and closes the
// current ones, until Unblock.
func (n *Network) Block(p peer.ID) {
	n.gater.block(p)
	if h := n.host(); h != nil {
		_ = h.Network().ClosePeer(p)
	}
}

// Unblock lets p connect again.
func (n *Network) Unblock(p peer.ID) { n.gater.unblock(p) }

// PeerInfo describes a connected peer.
type PeerInfo struct {
	ID         string   `json:"id"`
	Addrs      []string `json:"addrs"`
	Namespaces []string `json:"namespaces,omitempty"` // topics we share
}

// Peers lists connected peers.
func (n *Network) Peers() []PeerInfo {
	n.mu.Lock()
	h, ps := n.h, n.ps
	topics := make(map[string]bool, len(n.topics))
	for ns := range n.topics {
		topics[Topic(ns)] = true
	}
	n.mu.Unlock()
	if h == nil {
		return nil
	}
	shared := map[peer.ID][]string{}
	for t := range topics {
		for _, p := range ps.ListPeers(t) {
			shared[p] = append(shared[p], t[len("ns/"):])
		}
	}
	var out []PeerInfo
	for _, p := range h.Network().Peers() {
		pi := PeerInfo{ID: p.String(), Namespaces: shared[p]}
		slices.Sort(pi.Namespaces)
		for _, c := range h.Network().ConnsToPeer(p) {
			pi.Addrs = append(pi.Addrs, c.RemoteMultiaddr().String())
		}
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b PeerInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// RequestSync schedules a sync of ns from every peer in its topic (one at a
// time per peer, as every sync is).
func (n *Network) RequestSync(ns NamespaceID) {
	for _, p := range n.TopicPeers(ns) {
		n.requestSync(ns, p)
	}
}

// TopicPeers lists the peers subscribed to a namespace's topic.
func (n *Network) TopicPeers(ns NamespaceID) []peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ps == nil {
		return nil
	}
	return n.ps.ListPeers(Topic(ns))
}

// validatorData is what the validator hands the reader of a message.
type validatorData struct {
	env *Envelope
}

func (n *Network) validator(ns NamespaceID) pubsub.ValidatorEx {
	return func(ctx context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		res, kind := n.validate(ctx, ns, m)
		n.metrics.gossip.WithLabelValues(kind, resultName(res)).Inc()
		return res
	}
}

func resultName(r pubsub.ValidationResult) string {
	switch r {
	case pubsub.ValidationAccept:
		return "accept"
	case pubsub.ValidationReject:
		return "reject"
	}
	return "ignore"
}

func (n *Network) validate(ctx context.Context, ns NamespaceID, m *pubsub.Message) (pubsub.ValidationResult, string) {
	e, err := DecodeEnvelope(m.Data)
	if err != nil {
		n.log.Debug("dropping gossip", "namespace", ns, "from", m.ReceivedFrom, "err", err)
		return pubsub.ValidationReject, "malformed"
	}
	if e.NamespaceID() != ns {
		return pubsub.ValidationReject, e.Kind.String()
	}
	kind := e.Kind.String()
	if m.ReceivedFrom == n.ID() {
		// Our own publish: the op was applied before it was published.
		m.ValidatorData = &validatorData{env: e}
		return pubsub.ValidationAccept, kind
	}
	switch e.Kind {
	case KindHeartbeat:
		m.ValidatorData = &validatorData{env: e}
		return pubsub.ValidationAccept, kind
	case KindTeeAttestationAnnounce:
		if n.cfg.OnAnnounce == nil {
			return pubsub.ValidationIgnore, kind
		}
		return n.cfg.OnAnnounce(ctx, ns, m.GetFrom(), e.Announce), kind
	}
	id, err := n.cfg.Engine.CheckOp(ns, e.Op)
	if err != nil {
		n.countRefused("gossip", 1)
		n.log.Debug("refusing gossiped op", "namespace", ns, "from", m.ReceivedFrom, "err", err)
		return pubsub.ValidationReject, kind
	}
	if applied, pending, err := n.cfg.Engine.Known(ns, id); err == nil && (applied || pending) {
		return pubsub.ValidationIgnore, kind
	}
	res, err := n.cfg.Engine.Apply(WithOrigin(ctx, m.ReceivedFrom), ns, [][]byte{e.Op})
	if err != nil {
		n.log.Warn("applying gossiped op", "namespace", ns, "op", id, "err", err)
		return pubsub.ValidationIgnore, kind
	}
	if res.Refused > res.LocalRefused {
		n.countRefused("gossip", res.Refused)
		n.log.Info("refused gossiped op", "namespace", ns, "op", id, "from", m.ReceivedFrom, "reason", res.FirstRefusal)
		return pubsub.ValidationReject, kind
	}
	if res.Refused > 0 {
		// This node's queue state (full, a quota), not the op's fault:
		// dropped without penalizing the forwarder, which may well be an
		// honest peer passing on what it accepted.
		n.countRefused("gossip", res.Refused)
		n.log.Debug("gossiped op not taken here", "namespace", ns, "op", id, "from", m.ReceivedFrom, "reason", res.FirstRefusal)
		return pubsub.ValidationIgnore, kind
	}
	if res.Pending > 0 {
		// Its parents are missing: not forwarded until it is valid (an
		// outsider can sign ops naming parents that do not exist), and a
		// sync from the sender fetches this op's own parents.
		n.log.Debug("gossiped op waits for parents; syncing from its sender", "namespace", ns, "op", id, "from", m.ReceivedFrom)
		n.requestSync(ns, m.ReceivedFrom)
		return pubsub.ValidationIgnore, kind
	}
	if res.Applied > 0 {
		n.metrics.opsGossiped.Add(float64(res.Applied))
		if n.cfg.OnApplied != nil {
			n.cfg.OnApplied(ns, res.Applied)
		}
	}
	m.ValidatorData = &validatorData{env: e}
	return pubsub.ValidationAccept, kind
}

func (n *Network) readLoop(ctx context.Context, ns NamespaceID, sub *pubsub.Subscription) {
	self := n.ID()
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			return
		}
		vd, _ := m.ValidatorData.(*validatorData)
		if vd == nil || m.ReceivedFrom == self {
			continue
		}
		switch vd.env.Kind {
		case KindHeartbeat:
			// A head that is not applied here (unknown, or pending for
			// want of parents) means the peer has ops this node lacks:
			// every op the peer has is an ancestor of one of its heads.
			// Counting a pending head as known would leave a node whose
			// first sync came too early waiting for parents forever.
			for _, h := range vd.env.HeadIDs() {
				if applied, _, err := n.cfg.Engine.Known(ns, h); err == nil && !applied {
					p := m.GetFrom()
					if hh := n.host(); hh == nil || hh.Network().Connectedness(p) != network.Connected {
						p = m.ReceivedFrom
					}
					n.mu.Lock()
					last := n.lastSync[syncKey{ns, p}]
					n.mu.Unlock()
					if time.Since(last) >= n.cfg.HeartbeatInterval/4 {
						n.requestSync(ns, p)
					}
					break
				}
			}
		}
	}
}

// syncAllWith schedules a sync of every joined namespace with p.
func (n *Network) syncAllWith(p peer.ID) {
	n.mu.Lock()
	nss := make([]NamespaceID, 0, len(n.topics))
	for ns := range n.topics {
		nss = append(nss, ns)
	}
	n.mu.Unlock()
	for _, ns := range nss {
		n.requestSync(ns, p)
	}
}

// requestSync schedules a sync of ns from p. At most one runs per (ns, p);
// a request that arrives while one runs makes it run once more afterwards.
func (n *Network) requestSync(ns NamespaceID, p peer.ID) {
	if p == n.ID() || p == "" {
		return
	}
	k := syncKey{ns, p}
	n.mu.Lock()
	if st, ok := n.syncing[k]; ok {
		st.again = true
		n.mu.Unlock()
		return
	}
	st := &syncState{}
	n.syncing[k] = st
	n.mu.Unlock()
	started := n.goRun(func(ctx context.Context) {
		for {
			n.runSync(ctx, ns, p)
			n.mu.Lock()
			n.lastSync[k] = time.Now()
			if !st.again || ctx.Err() != nil {
				delete(n.syncing, k)
				n.mu.Unlock()
				return
			}
			st.again = false
			n.mu.Unlock()
		}
	})
	if !started {
		n.mu.Lock()
		delete(n.syncing, k)
		n.mu.Unlock()
	}
}

func (n *Network) runSync(ctx context.Context, ns NamespaceID, p peer.ID) {
	select {
	case n.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-n.sem }()
	start := time.Now()
	st, err := n.SyncFrom(ctx, ns, p)
	n.metrics.syncSeconds.Observe(time.Since(start).Seconds())
	switch {
	case errors.Is(err, ErrSyncRefused):
		n.metrics.syncs.WithLabelValues("refused").Inc()
		n.log.Debug("sync refused", "namespace", ns, "peer", p, "err", err)
	case err != nil:
		n.metrics.syncs.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			n.log.Debug("sync failed", "namespace", ns, "peer", p, "err", err)
		}
	default:
		n.metrics.syncs.WithLabelValues("ok").Inc()
		if st.Applied > 0 {
			n.log.Info("synced", "namespace", ns, "peer", p, "received", st.Received, "applied", st.Applied, "pending", st.Pending, "refused", st.Refused, "took", time.Since(start))
		}
	}
	if st.Applied > 0 && n.cfg.OnApplied != nil {
		n.cfg.OnApplied(ns, st.Applied)
	}
}

func (n *Network) countRefused(source string, k int) {
	if k > 0 {
		n.metrics.refused.WithLabelValues(source).Add(float64(k))
	}
}
