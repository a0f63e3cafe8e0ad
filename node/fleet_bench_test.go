package node

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node/governance"
)

// BenchmarkFleetJoin measures fleet-join latency on loopback: from the
// replica's fleet-join call (identity, topic, sync, announce with a test-CA
// quote) to admitted as ReadOnlyTee with the group key, over repeated joins
// of fresh replicas to one namespace with two verifiers. It reports p50 and
// p99 (targets: 300 ms and 200 ms).
//
//	go test ./node -run '^$' -bench FleetJoin -benchtime 100x
func BenchmarkFleetJoin(b *testing.B) {
	ctx := context.Background()
	tb := newFleetTestbed(b)
	prod := func(c *Config) {
		tb.fleetConfig(nil)(c)
		c.Fleet.AnnounceMinBackoff, c.Fleet.AnnounceMaxBackoff = 500*time.Millisecond, 30*time.Second // production defaults
	}
	a := startNodeWith(b, "a", newHome(b), prod)
	v := startNodeWith(b, "b", newHome(b), prod)
	connect(b, v, a)
	created, err := a.client.CreateNamespace(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	jv, _ := v.client.JoinNamespace(ctx, created.ID)
	a.client.AddMember(ctx, created.ID, "", MemberAddRequest{Member: jv.MemberKeys, Role: "Member", Capabilities: "MANAGE_MEMBERS"})
	a.client.SetPolicy(ctx, created.ID, tb.policy())
	waitConverged(b, "verifiers", ns, a, v)

	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		src := tb.source(b, tb.good)
		r := startNodeWith(b, "r", newHome(b), func(c *Config) {
			prod(c)
			c.Fleet.QuoteSource = src
		})
		connect(b, r, a)
		connect(b, r, v)
		b.StartTimer()
		t0 := time.Now()
		if _, err := r.client.FleetJoin(ctx, created.ID); err != nil {
			b.Fatal(err)
		}
		for {
			st, err := r.FleetStatus(ns)
			if err == nil && st.Admitted && st.HasGroupKey {
				break
			}
			if time.Since(t0) > 30*time.Second {
				b.Fatal("replica not admitted in 30 s")
			}
			time.Sleep(2 * time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		r.stop()
		b.StartTimer()
	}
	b.StopTimer()
	worst := 0
	for i := range lat {
		if lat[i] > lat[worst] {
			worst = i
		}
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.Logf("fleet-join latency over %d joins: p50 %v, p99 %v, max %v (test-CA quotes, full verification); the slowest was join %d", len(lat), pct(0.5), pct(0.99), lat[len(lat)-1], worst+1)
	b.Logf("announces refused by the verifiers, by reason: %v", refusedByReason(b, a, v))
}

// refusedByReason sums fleet_announces_refused_total{reason} over nodes.
func refusedByReason(t testing.TB, nodes ...*tnode) map[string]float64 {
	out := map[string]float64{}
	for _, n := range nodes {
		for _, m := range metricsNamed(t, n.reg, "fleet_announces_refused_total") {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
