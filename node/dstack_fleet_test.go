package node

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/attest/dstack/dstacktest"
	"github.com/fleetbox/fleetbox/node/governance"
)

// dstackApps are CVMs of one dstack app on two machines, and a CVM of
// another app (another compose hash) on the same OS.
func dstackApps() (one, two, other dstacktest.App) {
	one = dstacktest.App{
		AppID: [20]byte{0xa9}, ComposeHash: [32]byte{0xc1}, InstanceID: [20]byte{0x01},
		KeyProvider: []byte(`{"name":"kms","id":"test"}`), MRTD: attest.MRTD{0xd5},
	}
	two = one
	two.InstanceID = [20]byte{0x02}
	other = one
	other.ComposeHash = [32]byte{0xc2}
	other.InstanceID = [20]byte{0x03}
	return one, two, other
}

// dstackNamespace starts an admin node with a namespace whose policy pins
// app (App.Policy).
func dstackNamespace(t *testing.T, tb *fleetTestbed, app dstacktest.App) (*tnode, string, governance.NamespaceID) {
	t.Helper()
	a := startNodeWith(t, "a", newHome(t), tb.fleetConfig(nil))
	created, err := a.client.CreateNamespace(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	if _, err := a.client.SetPolicy(context.Background(), created.ID, (*Policy)(app.Policy())); err != nil {
		t.Fatal(err)
	}
	return a, created.ID, ns
}

// TestDstackReplicas: two CVMs of one dstack app, with different
// instance-ids and so different RTMR3 values, are both admitted to a
// namespace whose policy pins the compose hash; a CVM of another app is
// refused, naming the compose-hash event. The quotes and their event logs
// come from fake dstack agents on unix sockets.
func TestDstackReplicas(t *testing.T) {
	ctx := context.Background()
	tb := newFleetTestbed(t)
	one, two, other := dstackApps()
	a, nsID, ns := dstackNamespace(t, tb, one)

	replica := func(name string, app dstacktest.App) (*tnode, *dstacktest.Agent) {
		agent := dstacktest.Start(t, tb.ca.NewPlatform(t, attesttest.DefaultPlatform), app)
		r := startNodeWith(t, name, newHome(t), tb.fleetConfig(agent.Client().Source()))
		connect(t, r, a)
		if _, err := r.client.FleetJoin(ctx, nsID); err != nil {
			t.Fatal(err)
		}
		return r, agent
	}
	r1, _ := replica("r1", one)
	r2, _ := replica("r2", two)
	r3, agent3 := replica("r3", other)

	for _, r := range []*tnode{r1, r2} {
		waitFor(t, "dstack replica admitted", func() bool {
			st, _ := r.FleetStatus(ns)
			return st != nil && st.Admitted && st.HasGroupKey
		})
	}
	waitFor(t, "the other app refused by its compose hash", func() bool {
		return counter(t, a.reg, "fleet_announces_refused_total", attest.ReasonEventNotAllowed) > 0
	})
	if agent3.Quotes.Load() == 0 {
		t.Fatal("the other app's replica never asked its agent for a quote")
	}
	if st, _ := r3.FleetStatus(ns); st != nil && st.Admitted {
		t.Fatal("a replica of another app was admitted")
	}

	// The admissions record the events that were checked: the same compose
	// hash, two instance-ids, and RTMR3 values that differ.
	reps, err := a.eng.Replicas(ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 2 {
		t.Fatalf("%d replicas recorded, want 2", len(reps))
	}
	instances := map[string]bool{}
	for _, rep := range reps {
		adm := rep.Admission
		if !adm.EventLogChecked || rep.PolicyErr != nil {
			t.Fatalf("admission without a checked log or failing the policy: %+v %v", adm, rep.PolicyErr)
		}
		ev := attest.Rtmr3EventMap(adm.Rtmr3Events)
		if len(ev["compose-hash"]) != 1 || !strings.HasPrefix(ev["compose-hash"][0], "c1") {
			t.Fatalf("recorded compose-hash %v", ev["compose-hash"])
		}
		instances[ev["instance-id"][0]] = true
	}
	if len(instances) != 2 || reps[0].Admission.RTMR[3] == reps[1].Admission.RTMR[3] {
		t.Fatalf("want two instances with different RTMR3 values: %v", instances)
	}
}

// A forged log (an event changed after the quote was made) is refused as
// eventlog_mismatch and never admits.
func TestDstackForgedLogRefused(t *testing.T) {
	ctx := context.Background()
	tb := newFleetTestbed(t)
	one, _, _ := dstackApps()
	a, nsID, ns := dstackNamespace(t, tb, one)
	agent := dstacktest.Start(t, tb.ca.NewPlatform(t, attesttest.DefaultPlatform), one)
	// The log claims another compose hash than the one the quote measured.
	agent.Tamper = func(evs []dstacktest.Event) []dstacktest.Event {
		for i := range evs {
			if evs[i].Event == "compose-hash" {
				evs[i].EventPayload = strings.Repeat("c2", 32)
			}
		}
		return evs
	}
	r := startNodeWith(t, "r", newHome(t), tb.fleetConfig(agent.Client().Source()))
	connect(t, r, a)
	if _, err := r.client.FleetJoin(ctx, nsID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "forged log refused", func() bool {
		return counter(t, a.reg, "fleet_announces_refused_total", attest.ReasonEventLogMismatch) > 0
	})
	if st, _ := r.FleetStatus(ns); st != nil && st.Admitted {
		t.Fatal("a replica with a forged event log was admitted")
	}
}
