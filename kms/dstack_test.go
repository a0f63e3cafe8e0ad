package kms_test

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/attest/dstack/dstacktest"
	"github.com/fleetbox/fleetbox/kms/client"
)

// TestDstackKeys: the KMS and its nodes run as dstack apps. Nodes on two
// CVMs of the pinned app get keys, though their RTMR3 values differ; a node
// of another app is refused naming compose-hash; the audit records carry
// the events that were checked; a node checks the KMS's own quote and
// event log against a policy that pins the KMS app.
func TestDstackKeys(t *testing.T) {
	ctx := context.Background()
	app := dstacktest.App{AppID: [20]byte{0xa1}, ComposeHash: [32]byte{0xc1}, InstanceID: [20]byte{1},
		KeyProvider: []byte(`{"name":"kms"}`), MRTD: goodMRTD}
	second := app
	second.InstanceID = [20]byte{2}
	other := app
	other.ComposeHash = [32]byte{0xc2}
	kmsApp := dstacktest.App{AppID: [20]byte{0xb1}, ComposeHash: [32]byte{0xcc}, InstanceID: [20]byte{9}, MRTD: goodMRTD}

	_, plat, coll := testCA(t)
	kmsAgent := dstacktest.Start(t, plat, kmsApp)
	pj, _ := app.Policy().Marshal()
	h := newHarness(t, harnessOpts{policy: pj, kmsSource: kmsAgent.Client().Source()})
	verifier := attest.NewVerifier(h.ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch))

	get := func(seed byte, a dstacktest.App, trust *attest.Policy) error {
		t.Helper()
		agent := dstacktest.Start(t, plat, a)
		n := newNode(t, h, seed, a.MRTD)
		c, err := client.New(client.Config{URL: h.url, Identity: n.sk, Source: agent.Client().Source(), MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		if trust != nil {
			if _, err := c.CheckKMS(ctx, verifier, trust); err != nil {
				return err
			}
		}
		_, err = c.GetKey(ctx)
		return err
	}
	if err := get(1, app, kmsApp.Policy()); err != nil {
		t.Fatalf("first CVM of the app: %v", err)
	}
	if err := get(2, second, nil); err != nil {
		t.Fatalf("second CVM of the app: %v", err)
	}
	err := get(3, other, nil)
	if err == nil || !strings.Contains(err.Error(), "measurement_policy_rejected") || !strings.Contains(err.Error(), "rtmr3 event compose-hash c2") {
		t.Fatalf("another app: %v", err)
	}
	// A KMS that is not the pinned KMS app is not trusted.
	err = get(4, app, other.Policy())
	if err == nil || !strings.Contains(err.Error(), "compose-hash") {
		t.Fatalf("a KMS of another app was trusted: %v", err)
	}

	// A KMS whose log was changed after its quote was made (claiming the
	// pinned app's compose hash) is not trusted either.
	kmsAgent.Tamper = func(evs []dstacktest.Event) []dstacktest.Event {
		for i := range evs {
			if evs[i].Event == "compose-hash" {
				evs[i].EventPayload = hex.EncodeToString(other.ComposeHash[:])
			}
		}
		return evs
	}
	err = get(5, app, other.Policy())
	if err == nil || !strings.Contains(err.Error(), "its event log") || !strings.Contains(err.Error(), "compose-hash") {
		t.Fatalf("a KMS with a forged event log was trusted: %v", err)
	}
	kmsAgent.Tamper = nil

	pg, _ := h.srv.AuditPage(0, 10)
	var grants, refusals int
	for _, e := range pg.Entries {
		rec := string(e.Record)
		if !strings.Contains(rec, `"rtmr3Events":{`) || !strings.Contains(rec, `"instance-id":["0`) {
			t.Fatalf("audit record without the checked events: %s", rec)
		}
		switch {
		case strings.Contains(rec, `"decision":"granted"`):
			grants++
		case strings.Contains(rec, `"compose-hash":["c2`):
			refusals++
		}
	}
	if grants != 2 || refusals != 1 {
		t.Fatalf("%d grants and %d refusals of another app audited, want 2 and 1", grants, refusals)
	}
}
