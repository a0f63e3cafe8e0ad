package wasmhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// Limits bound one call. Zero fields take the defaults named.
type Limits struct {
	// MemoryPages caps linear memory in 64 KiB pages; default 1024 (64 MiB).
	MemoryPages uint32
	// CallTimeout bounds one call; default 2 s.
	CallTimeout time.Duration
	// MaxInput bounds a call's input; default 16 KiB.
	MaxInput int
	// MaxOutput bounds the return value; default 64 KiB.
	MaxOutput int
	// MaxKey bounds a storage key; default 256 bytes.
	MaxKey int
	// MaxValue bounds a storage value; default 16 KiB.
	MaxValue int
	// MaxWrites bounds the keys one call writes or removes; default 256.
	MaxWrites int
	// MaxWriteBytes bounds the keys and values one call writes; default
	// 32 KiB (a call's writes travel in one governance op).
	MaxWriteBytes int
	// MaxLogBytes bounds logs plus events of one call; default 16 KiB.
	MaxLogBytes int
}

// DefaultLimits are the limits a zero Limits means.
var DefaultLimits = Limits{MemoryPages: 1024, CallTimeout: 2 * time.Second, MaxInput: 16 << 10, MaxOutput: 64 << 10,
	MaxKey: 256, MaxValue: 16 << 10, MaxWrites: 256, MaxWriteBytes: 32 << 10, MaxLogBytes: 16 << 10}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	pick := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	if l.MemoryPages == 0 {
		l.MemoryPages = d.MemoryPages
	}
	if l.CallTimeout <= 0 {
		l.CallTimeout = d.CallTimeout
	}
	pick(&l.MaxInput, d.MaxInput)
	pick(&l.MaxOutput, d.MaxOutput)
	pick(&l.MaxKey, d.MaxKey)
	pick(&l.MaxValue, d.MaxValue)
	pick(&l.MaxWrites, d.MaxWrites)
	pick(&l.MaxWriteBytes, d.MaxWriteBytes)
	pick(&l.MaxLogBytes, d.MaxLogBytes)
	return l
}

// MaxAppSize bounds an application's WASM bytes. A Go wasip1 module is 2-4
// MiB; 32 MiB leaves room for large applications.
const MaxAppSize = 32 << 20

// MaxRetainedGrowth is how far an instance's memory may grow past its
// initial size and still be pooled; a larger one is closed after its call,
// so zeroing it back is never the cost of a call.
const MaxRetainedGrowth = 16 << 20

// maxIdle bounds the pooled instances per application.
const maxIdle = 4

// Config configures a Host.
type Config struct {
	// CacheDir holds wazero's compilation cache, one directory per
	// application (named by its id); empty disables the cache.
	CacheDir string
	Limits   Limits
	// Interpreter runs modules in wazero's interpreter instead of its
	// compiler (tests of the compiler-free path).
	Interpreter bool
	Logger      *slog.Logger
}

// Host compiles applications and runs calls. It starts no goroutines; all
// methods are safe for concurrent use.
type Host struct {
	cfg    Config
	lim    Limits
	log    *slog.Logger
	closed chan struct{}

	mu   sync.Mutex // guards apps
	apps map[ApplicationID]*app
}

// New checks cfg; it compiles nothing and touches no file.
func New(cfg Config) *Host {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Host{cfg: cfg, lim: cfg.Limits.withDefaults(), log: cfg.Logger, closed: make(chan struct{}), apps: map[ApplicationID]*app{}}
}

// Limits returns the limits in force.
func (h *Host) Limits() Limits { return h.lim }

// AppInfo describes a checked application.
type AppInfo struct {
	ID      ApplicationID `json:"id"`
	Size    int           `json:"size"`
	Methods []string      `json:"methods"`
}

// app is one compiled application and its pool of instances.
type app struct {
	id      ApplicationID
	info    AppInfo
	rt      wazero.Runtime
	cache   wazero.CompilationCache
	mod     wazero.CompiledModule
	methods map[string]bool
	slots   chan struct{} // bounds live instances

	mu   sync.Mutex // guards idle
	idle []*instance
}

// ID returns the SHA-256 of wasm.
func ID(wasm []byte) ApplicationID { return sha256.Sum256(wasm) }

// Check compiles wasm and checks its imports and exports without keeping
// it (the compiled code goes to the cache). Install-time validation.
func (h *Host) Check(ctx context.Context, wasm []byte) (*AppInfo, error) {
	id := ID(wasm)
	a, err := h.compile(ctx, id, wasm, h.cacheDir(id))
	if err != nil {
		return nil, err
	}
	info := a.info
	a.close(ctx)
	return &info, nil
}

// Load compiles wasm (from the compilation cache when it holds it) and
// keeps it ready for calls. Loading a loaded application is a no-op.
func (h *Host) Load(ctx context.Context, wasm []byte) (*AppInfo, error) {
	id := ID(wasm)
	h.mu.Lock()
	if a := h.apps[id]; a != nil {
		h.mu.Unlock()
		info := a.info
		return &info, nil
	}
	h.mu.Unlock()
	a, err := h.compile(ctx, id, wasm, h.cacheDir(id))
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if old := h.apps[id]; old != nil {
		a.close(ctx)
		info := old.info
		return &info, nil
	}
	h.apps[id] = a
	info := a.info
	return &info, nil
}

// cacheDir is the application's compilation cache directory, or "".
func (h *Host) cacheDir(id ApplicationID) string {
	if h.cfg.CacheDir == "" {
		return ""
	}
	return filepath.Join(h.cfg.CacheDir, id.String())
}

// Loaded reports whether the application is compiled and ready.
func (h *Host) Loaded(id ApplicationID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.apps[id] != nil
}

// Unload closes an application's instances and compiled code. With
// removeCache it also deletes its compilation cache directory (self-purge).
func (h *Host) Unload(ctx context.Context, id ApplicationID, removeCache bool) error {
	h.mu.Lock()
	a := h.apps[id]
	delete(h.apps, id)
	h.mu.Unlock()
	if a != nil {
		a.close(ctx)
	}
	if removeCache && h.cfg.CacheDir != "" {
		if err := os.RemoveAll(filepath.Join(h.cfg.CacheDir, id.String())); err != nil {
			return fmt.Errorf("removing the compilation cache of application %s: %w", id, err)
		}
	}
	return nil
}

// Close closes every application. Calls in flight fail with ErrClosed or
// end when their instance closes.
func (h *Host) Close(ctx context.Context) error {
	select {
	case <-h.closed:
		return nil
	default:
		close(h.closed)
	}
	h.mu.Lock()
	apps := h.apps
	h.apps = map[ApplicationID]*app{}
	h.mu.Unlock()
	for _, a := range apps {
		a.close(ctx)
	}
	return nil
}

func (h *Host) app(id ApplicationID) *app {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.apps[id]
}

var wasmMagic = []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}

// compile builds a runtime for one application with the host modules,
// compiles the module and checks it.
func (h *Host) compile(ctx context.Context, id ApplicationID, wasm []byte, cacheDir string) (*app, error) {
	if len(wasm) > MaxAppSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrAppTooLarge, len(wasm), MaxAppSize)
	}
	if !bytes.HasPrefix(wasm, wasmMagic) {
		return nil, fmt.Errorf("%w: no WebAssembly 1.0 header (\\0asm, version 1)", ErrNotWasm)
	}
	rc := wazero.NewRuntimeConfigCompiler()
	if h.cfg.Interpreter {
		rc = wazero.NewRuntimeConfigInterpreter()
	}
	rc = rc.WithMemoryLimitPages(h.lim.MemoryPages).WithCloseOnContextDone(true)
	var cache wazero.CompilationCache
	if cacheDir != "" {
		var err error
		if cache, err = wazero.NewCompilationCacheWithDir(cacheDir); err != nil {
			return nil, fmt.Errorf("opening the compilation cache %s: %w", cacheDir, err)
		}
		rc = rc.WithCompilationCache(cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	a := &app{id: id, rt: rt, cache: cache, slots: make(chan struct{}, 16)}
	fail := func(err error) (*app, error) {
		a.close(ctx)
		return nil, err
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return fail(fmt.Errorf("instantiating WASI: %w", err))
	}
	if _, err := hostModule(rt).Instantiate(ctx); err != nil {
		return fail(fmt.Errorf("instantiating the fleetbox host module: %w", err))
	}
	mod, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrInvalidModule, err))
	}
	a.mod = mod
	if err := checkImports(rt, mod); err != nil {
		return fail(err)
	}
	methods, err := checkExports(mod)
	if err != nil {
		return fail(err)
	}
	a.methods = map[string]bool{}
	for _, m := range methods {
		a.methods[m] = true
	}
	a.info = AppInfo{ID: id, Size: len(wasm), Methods: methods}
	return a, nil
}

func sameTypes(a, b []api.ValueType) bool { return slices.Equal(a, b) }

// checkImports refuses any import the host modules do not export with the
// same type, so a module fails at install rather than at its first call.
func checkImports(rt wazero.Runtime, mod wazero.CompiledModule) error {
	var errs []error
	for _, imp := range mod.ImportedFunctions() {
		modName, name, _ := imp.Import()
		var have api.FunctionDefinition
		if m := rt.Module(modName); m != nil && (modName == ABIModule || modName == wasiModule) {
			have = m.ExportedFunctionDefinitions()[name]
		}
		switch {
		case have == nil:
			errs = append(errs, fmt.Errorf("%w: %s.%s", ErrBadImport, modName, name))
		case !sameTypes(have.ParamTypes(), imp.ParamTypes()) || !sameTypes(have.ResultTypes(), imp.ResultTypes()):
			errs = append(errs, fmt.Errorf("%w: %s.%s has the wrong type", ErrBadImport, modName, name))
		}
	}
	if len(mod.ImportedMemories()) > 0 {
		errs = append(errs, fmt.Errorf("%w: imports a memory", ErrBadImport))
	}
	return errors.Join(errs...)
}

var reserved = map[string]bool{"_initialize": true, "_start": true, ABIVersionExport: true}

// checkExports requires memory, _initialize and the ABI version export, and
// returns the methods, sorted.
func checkExports(mod wazero.CompiledModule) ([]string, error) {
	ex := mod.ExportedFunctions()
	var missing []string
	if _, ok := mod.ExportedMemories()["memory"]; !ok {
		missing = append(missing, "memory")
	}
	if _, ok := ex["_start"]; ok {
		return nil, fmt.Errorf("%w: exports _start (a command); build a reactor (-buildmode=c-shared)", ErrBadExports)
	}
	for _, name := range []string{"_initialize", ABIVersionExport} {
		if _, ok := ex[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing %v (build with the fleetbox SDK and -buildmode=c-shared)", ErrBadExports, missing)
	}
	var methods []string
	for name, def := range ex {
		if !reserved[name] && len(def.ParamTypes()) == 0 && len(def.ResultTypes()) == 0 {
			methods = append(methods, name)
		}
	}
	sort.Strings(methods)
	return methods, nil
}

func (a *app) close(ctx context.Context) {
	a.mu.Lock()
	idle := a.idle
	a.idle = nil
	a.mu.Unlock()
	for _, in := range idle {
		_ = in.mod.Close(ctx)
	}
	if a.rt != nil {
		_ = a.rt.Close(ctx)
	}
	if a.cache != nil {
		_ = a.cache.Close(ctx)
	}
}
