package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
	"github.com/fleetbox/fleetbox/node"
	"github.com/fleetbox/fleetbox/node/governance"
)

// demoDstackCVM is a MOCK stand-in for one dstack CVM: its quotes are mock
// quotes whose RTMR0-2 are a fixed "OS" and whose RTMR3 is the replay of
// dstack's runtime events (app-id, compose-hash, instance-id, ...), and they
// come with that event log, as the dstack agent's do.
type demoDstackCVM struct {
	quote attest.MockQuote
	log   []byte
	// composeHash is the payload of its compose-hash event (hex).
	composeHash string
}

func newDemoDstackCVM(os attest.MockQuote, app string, instance byte) (*demoDstackCVM, error) {
	compose := sha256.Sum256([]byte("demo app-compose.json of " + app))
	appID := compose[:20]
	var events []eventlog.Event
	for _, ev := range []struct {
		name    string
		payload []byte
	}{
		{"system-preparing", nil}, {"app-id", appID}, {"compose-hash", compose[:]},
		{"instance-id", []byte{instance, 0xd5, 0x7a, 0xc4}}, {"boot-mr-done", nil},
		{"key-provider", []byte(`{"name":"kms","id":"demo"}`)}, {"system-ready", nil},
	} {
		events = append(events, eventlog.Event{RTMR: 3, Type: eventlog.EvRuntime, Name: ev.name, Payload: ev.payload,
			Digest: eventlog.RuntimeDigest(eventlog.EvRuntime, ev.name, ev.payload)})
	}
	log, err := eventlog.MarshalJSON(events)
	if err != nil {
		return nil, err
	}
	q := os
	q.RTMR[3] = eventlog.Replay(events)[3]
	return &demoDstackCVM{quote: q, log: log, composeHash: hex.EncodeToString(compose[:])}, nil
}

func (c *demoDstackCVM) GetQuote(_ context.Context, rd attest.ReportData) ([]byte, error) {
	return c.quote.Encode(rd), nil
}

func (c *demoDstackCVM) GetEvidence(ctx context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	q, _ := c.GetQuote(ctx, rd)
	return &attest.Evidence{Quote: q, EventLog: c.log}, nil
}

// Kind says MOCK: nothing backs these quotes.
func (c *demoDstackCVM) Kind() string { return "mock" }

// dstackStory shows fleetbox on Phala/dstack: RTMR3 differs per CVM
// (instance-id), so the namespace's policy pins the app's compose-hash
// event instead; two CVMs of the app are admitted, a CVM of another app is
// refused naming the event.
func (d *demo) dstackStory(a, b *demoNode) bool {
	ctx := d.ctx
	osImage := demoImage("dstack os")
	one, err1 := newDemoDstackCVM(osImage, "fleet-replica", 1)
	two, err2 := newDemoDstackCVM(osImage, "fleet-replica", 2)
	other, err3 := newDemoDstackCVM(osImage, "another app", 3)
	if err := errors.Join(err1, err2, err3); err != nil {
		d.check(false, "dstack CVMs: %v", err)
		return false
	}
	pol := demoPolicy(osImage)
	pol.AllowedRtmr3 = []string{attest.Wildcard}
	pol.Rtmr3Events = map[string][]string{"compose-hash": {one.composeHash}, "key-provider": {attest.Wildcard}}
	created, err := a.client.CreateNamespace(ctx)
	if err == nil {
		_, err = a.client.SetPolicy(ctx, created.ID, (*node.Policy)(pol))
	}
	if !d.check(err == nil, "dstack: namespace %s… pins the app's compose-hash event %s… (RTMR3 waived: it differs per CVM)", created.ID[:12], one.composeHash[:12]) {
		d.say("%v", err)
		return false
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	t0 := time.Now()
	start := func(name string, cvm *demoDstackCVM) (*demoNode, error) {
		n, err := d.startNode(name, func(c *node.Config) error {
			c.Fleet.QuoteSource = cvm
			var k [32]byte
			rand.Read(k[:])
			c.StoreKey, c.StoreKeySource = &k, "demo: in memory (on dstack: the KMS or --dstack-key)"
			return nil
		})
		if err == nil {
			err = errors.Join(d.connect(n, a), d.connect(n, b))
		}
		if err == nil {
			_, err = n.client.FleetJoin(ctx, created.ID)
		}
		return n, err
	}
	r1, err1 := start("dstack-cvm-1", one)
	r2, err2 := start("dstack-cvm-2", two)
	r3, err3 := start("dstack-other-app", other)
	if err := errors.Join(err1, err2, err3); err != nil {
		d.check(false, "dstack replicas: %v", err)
		return false
	}
	admitted := d.waitFor(20*time.Second, func() bool {
		s1, _ := r1.n.FleetStatus(ns)
		s2, _ := r2.n.FleetStatus(ns)
		return s1 != nil && s1.Admitted && s1.HasGroupKey && s2 != nil && s2.Admitted && s2.HasGroupKey
	})
	d.check(admitted && one.quote.RTMR[3] != two.quote.RTMR[3],
		"dstack: two CVMs of the app (instance-ids differ, so do their RTMR3s) admitted as ReadOnlyTee; their announces carried the event log, replayed to RTMR3 (%s)", time.Since(t0).Round(time.Millisecond))
	refused := d.waitFor(20*time.Second, func() bool {
		return counterValue(a.n.Metrics(), "fleet_announces_refused_total", attest.ReasonEventNotAllowed)+
			counterValue(b.n.Metrics(), "fleet_announces_refused_total", attest.ReasonEventNotAllowed) > 0
	})
	st, _ := r3.n.FleetStatus(ns)
	return d.check(refused && (st == nil || !st.Admitted), "dstack: a CVM of another app refused: rtmr3 event compose-hash %s… not in rtmr3Events.compose-hash (%s)",
		other.composeHash[:12], attest.ReasonEventNotAllowed)
}
