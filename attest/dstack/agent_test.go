package dstack_test

import (
	"context"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/attest/dstack"
	"github.com/fleetbox/fleetbox/attest/dstack/dstacktest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

func TestParseQuoteResponse(t *testing.T) {
	q := hex.EncodeToString(make([]byte, 700))
	for name, c := range map[string]struct {
		body    string
		wantErr string
		log     bool
	}{
		"quote and log":       {`{"quote":"` + q + `","event_log":"[]","report_data":"00","vm_config":"{}"}`, "", true},
		"0x prefix, no log":   {`{"quote":"0x` + q + `"}`, "", false},
		"not hex":             {`{"quote":"zz"}`, "not hex", false},
		"empty quote":         {`{"quote":""}`, "not hex", false},
		"oversize quote":      {`{"quote":"` + strings.Repeat("00", attest.MaxQuoteSize+1) + `"}`, "not hex of at most", false},
		"oversize log":        {`{"quote":"` + q + `","event_log":"` + strings.Repeat("a", dstack.MaxEventLog+1) + `"}`, "exceeds", false},
		"duplicate quote":     {`{"quote":"` + q + `","quote":"00"}`, "not the expected JSON", false},
		"quote in other case": {`{"Quote":"` + q + `"}`, "not hex", false},
		"not json":            {`quote=00`, "not the expected JSON", false},
	} {
		t.Run(name, func(t *testing.T) {
			ev, err := dstack.ParseQuoteResponse([]byte(c.body))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatal(err)
			case c.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errors.Is(err, dstack.ErrAgent) {
					t.Fatalf("got %v, want an ErrAgent naming %q", err, c.wantErr)
				}
				return
			}
			if (ev.EventLog != nil) != c.log || len(ev.Quote) != 700 {
				t.Fatalf("evidence %d bytes, log %q", len(ev.Quote), ev.EventLog)
			}
		})
	}
}

func FuzzParseQuoteResponse(f *testing.F) {
	f.Add([]byte(`{"quote":"00ff","event_log":"[]"}`))
	f.Add([]byte(`{"quote":"0x00","quote":"01"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := dstack.ParseQuoteResponse(b)
		if err != nil {
			return
		}
		if len(ev.Quote) == 0 || len(ev.Quote) > attest.MaxQuoteSize || len(ev.EventLog) > dstack.MaxEventLog {
			t.Fatalf("accepted evidence out of bounds: %d, %d", len(ev.Quote), len(ev.EventLog))
		}
	})
}

// The agent client against a fake agent: quotes bind the caller's
// report_data and come with a log that replays to them; keys are the same
// for every instance of an app and differ per path and per app.
func TestAgentAgainstFake(t *testing.T) {
	ctx := context.Background()
	ca := attesttest.NewCA(t)
	plat := ca.NewPlatform(t, attesttest.DefaultPlatform)
	app := dstacktest.App{AppID: [20]byte{1}, ComposeHash: [32]byte{2}, InstanceID: [20]byte{3}}
	a := dstacktest.Start(t, plat, app).Client()
	var rd attest.ReportData
	rd[5] = 9
	ev, err := a.Source().GetEvidence(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	q, err := attest.ParseQuote(ev.Quote)
	if err != nil || q.ReportData != rd {
		t.Fatalf("quote: %v", err)
	}
	v := &attest.Verdict{Quote: q}
	if _, err := eventlog.Bind(ev.EventLog, v); err != nil || len(v.Rtmr3Events) != 7 {
		t.Fatalf("binding the agent's log: %v (%d events)", err, len(v.Rtmr3Events))
	}

	second := app
	second.InstanceID = [20]byte{4}
	b := dstacktest.Start(t, plat, second).Client()
	otherApp := app
	otherApp.AppID = [20]byte{7}
	c := dstacktest.Start(t, plat, otherApp).Client()
	k := func(ag *dstack.Agent, path string) [32]byte {
		t.Helper()
		key, err := ag.DeriveKey(ctx, path, "test", "label")
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	if k(a, "p") != k(b, "p") {
		t.Fatal("two instances of one app derived different keys")
	}
	if k(a, "p") == k(a, "q") || k(a, "p") == k(c, "p") {
		t.Fatal("keys do not depend on path and app")
	}
	if _, err := dstack.New(filepath.Join(t.TempDir(), "none.sock")).GetQuote(ctx, rd); !errors.Is(err, dstack.ErrAgent) {
		t.Fatalf("no agent: %v", err)
	}
}
