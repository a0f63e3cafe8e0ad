package kms_test

import (
	"context"
	"crypto/sha512"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/kms/client"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// bootEvents is a small RTMR1/RTMR2 event log: an image load and two
// UKI section contents. change, if set, replaces the .cmdline content.
func bootEvents(change string) []eventlog.Event {
	cmdline := "console=ttyS0"
	if change != "" {
		cmdline = change
	}
	ev := func(rtmr int, typ uint32, data string) eventlog.Event {
		return eventlog.Event{RTMR: rtmr, PCR: -1, Type: typ, Digest: sha512.Sum384([]byte(data)), Data: []byte(data)}
	}
	return []eventlog.Event{
		ev(1, eventlog.EvEFIBootServicesApplication, "uki"),
		ev(2, eventlog.EvIPL, ".cmdline"),
		ev(2, eventlog.EvIPL, cmdline),
	}
}

// A quote sent with its event log: a log that does not replay to the
// quote is refused as eventlog_mismatch; a log that does, of an image the
// policy does not admit, makes the refusal name the event that changed.
func TestGetKeyWithEventLog(t *testing.T) {
	expected := bootEvents("")
	want := eventlog.Replay(expected)
	pol := attest.Policy{
		AllowedMrtd: []string{goodMRTD.String()}, AllowedRtmr0: []string{goodRTMR[0].String()},
		AllowedRtmr1: []string{want[1].String()}, AllowedRtmr2: []string{want[2].String()},
		AllowedRtmr3: []string{goodRTMR[3].String()},
	}
	pj, _ := pol.Marshal()
	h := newHarness(t, harnessOpts{policy: pj, expectedEvents: expected})
	ctx := context.Background()
	get := func(events []eventlog.Event, quoted [4]attest.RTMR) error {
		t.Helper()
		log, err := eventlog.MarshalJSON(events)
		if err != nil {
			t.Fatal(err)
		}
		n := newNode(t, h, 1, goodMRTD)
		n.src = &attesttest.Source{Platform: h.plat, Options: attesttest.QuoteOptions{MRTD: goodMRTD, RTMR: quoted}}
		c, err := client.New(client.Config{URL: h.url, Identity: n.sk, Source: n.src, EventLog: log, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetKey(ctx)
		return err
	}
	regs := func(events []eventlog.Event) [4]attest.RTMR {
		r := eventlog.Replay(events)
		return [4]attest.RTMR{goodRTMR[0], r[1], r[2], goodRTMR[3]}
	}

	if err := get(expected, regs(expected)); err != nil {
		t.Fatalf("the admitted image with its log: %v", err)
	}
	changed := bootEvents("console=ttyS0 quiet")
	err := get(changed, regs(expected))
	if err == nil || !strings.Contains(err.Error(), "eventlog_mismatch") || !strings.Contains(err.Error(), "rtmr2: the log's 2 events replay to") ||
		!strings.Contains(err.Error(), `event diff: rtmr2: changed #2 EV_IPL "console=ttyS0 quiet"`) {
		t.Fatalf("a log that does not replay to the quote: %v", err)
	}
	err = get(changed, regs(changed))
	if err == nil || !strings.Contains(err.Error(), "measurement_policy_rejected") ||
		!strings.Contains(err.Error(), "not in allowedRtmr2") ||
		!strings.Contains(err.Error(), `event diff: rtmr2: changed #2 EV_IPL "console=ttyS0 quiet"`) {
		t.Fatalf("a changed image with its log: %v", err)
	}
	// The refusal's audit record holds the diff too.
	pg, _ := h.srv.AuditPage(0, 10)
	last := string(pg.Entries[len(pg.Entries)-1].Record)
	if !strings.Contains(last, "event diff: rtmr2: changed") {
		t.Fatalf("the audit record lacks the event diff: %s", last)
	}
}
