package contexts

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/store"
)

// fetchPatience is how long a fetch keeps retrying peers that do not have
// the application yet.
const fetchPatience = 20 * time.Second

// ErrAppUnavailable: the application is neither stored here nor fetchable
// from a peer now.
var ErrAppUnavailable = errors.New("contexts: application not available on this node")

// AppListing is one application stored on this node.
type AppListing struct {
	ID      ApplicationID `json:"id"`
	Size    int           `json:"size"`
	Methods []string      `json:"methods"`
	// Installed: by `ctl app install` here (else fetched from a peer).
	Installed bool `json:"installed"`
}

// Install checks an application (size, compiles, imports and exports) and
// stores it. Installing it again is a no-op.
func (e *Engine) Install(ctx context.Context, wasm []byte) (*AppListing, error) {
	info, err := e.host.Load(ctx, wasm)
	if err != nil {
		return nil, fmt.Errorf("installing application: %w", err)
	}
	id := ApplicationID(info.ID)
	if err := e.storeApp(id, wasm, info, true); err != nil {
		return nil, err
	}
	return &AppListing{ID: id, Size: info.Size, Methods: info.Methods, Installed: true}, nil
}

func (e *Engine) storeApp(id ApplicationID, wasm []byte, info *wasmhost.AppInfo, installed bool) error {
	err := e.st.Update(func(tx *store.Tx) error {
		if err := tx.Put(store.Application, row(prefAppBin, id[:]), wasm); err != nil {
			return err
		}
		return tx.Put(store.Application, row(prefAppInfo, id[:]), enc(&appRecord{Size: info.Size, Methods: info.Methods, Installed: installed}))
	})
	if err != nil {
		return fmt.Errorf("storing application %s: %w", id, err)
	}
	return nil
}

// Applications lists the applications stored here, by id.
func (e *Engine) Applications() ([]AppListing, error) {
	out := []AppListing{}
	err := e.st.View(func(tx *store.Tx) error {
		return tx.ForEach(store.Application, prefAppInfo, func(k, v []byte) error {
			var r appRecord
			if err := decMode.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, AppListing{ID: ApplicationID(k[len(prefAppInfo):]), Size: r.Size, Methods: r.Methods, Installed: r.Installed})
			return nil
		})
	})
	return out, err
}

// ApplicationBytes returns a stored application's WASM bytes.
func (e *Engine) ApplicationBytes(id ApplicationID) ([]byte, error) {
	var b []byte
	err := e.st.View(func(tx *store.Tx) error {
		var err error
		b, err = tx.Get(store.Application, row(prefAppBin, id[:]))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrAppUnavailable, id)
	}
	return b, err
}

// hasApp reports whether app's bytes are stored here (reading only its
// small info row).
func (e *Engine) hasApp(id ApplicationID) bool {
	err := e.st.View(func(tx *store.Tx) error {
		_, err := tx.Get(store.Application, row(prefAppInfo, id[:]))
		return err
	})
	return err == nil
}

// ensureApp makes app ready to run: loaded, else from the store, else
// fetched from a peer of ns (and checked against its id).
func (e *Engine) ensureApp(ctx context.Context, ns NamespaceID, app ApplicationID) error {
	if e.host.Loaded(wasmhost.ApplicationID(app)) {
		return nil
	}
	wasm, err := e.ApplicationBytes(app)
	if errors.Is(err, ErrAppUnavailable) {
		wasm, err = e.fetchApp(ctx, ns, app)
	}
	if err != nil {
		return err
	}
	if _, err := e.host.Load(ctx, wasm); err != nil {
		return fmt.Errorf("loading application %s: %w", app.String()[:12], err)
	}
	return nil
}

// fetchApp fetches app from peers of ns and stores it.
func (e *Engine) fetchApp(ctx context.Context, ns NamespaceID, app ApplicationID) ([]byte, error) {
	if e.fetch == nil {
		return nil, fmt.Errorf("%w: %s (install it: fleetbox ctl app install)", ErrAppUnavailable, app)
	}
	e.fetchMu.Lock()
	defer e.fetchMu.Unlock()
	if b, err := e.ApplicationBytes(app); err == nil {
		return b, nil // another fetch got it meanwhile
	}
	// A peer that fetches the application itself right now may not have it
	// yet: retry for a while before giving up.
	wasm, err := e.fetch.FetchApplication(ctx, ns, app)
	for wait, deadline := 250*time.Millisecond, time.Now().Add(fetchPatience); err != nil && time.Now().Before(deadline); wait = min(2*wait, 2*time.Second) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s: %w", ErrAppUnavailable, app.String()[:12], err)
		case <-time.After(wait):
		}
		wasm, err = e.fetch.FetchApplication(ctx, ns, app)
	}
	if err == nil && wasmhost.ID(wasm) != wasmhost.ApplicationID(app) {
		err = fmt.Errorf("a peer sent bytes that do not hash to application %s", app)
	}
	if err != nil {
		e.m.fetched.WithLabelValues("failed").Inc()
		return nil, fmt.Errorf("%w: %s: %w", ErrAppUnavailable, app.String()[:12], err)
	}
	e.m.fetched.WithLabelValues("ok").Inc()
	// Stored before it is compiled, so peers can fetch it from here at once:
	// the bytes are those a signed op of the namespace names.
	if err := e.storeApp(app, wasm, &wasmhost.AppInfo{Size: len(wasm)}, false); err != nil {
		return nil, err
	}
	info, err := e.host.Load(ctx, wasm) // checks it, and fills the compilation cache
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrAppUnavailable, app.String()[:12], err)
	}
	if err := e.storeApp(app, wasm, info, false); err != nil {
		return nil, err
	}
	e.log.Info("fetched an application from a peer", "namespace", ns.String()[:16], "app", app.String()[:16], "size", len(wasm))
	return wasm, nil
}

// prefetch fetches the applications that contexts of nss use and this
// node lacks, so a replica can answer queries at once.
func (e *Engine) prefetch(ctx context.Context, nss []NamespaceID) {
	if e.fetch == nil {
		return
	}
	for _, ns := range nss {
		apps, err := e.gov.ApplicationsUsed(ns)
		if err != nil {
			continue
		}
		for _, a := range apps {
			if e.hasApp(a) {
				continue
			}
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if _, err := e.fetchApp(fctx, ns, a); err != nil {
				e.log.Debug("prefetching an application", "app", a.String()[:16], "err", err)
			}
			cancel()
		}
	}
}

// AppsOnlyUsedBy lists the applications contexts of ns use or used that no
// context of another namespace on this node uses (what a self-purge of ns
// deletes). Call it before governance forgets ns.
func AppsOnlyUsedBy(gov *governance.Engine, ns NamespaceID) ([]ApplicationID, error) {
	mine, err := gov.ApplicationsUsed(ns)
	if err != nil {
		return nil, err
	}
	nss, err := gov.Namespaces()
	if err != nil {
		return nil, err
	}
	for _, other := range nss {
		if other == ns {
			continue
		}
		theirs, err := gov.ApplicationsUsed(other)
		if err != nil {
			continue
		}
		mine = slices.DeleteFunc(mine, func(a ApplicationID) bool { return slices.Contains(theirs, a) })
	}
	return mine, nil
}

// ContextsOfGroup lists the contexts of ns in group g (a subgroup purge).
func ContextsOfGroup(gov *governance.Engine, ns NamespaceID, g GroupID) []ContextID {
	infos, err := gov.Contexts(ns)
	if err != nil {
		return nil
	}
	var out []ContextID
	for _, ci := range infos {
		if ci.Group == g {
			out = append(out, ci.ID)
		}
	}
	return out
}

// RemoveCompiled deletes the compiled-code cache of applications (a
// self-purge when no engine runs).
func RemoveCompiled(cacheDir string, ids []ApplicationID) error {
	var errs []error
	for _, id := range ids {
		if cacheDir != "" {
			errs = append(errs, os.RemoveAll(filepath.Join(cacheDir, id.String())))
		}
	}
	return errors.Join(errs...)
}

// DeleteAppRows deletes stored applications inside tx.
func DeleteAppRows(tx *store.Tx, ids []ApplicationID) (int, error) {
	n := 0
	for _, id := range ids {
		for _, p := range [][]byte{prefAppBin, prefAppInfo} {
			if err := tx.Delete(store.Application, row(p, id[:])); err != nil {
				return n, fmt.Errorf("deleting application %s: %w", id, err)
			}
			n++
		}
	}
	return n, nil
}
