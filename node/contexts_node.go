package node

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/fleetbox/fleetbox/node/contexts"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/selfpurge"
	"github.com/fleetbox/fleetbox/node/store"
)

// WasmCacheDir is the compiled-code cache of applications, in the home.
const WasmCacheDir = "wasm-cache"

// fetchTimeout bounds one application fetch from one peer.
const fetchTimeout = 30 * time.Second

func (n *Node) openContexts(st *store.Store, eng *governance.Engine) (*contexts.Engine, error) {
	ce, err := contexts.New(contexts.Config{
		Store: st, Governance: eng, CacheDir: filepath.Join(n.cfg.Home, WasmCacheDir),
		Fetcher: appFetcher{n}, Logger: n.log.With("component", "contexts"), Registerer: n.reg,
	})
	if err != nil {
		return nil, fmt.Errorf("starting contexts: %w", err)
	}
	return ce, nil
}

// Contexts returns the contexts engine (valid after Ready).
func (n *Node) Contexts() *contexts.Engine { return n.ctxs }

// streamHandlers are the node's stream protocols besides governance sync.
func (n *Node) streamHandlers() map[protocol.ID]network.StreamHandler {
	serving := make(chan struct{}, 4) // bounds concurrent application uploads
	return map[protocol.ID]network.StreamHandler{
		contexts.FetchProtocol: func(s network.Stream) {
			defer s.Close()
			select {
			case serving <- struct{}{}:
				defer func() { <-serving }()
			default:
				_ = s.Reset()
				return
			}
			_ = s.SetDeadline(time.Now().Add(fetchTimeout))
			if err := n.ctxs.ServeFetch(s, []byte(s.Conn().RemotePeer()), []byte(n.net.ID())); err != nil {
				n.log.Debug("application fetch refused", "peer", s.Conn().RemotePeer().String(), "err", err)
			}
		},
	}
}

// appFetcher fetches application bytes from the namespace's peers.
type appFetcher struct{ n *Node }

func (f appFetcher) FetchApplication(ctx context.Context, ns contexts.NamespaceID, app contexts.ApplicationID) ([]byte, error) {
	n := f.n
	priv, err := n.ctxs.IdentityKey(ns)
	if err != nil {
		return nil, err
	}
	defer clear(priv)
	peers := n.net.TopicPeers(p2p.NamespaceID(ns))
	for _, p := range n.net.ConnectedPeers() {
		if !slices.Contains(peers, p) {
			peers = append(peers, p)
		}
	}
	errs := []error{errors.New("no peer served it")}
	for _, p := range peers {
		wasm, err := f.from(ctx, p, priv, ns, app)
		if err == nil {
			return wasm, nil
		}
		errs = append(errs, fmt.Errorf("peer %s: %w", p.ShortString(), err))
	}
	return nil, errors.Join(errs...)
}

func (f appFetcher) from(ctx context.Context, p peer.ID, priv []byte, ns contexts.NamespaceID, app contexts.ApplicationID) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	s, err := f.n.net.NewStream(ctx, p, contexts.FetchProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	return contexts.FetchFrom(ctx, s, priv, ns, app, []byte(f.n.net.ID()), []byte(p))
}

// contextPurge extends the self-purge to contexts: their state rows, the
// applications only the purged namespace used and their compiled code.
type contextPurge struct {
	n *Node
	selfpurge.Rows

	mu   sync.Mutex // guards apps and ids
	apps map[selfpurge.Target][]contexts.ApplicationID
	ids  map[selfpurge.Target][]contexts.ContextID
}

func newContextPurge(n *Node, rows selfpurge.Rows) *contextPurge {
	return &contextPurge{n: n, Rows: rows, apps: map[selfpurge.Target][]contexts.ApplicationID{}, ids: map[selfpurge.Target][]contexts.ContextID{}}
}

// before reads, while governance still holds the namespace, what the
// purge deletes.
func (cp *contextPurge) before(t selfpurge.Target) {
	if cp == nil {
		return
	}
	ns := governance.NamespaceID(t.Namespace)
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if t.Whole() {
		apps, err := contexts.AppsOnlyUsedBy(cp.n.eng, ns)
		if err == nil {
			cp.apps[t] = apps
		}
		return
	}
	cp.ids[t] = contexts.ContextsOfGroup(cp.n.eng, ns, governance.GroupID(t.Group))
}

// Delete deletes the contexts' rows, then what the node's rows hold.
func (cp *contextPurge) Delete(tx *store.Tx, t selfpurge.Target) (int, error) {
	ns := governance.NamespaceID(t.Namespace)
	cp.mu.Lock()
	apps, ids := cp.apps[t], cp.ids[t]
	cp.mu.Unlock()
	var total int
	var err error
	if t.Whole() {
		total, err = contexts.DeleteRows(tx, ns, nil)
	} else if len(ids) > 0 {
		total, err = contexts.DeleteRows(tx, ns, ids)
	}
	if err != nil {
		return total, err
	}
	k, err := contexts.DeleteAppRows(tx, apps)
	total += k
	if err != nil {
		return total, err
	}
	k, err = cp.Rows.Delete(tx, t)
	return total + k, err
}

// after drops the purged contexts from memory and the compiled code.
func (cp *contextPurge) after(t selfpurge.Target) {
	if cp == nil {
		return
	}
	ns := governance.NamespaceID(t.Namespace)
	cp.mu.Lock()
	apps, ids := cp.apps[t], cp.ids[t]
	delete(cp.apps, t)
	delete(cp.ids, t)
	cp.mu.Unlock()
	if cp.n.ctxs == nil {
		if err := contexts.RemoveCompiled(filepath.Join(cp.n.cfg.Home, WasmCacheDir), apps); err != nil {
			cp.n.log.Warn("removing compiled code of purged applications", "err", err)
		}
		return
	}
	if t.Whole() {
		cp.n.ctxs.Forget(context.Background(), ns, apps)
		return
	}
	cp.n.ctxs.ForgetContexts(ns, ids)
}
