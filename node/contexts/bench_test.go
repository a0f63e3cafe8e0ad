package contexts

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/contexts/apptest"
)

// benchMember is one member with fdatasync on, a kv context and a warm
// module.
func benchMember(b *testing.B) (*member, NamespaceID, ContextID) {
	b.Helper()
	m := &member{sync: true, path: filepath.Join(b.TempDir(), "store.db")}
	m.open(b)
	ns, _, err := m.gov.CreateNamespace(bg)
	if err != nil {
		b.Fatal(err)
	}
	app, err := m.ctx.Install(bg, apptest.Build(b, apptest.KV))
	if err != nil {
		b.Fatal(err)
	}
	res, err := m.ctx.Create(bg, ns, ns.Root(), app.ID, nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.ctx.Call(bg, ns, res.Context, "set", []byte(`{"key":"warm","value":"up"}`)); err != nil {
		b.Fatal(err)
	}
	return m, ns, res.Context
}

// BenchmarkCall: mutating kv calls on one node with a warm module, each
// executed, sealed, signed and persisted (its op and state in one store
// transaction, fdatasync on). Target: at least 1,000 calls/s.
func BenchmarkCall(b *testing.B) {
	m, ns, c := benchMember(b)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if _, err := m.ctx.Call(bg, ns, c, "set", fmt.Appendf(nil, `{"key":"k%d","value":"v%d"}`, i, i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
}

// BenchmarkQuery: read-only kv calls against a context of 1,000 keys.
// Target: p50 under 1 ms.
func BenchmarkQuery(b *testing.B) {
	m, ns, c := benchMember(b)
	for i := range 1000 {
		if _, err := m.ctx.Call(bg, ns, c, "set", fmt.Appendf(nil, `{"key":"k%d","value":"v%d"}`, i, i)); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		res, err := m.ctx.Query(bg, ns, c, "get", fmt.Appendf(nil, `{"key":"k%d"}`, i%1000))
		lat = append(lat, time.Since(t0))
		if err != nil || res.OutputText == "" {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	at := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.5), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// BenchmarkFirstCallAfterRestart: the node restarts (store, governance and
// contexts reopened, the compilation cache on disk warm) and answers its
// first call: the application is read from the store, its compiled code
// from the cache, then instantiated and called. Target: under 200 ms.
func BenchmarkFirstCallAfterRestart(b *testing.B) {
	m, ns, c := benchMember(b)
	var first, total time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		m.restart(b)
		t1 := time.Now()
		if _, err := m.ctx.Query(bg, ns, c, "get", []byte(`{"key":"warm"}`)); err != nil {
			b.Fatal(err)
		}
		first += time.Since(t1)
		total += time.Since(t0)
	}
	b.ReportMetric(float64(first.Microseconds())/1000/float64(b.N), "ms/first-call")
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/restart+first-call")
}

// BenchmarkCallConcurrent: as BenchmarkCall with 8 concurrent callers,
// whose calls are group-committed (one fdatasync per batch).
func BenchmarkCallConcurrent(b *testing.B) {
	m, ns, c := benchMember(b)
	var n atomic.Int64
	b.SetParallelism(4) // 4 x GOMAXPROCS callers
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if _, err := m.ctx.Call(bg, ns, c, "set", fmt.Appendf(nil, `{"key":"k%d","value":"v%d"}`, i, i)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
}
