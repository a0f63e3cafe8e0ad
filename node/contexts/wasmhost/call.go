package wasmhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
)

// StateReader is the context's key-value state as it was before the call.
type StateReader interface {
	Get(key string) ([]byte, bool)
}

// Request is one call.
type Request struct {
	Context [32]byte
	Caller  [32]byte
	Method  string
	Input   []byte
	// ReadOnly makes the call a query: writes end it with ErrQueryWrite.
	ReadOnly bool
}

// Write is one key the call set (Delete false) or removed (Delete true).
type Write struct {
	Key    []byte `cbor:"1,keyasint" json:"key"`
	Value  []byte `cbor:"2,keyasint,omitempty" json:"value,omitempty"`
	Delete bool   `cbor:"3,keyasint,omitempty" json:"delete,omitempty"`
}

// Event is what emit produced.
type Event struct {
	Kind string `json:"kind"`
	Data []byte `json:"data"`
}

// Result is a successful call's outcome. Writes are sorted by key, one per
// key, and are not applied: the caller decides (node/contexts).
type Result struct {
	Output []byte
	Writes []Write
	Logs   []string
	Events []Event
}

// callState is the per-call state the host functions see (through the
// call's context.Context).
type callState struct {
	req        *Request
	lim        *Limits
	state      StateReader
	writes     map[string]*Write
	writeBytes int
	output     []byte
	failMsg    *string
	logs       []string
	events     []Event
	logBytes   int
	err        error // the first limit violation
}

type callKey struct{}

func stateOf(ctx context.Context) *callState {
	cs, _ := ctx.Value(callKey{}).(*callState)
	if cs == nil {
		abort(ErrTrap, "a fleetbox host function was called outside a call (during initialisation?)")
	}
	return cs
}

// violate records a limit violation and ends the call.
func (cs *callState) violate(err error, format string, a ...any) {
	e := fmt.Errorf("%w: "+format, append([]any{err}, a...)...)
	if cs.err == nil {
		cs.err = e
	}
	panic(&limitError{err: e})
}

func read(m api.Module, ptr, n uint32) []byte {
	b, ok := m.Memory().Read(ptr, n)
	if !ok {
		abort(ErrBadPointer, "%d bytes at %#x", n, ptr)
	}
	return b
}

func write(m api.Module, ptr uint32, b []byte) {
	if !m.Memory().Write(ptr, b) {
		abort(ErrBadPointer, "%d bytes at %#x", len(b), ptr)
	}
}

func (cs *callState) key(m api.Module, ptr, n uint32) string {
	if n == 0 || int(n) > cs.lim.MaxKey {
		cs.violate(ErrKeyTooLarge, "%d bytes, limit %d", n, cs.lim.MaxKey)
	}
	return string(read(m, ptr, n))
}

func (cs *callState) get(k string) ([]byte, bool) {
	if w, ok := cs.writes[k]; ok {
		return w.Value, !w.Delete
	}
	return cs.state.Get(k)
}

func (cs *callState) set(k string, v []byte, del bool) {
	if cs.req.ReadOnly {
		cs.violate(ErrQueryWrite, "%s", map[bool]string{true: "storage_remove", false: "storage_write"}[del])
	}
	old, had := cs.writes[k]
	if !had && len(cs.writes) >= cs.lim.MaxWrites {
		cs.violate(ErrTooManyWrites, "more than %d keys", cs.lim.MaxWrites)
	}
	size := len(k) + len(v)
	if had {
		size -= len(old.Key) + len(old.Value)
	}
	if cs.writeBytes+size > cs.lim.MaxWriteBytes {
		cs.violate(ErrTooManyWrites, "more than %d bytes of keys and values", cs.lim.MaxWriteBytes)
	}
	cs.writeBytes += size
	cs.writes[k] = &Write{Key: []byte(k), Value: bytes.Clone(v), Delete: del}
}

func (cs *callState) addLog(n int) {
	if cs.logBytes+n > cs.lim.MaxLogBytes || len(cs.logs)+len(cs.events) >= 256 {
		cs.violate(ErrLogTooLarge, "more than %d bytes or 256 entries", cs.lim.MaxLogBytes)
	}
	cs.logBytes += n
}

var (
	i32 = api.ValueTypeI32
)

type hostFn struct {
	name    string
	params  []api.ValueType
	results []api.ValueType
	fn      api.GoModuleFunc
}

// hostFns is the ABI's implementation; abi.go documents it.
var hostFns = []hostFn{
	{"input_size", nil, []api.ValueType{i32}, func(ctx context.Context, m api.Module, s []uint64) {
		s[0] = uint64(len(stateOf(ctx).req.Input))
	}},
	{"input_read", []api.ValueType{i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		write(m, uint32(s[0]), stateOf(ctx).req.Input)
	}},
	{"storage_read", []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		v, ok := cs.get(cs.key(m, uint32(s[0]), uint32(s[1])))
		if !ok {
			s[0] = uint64(uint32(0xffffffff)) // -1
			return
		}
		if len(v) <= int(uint32(s[3])) {
			write(m, uint32(s[2]), v)
		}
		s[0] = uint64(len(v))
	}},
	{"storage_has", []api.ValueType{i32, i32}, []api.ValueType{i32}, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		_, ok := cs.get(cs.key(m, uint32(s[0]), uint32(s[1])))
		s[0] = b2u(ok)
	}},
	{"storage_write", []api.ValueType{i32, i32, i32, i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		k := cs.key(m, uint32(s[0]), uint32(s[1]))
		if n := int(uint32(s[3])); n > cs.lim.MaxValue {
			cs.violate(ErrValueTooLarge, "%d bytes, limit %d", n, cs.lim.MaxValue)
		}
		cs.set(k, read(m, uint32(s[2]), uint32(s[3])), false)
	}},
	{"storage_remove", []api.ValueType{i32, i32}, []api.ValueType{i32}, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		k := cs.key(m, uint32(s[0]), uint32(s[1]))
		_, had := cs.get(k)
		cs.set(k, nil, true)
		s[0] = b2u(had)
	}},
	{"value_return", []api.ValueType{i32, i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		if n := int(uint32(s[1])); n > cs.lim.MaxOutput {
			cs.violate(ErrOutputTooLarge, "%d bytes, limit %d", n, cs.lim.MaxOutput)
		}
		cs.output = bytes.Clone(read(m, uint32(s[0]), uint32(s[1])))
		if cs.output == nil {
			cs.output = []byte{}
		}
	}},
	{"fail", []api.ValueType{i32, i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		n := min(int(uint32(s[1])), 1024)
		msg := strings.ToValidUTF8(string(read(m, uint32(s[0]), uint32(n))), "?")
		cs.failMsg = &msg
	}},
	{"log", []api.ValueType{i32, i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		cs.addLog(int(uint32(s[1])))
		cs.logs = append(cs.logs, strings.ToValidUTF8(string(read(m, uint32(s[0]), uint32(s[1]))), "?"))
	}},
	{"emit", []api.ValueType{i32, i32, i32, i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		cs := stateOf(ctx)
		cs.addLog(int(uint32(s[1])) + int(uint32(s[3])))
		kind := strings.ToValidUTF8(string(read(m, uint32(s[0]), uint32(s[1]))), "?")
		cs.events = append(cs.events, Event{Kind: kind, Data: bytes.Clone(read(m, uint32(s[2]), uint32(s[3])))})
	}},
	{"caller", []api.ValueType{i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		write(m, uint32(s[0]), stateOf(ctx).req.Caller[:])
	}},
	{"context_id", []api.ValueType{i32}, nil, func(ctx context.Context, m api.Module, s []uint64) {
		write(m, uint32(s[0]), stateOf(ctx).req.Context[:])
	}},
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func hostModule(rt wazero.Runtime) wazero.HostModuleBuilder {
	b := rt.NewHostModuleBuilder(ABIModule)
	for _, f := range hostFns {
		b.NewFunctionBuilder().WithGoModuleFunction(f.fn, f.params, f.results).Export(f.name)
	}
	return b
}

// instance is one instantiated module with its post-initialisation memory
// and its per-call clock and random source.
type instance struct {
	mod  api.Module
	snap []byte
	now  int64 // monotonic clock, ns since the call began
	rng  *rand.ChaCha8
	out  boundedBuffer // the module's stdout and stderr
}

func (in *instance) reset(seed [32]byte) {
	in.now = 0
	in.rng = rand.NewChaCha8(seed)
	in.out.Reset()
}

func (in *instance) Read(p []byte) (int, error) { return in.rng.Read(p) }

// boundedBuffer keeps the last 4 KiB written.
type boundedBuffer struct{ b []byte }

func (w *boundedBuffer) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	if len(w.b) > 4096 {
		w.b = append(w.b[:0], w.b[len(w.b)-4096:]...)
	}
	return len(p), nil
}
func (w *boundedBuffer) Reset()         { w.b = w.b[:0] }
func (w *boundedBuffer) String() string { return string(w.b) }

// fixedWalltime is what the wall clock reads in every call: 2000-01-01T00:00:00Z.
const fixedWalltime = 946684800

var initSeed = sha256.Sum256([]byte("fleetbox/v1/init-random"))

func (a *app) newInstance(ctx context.Context, lim *Limits) (*instance, error) {
	in := &instance{}
	in.reset(initSeed)
	cfg := wazero.NewModuleConfig().WithName("").WithStartFunctions("_initialize").
		WithWalltime(func() (int64, int32) { return fixedWalltime, 0 }, 1).
		WithNanotime(func() int64 { in.now += 1e6; return in.now }, 1).
		WithNanosleep(func(int64) {}).WithOsyield(func() {}).
		WithRandSource(in).WithStdout(&in.out).WithStderr(&in.out)
	ictx, cancel := context.WithTimeout(ctx, lim.CallTimeout)
	defer cancel()
	mod, err := a.rt.InstantiateModule(ictx, a.mod, cfg)
	if err != nil {
		return nil, classify(ctx, err, nil, in, lim, "initialising the module")
	}
	mem := mod.Memory()
	buf, _ := mem.Read(0, mem.Size())
	in.mod, in.snap = mod, bytes.Clone(buf)
	return in, nil
}

// restore puts the instance back into its post-initialisation state.
func (in *instance) restore() {
	mem := in.mod.Memory()
	buf, _ := mem.Read(0, mem.Size())
	copy(buf, in.snap)
	clear(buf[len(in.snap):])
}

func (a *app) acquire(ctx context.Context, lim *Limits) (*instance, error) {
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.mu.Lock()
	var in *instance
	if n := len(a.idle); n > 0 {
		in, a.idle = a.idle[n-1], a.idle[:n-1]
	}
	a.mu.Unlock()
	if in != nil {
		in.restore()
		return in, nil
	}
	in, err := a.newInstance(ctx, lim)
	if err != nil {
		<-a.slots
		return nil, err
	}
	return in, nil
}

func (a *app) release(ctx context.Context, in *instance, healthy bool) {
	defer func() { <-a.slots }()
	if healthy && !in.mod.IsClosed() && int(in.mod.Memory().Size()) <= len(in.snap)+MaxRetainedGrowth {
		a.mu.Lock()
		if len(a.idle) < maxIdle {
			a.idle = append(a.idle, in)
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
	}
	_ = in.mod.Close(ctx)
}

func callSeed(r *Request) [32]byte {
	h := sha256.New()
	h.Write([]byte("fleetbox/v1/call-random\x00"))
	h.Write(r.Context[:])
	h.Write(r.Caller[:])
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(r.Method))))
	h.Write([]byte(r.Method))
	h.Write(r.Input)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// Methods lists a loaded application's methods.
func (h *Host) Methods(id ApplicationID) ([]string, bool) {
	a := h.app(id)
	if a == nil {
		return nil, false
	}
	return slices.Clone(a.info.Methods), true
}

// ErrNotLoaded means the application is not loaded (Load it first).
var ErrNotLoaded = errors.New("wasmhost: application not loaded")

// Call runs one method against state. It never changes state: a successful
// Result lists the writes. A failed call returns an error wrapping one of
// the named errors, or ctx's error if ctx ended first.
func (h *Host) Call(ctx context.Context, id ApplicationID, req *Request, state StateReader) (*Result, error) {
	select {
	case <-h.closed:
		return nil, ErrClosed
	default:
	}
	a := h.app(id)
	if a == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotLoaded, id)
	}
	if !a.methods[req.Method] {
		return nil, fmt.Errorf("%w: %q (application %s has %v)", ErrNoMethod, req.Method, id.String()[:12], a.info.Methods)
	}
	if len(req.Input) > h.lim.MaxInput {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInputTooLarge, len(req.Input), h.lim.MaxInput)
	}
	in, err := a.acquire(ctx, &h.lim)
	if err != nil {
		return nil, err
	}
	in.reset(callSeed(req))
	cs := &callState{req: req, lim: &h.lim, state: state, writes: map[string]*Write{}}
	cctx, cancel := context.WithTimeout(context.WithValue(ctx, callKey{}, cs), h.lim.CallTimeout)
	_, err = in.mod.ExportedFunction(req.Method).Call(cctx)
	cancel()
	if err != nil {
		a.release(ctx, in, false)
		return nil, classify(ctx, err, cs, in, &h.lim, "calling "+req.Method)
	}
	a.release(ctx, in, true)
	if cs.failMsg != nil {
		return nil, fmt.Errorf("%w: %s", ErrRefused, *cs.failMsg)
	}
	res := &Result{Output: cs.output, Logs: cs.logs, Events: cs.events}
	for _, w := range cs.writes {
		res.Writes = append(res.Writes, *w)
	}
	slices.SortFunc(res.Writes, func(x, y Write) int { return bytes.Compare(x.Key, y.Key) })
	return res, nil
}

// classify names why a call (or initialisation) failed.
func classify(ctx context.Context, err error, cs *callState, in *instance, lim *Limits, what string) error {
	if cs != nil && cs.err != nil {
		return cs.err
	}
	var le *limitError
	if errors.As(err, &le) {
		return le.err
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			if ctx.Err() == nil {
				return fmt.Errorf("%w: %s ran longer than %s", ErrTimeLimit, what, lim.CallTimeout)
			}
			return ctx.Err()
		case sys.ExitCodeContextCanceled:
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	out := in.out.String()
	if strings.Contains(out, "out of memory") {
		return fmt.Errorf("%w: %s (limit %d pages of 64 KiB)", ErrMemoryLimit, what, lim.MemoryPages)
	}
	msg := err.Error()
	if line := firstPanicLine(out); line != "" {
		msg += ": " + line
	}
	return fmt.Errorf("%w: %s: %s", ErrTrap, what, firstLine(msg))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// firstPanicLine picks Go's "panic: ..." or "fatal error: ..." line.
func firstPanicLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") {
			return l
		}
	}
	return ""
}
