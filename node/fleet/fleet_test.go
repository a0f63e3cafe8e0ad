package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

type fakeView struct {
	policy  *attest.Policy
	members map[[32]byte]bool
	used    map[attest.QuoteHash]bool
	heads   map[[32]byte]time.Duration
}

func (f *fakeView) Policy() *attest.Policy            { return f.policy }
func (f *fakeView) IsMember(m [32]byte) bool          { return f.members[m] }
func (f *fakeView) QuoteUsed(h attest.QuoteHash) bool { return f.used[h] }
func (f *fakeView) HeadAge(h [32]byte) (time.Duration, bool) {
	a, ok := f.heads[h]
	return a, ok
}

var (
	testNS   = [32]byte{0x5a}
	headNow  = [32]byte{0x01}
	headOld  = [32]byte{0x02}
	goodMRTD = attest.MRTD{0xaa}
	goodRTMR = [4]attest.RTMR{{0x10}, {0x11}, {0x12}, {0x13}}
)

func policyFor(mrtd attest.MRTD, rtmr [4]attest.RTMR) *attest.Policy {
	return &attest.Policy{
		AllowedMrtd:  []string{mrtd.String()},
		AllowedRtmr0: []string{rtmr[0].String()}, AllowedRtmr1: []string{rtmr[1].String()},
		AllowedRtmr2: []string{rtmr[2].String()}, AllowedRtmr3: []string{attest.Wildcard},
	}
}

type fixture struct {
	ca      *attesttest.CA
	src     *attesttest.Source
	checker *Checker
	view    *fakeView
	id      ed25519.PrivateKey
}

func newFixture(t *testing.T, status attest.TcbStatus) *fixture {
	ca := attesttest.NewCA(t)
	coll := ca.Collateral(t, attesttest.CollateralOptions{Levels: attesttest.LevelsFor(status)})
	_, id, _ := ed25519.GenerateKey(nil)
	return &fixture{
		ca:      ca,
		src:     &attesttest.Source{Platform: ca.NewPlatform(t, attesttest.DefaultPlatform), Options: attesttest.QuoteOptions{MRTD: goodMRTD, RTMR: goodRTMR}},
		checker: &Checker{Verifier: attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch)), Window: time.Minute},
		view: &fakeView{
			policy:  policyFor(goodMRTD, goodRTMR),
			members: map[[32]byte]bool{}, used: map[attest.QuoteHash]bool{},
			heads: map[[32]byte]time.Duration{headNow: 0, headOld: 10 * time.Minute},
		},
		id: id,
	}
}

func (f *fixture) announce(t *testing.T, src attest.Source, head [32]byte) *Announce {
	a, err := NewAnnounce(context.Background(), src, testNS, f.id, [32]byte{0xee}, head)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCheckAdmits(t *testing.T) {
	f := newFixture(t, attest.TcbUpToDate)
	a := f.announce(t, f.src, headNow)
	adm, err := f.checker.Check(context.Background(), testNS, a, f.view)
	if err != nil {
		t.Fatal(err)
	}
	if adm.Member != a.Member || adm.Agreement != a.Agreement || adm.MRTD != goodMRTD || adm.RTMR != goodRTMR || adm.TcbStatus != attest.TcbUpToDate || adm.Mock {
		t.Fatalf("admission %+v", adm)
	}
	q, _ := attest.ParseQuote(a.Quote)
	if adm.QuoteHash != q.Hash {
		t.Fatal("admission does not record the quote hash")
	}
	if err := Recheck(f.view.policy, adm); err != nil {
		t.Fatalf("recheck of an admitted announce: %v", err)
	}
}

func TestCheckRefusals(t *testing.T) {
	ctx := context.Background()
	cases := map[string]struct {
		status attest.TcbStatus
		setup  func(t *testing.T, f *fixture) *Announce
		want   []Reason
	}{
		"wrong namespace": {setup: func(t *testing.T, f *fixture) *Announce {
			a := f.announce(t, f.src, headNow)
			a.Namespace[0] ^= 1
			return a
		}, want: []Reason{ReasonWrongNamespace}},
		"forged signature": {setup: func(t *testing.T, f *fixture) *Announce {
			a := f.announce(t, f.src, headNow)
			a.Agreement[0] ^= 1 // changes a signed field
			return a
		}, want: []Reason{ReasonBadSignature}},
		"unknown head": {setup: func(t *testing.T, f *fixture) *Announce {
			return f.announce(t, f.src, [32]byte{0x99})
		}, want: []Reason{ReasonUnknownHead}},
		"stale head": {setup: func(t *testing.T, f *fixture) *Announce {
			return f.announce(t, f.src, headOld)
		}, want: []Reason{ReasonStaleNonce}},
		"already a member": {setup: func(t *testing.T, f *fixture) *Announce {
			a := f.announce(t, f.src, headNow)
			f.view.members[a.Member] = true
			return a
		}, want: []Reason{ReasonAlreadyMember}},
		"no policy": {setup: func(t *testing.T, f *fixture) *Announce {
			f.view.policy = nil
			return f.announce(t, f.src, headNow)
		}, want: []Reason{ReasonNoPolicy}},
		"quote from an untrusted CA": {setup: func(t *testing.T, f *fixture) *Announce {
			other := attesttest.NewCA(t)
			src := &attesttest.Source{Platform: other.NewPlatform(t, attesttest.DefaultPlatform), Options: f.src.Options}
			return f.announce(t, src, headNow)
		}, want: []Reason{ReasonAttestationInvalid}},
		"quote bound to another key": {setup: func(t *testing.T, f *fixture) *Announce {
			a := f.announce(t, f.src, headNow)
			// Re-sign the same announce (same quote) with another identity.
			_, other, _ := ed25519.GenerateKey(nil)
			copy(a.Member[:], other.Public().(ed25519.PublicKey))
			msg, _ := a.signedBytes()
			a.Signature = ed25519.Sign(other, msg)
			return a
		}, want: []Reason{ReasonBindingMismatch}},
		"quote replayed": {setup: func(t *testing.T, f *fixture) *Announce {
			a := f.announce(t, f.src, headNow)
			q, _ := attest.ParseQuote(a.Quote)
			f.view.used[q.Hash] = true
			return a
		}, want: []Reason{ReasonQuoteReplayed}},
		"wrong mrtd": {setup: func(t *testing.T, f *fixture) *Announce {
			src := *f.src
			src.Options.MRTD = attest.MRTD{0xbb}
			return f.announce(t, &src, headNow)
		}, want: []Reason{attest.ReasonMrtdNotAllowed}},
		"wrong rtmr1 and mrtd": {setup: func(t *testing.T, f *fixture) *Announce {
			src := *f.src
			src.Options.MRTD = attest.MRTD{0xbb}
			src.Options.RTMR[1] = attest.RTMR{0xbb}
			return f.announce(t, &src, headNow)
		}, want: []Reason{attest.ReasonMrtdNotAllowed, "rtmr1_not_allowed"}},
		"out of date platform": {status: attest.TcbOutOfDate, setup: func(t *testing.T, f *fixture) *Announce {
			return f.announce(t, f.src, headNow)
		}, want: []Reason{attest.ReasonTcbNotAllowed}},
		"mock quote": {setup: func(t *testing.T, f *fixture) *Announce {
			return f.announce(t, &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD, RTMR: goodRTMR}}, headNow)
		}, want: []Reason{attest.ReasonMockNotAccepted}},
		"debug td": {setup: func(t *testing.T, f *fixture) *Announce {
			src := *f.src
			src.Options.TDAttributes = attest.TDAttributes{1}
			return f.announce(t, &src, headNow)
		}, want: []Reason{attest.ReasonDebugNotAllowed}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			status := tc.status
			if status == "" {
				status = attest.TcbUpToDate
			}
			f := newFixture(t, status)
			a := tc.setup(t, f)
			adm, err := f.checker.Check(ctx, testNS, a, f.view)
			if err == nil {
				t.Fatalf("admitted: %+v", adm)
			}
			if got := Reasons(err); !slices.Equal(got, tc.want) {
				t.Fatalf("reasons %v, want %v (%v)", got, tc.want, err)
			}
		})
	}
}

func TestMockAdmittedOnlyWithAcceptMock(t *testing.T) {
	f := newFixture(t, attest.TcbUpToDate)
	f.view.policy.AcceptMock = true
	a := f.announce(t, &attest.MockSource{Quote: attest.MockQuote{MRTD: goodMRTD, RTMR: goodRTMR}}, headNow)
	adm, err := f.checker.Check(context.Background(), testNS, a, f.view)
	if err != nil {
		t.Fatal(err)
	}
	if !adm.Mock || adm.TcbStatus != attest.TcbMock {
		t.Fatalf("a mock admission must say so: %+v", adm)
	}
}

func TestAnnounceWire(t *testing.T) {
	f := newFixture(t, attest.TcbUpToDate)
	a := f.announce(t, f.src, headNow)
	wire, err := a.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeAnnounce(wire)
	if err != nil {
		t.Fatal(err)
	}
	if !back.VerifySignature() || !bytes.Equal(back.Quote, a.Quote) || back.Nonce() != a.Nonce() {
		t.Fatal("round trip changed the announce")
	}
	bad := map[string][]byte{
		"empty":          nil,
		"garbage":        []byte("not cbor"),
		"truncated":      wire[:len(wire)-3],
		"trailing":       append(slices.Clone(wire), 0),
		"oversize":       make([]byte, MaxAnnounceSize+1),
		"indefinite map": {0xbf, 0xff},
		"tagged":         append([]byte{0xc0}, wire...),
	}
	for name, b := range bad {
		if _, err := DecodeAnnounce(b); err == nil {
			t.Errorf("%s: decoded", name)
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrOversize) {
			t.Errorf("%s: error %v is neither ErrMalformed nor ErrOversize", name, err)
		}
	}
	// The same announce with Version encoded non-minimally (0x18 0x01
	// instead of 0x01) decodes to equal values but is not canonical.
	if wire[0] != 0xa8 || wire[1] != 0x01 || wire[2] != 0x01 {
		t.Fatalf("unexpected encoding prefix % x", wire[:3])
	}
	loose := append([]byte{0xa8, 0x01, 0x18, 0x01}, wire[3:]...)
	if _, err := DecodeAnnounce(loose); !errors.Is(err, ErrMalformed) {
		t.Errorf("non-canonical announce: %v", err)
	}
}

func FuzzDecodeAnnounce(f *testing.F) {
	_, id, _ := ed25519.GenerateKey(nil)
	a, err := NewAnnounce(context.Background(), &attest.MockSource{}, testNS, id, [32]byte{}, headNow)
	if err == nil {
		w, _ := a.Encode()
		f.Add(w)
	}
	if a != nil {
		a.EventLog = []byte(`[{"imr":3,"event_type":134217729,"digest":"","event":"compose-hash","event_payload":"2911"}]`)
		w, _ := a.Encode()
		f.Add(w)
	}
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeAnnounce(b)
		if err != nil {
			return
		}
		w, err := a.Encode()
		if err != nil || !bytes.Equal(w, b) {
			t.Fatal("decoded announce does not re-encode to the same bytes")
		}
		_ = a.VerifySignature()
	})
}

// evidenceSource gives a test-CA quote with an event log.
type evidenceSource struct {
	*attesttest.Source
	log []byte
}

func (s *evidenceSource) GetEvidence(ctx context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	q, err := s.GetQuote(ctx, rd)
	return &attest.Evidence{Quote: q, EventLog: s.log}, err
}

func dstackLog(t *testing.T, compose string) ([]byte, attest.RTMR) {
	t.Helper()
	var evs []eventlog.Event
	for _, e := range [][2]string{{"app-id", "a1"}, {"compose-hash", compose}, {"instance-id", "01"}} {
		p, _ := hex.DecodeString(e[1])
		evs = append(evs, eventlog.Event{RTMR: 3, Type: eventlog.EvRuntime, Name: e[0], Payload: p, Digest: eventlog.RuntimeDigest(eventlog.EvRuntime, e[0], p)})
	}
	log, err := eventlog.MarshalJSON(evs)
	if err != nil {
		t.Fatal(err)
	}
	return log, eventlog.Replay(evs)[3]
}

// An announce's event log: signed with the announce, bounded, bound to the
// quote by replay, recorded in the admission and replayed again by Recheck.
func TestAnnounceEventLog(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, attest.TcbUpToDate)
	f.view.policy.Rtmr3Events = map[string][]string{"compose-hash": {"c1"}}
	log, rtmr3 := dstackLog(t, "c1")
	o := f.src.Options
	o.RTMR[3] = rtmr3
	src := &evidenceSource{Source: &attesttest.Source{Platform: f.src.Platform, Options: o}, log: log}

	good := f.announce(t, src, headNow)
	adm, err := f.checker.Check(ctx, testNS, good, f.view)
	if err != nil {
		t.Fatalf("announce with its log: %v", err)
	}
	if !adm.EventLogChecked || attest.Rtmr3EventMap(adm.Rtmr3Events)["compose-hash"][0] != "c1" {
		t.Fatalf("admission does not record the checked events: %+v", adm)
	}
	// A peer that receives an admission whose recorded events were changed
	// replays them and refuses it.
	forgedAdm := *adm
	forgedAdm.Rtmr3Events = slices.Clone(adm.Rtmr3Events)
	forgedAdm.Rtmr3Events[1].Payload = []byte{0xc2}
	if got := Reasons(Recheck(f.view.policy, &forgedAdm)); !slices.Equal(got, []Reason{ReasonEventLogMismatch}) {
		t.Fatalf("recheck of changed recorded events: %v", got)
	}

	forgedLog, _ := dstackLog(t, "c2") // a log of another app, the quote's RTMR3 unchanged
	cases := map[string]struct {
		announce func() *Announce
		want     Reason
	}{
		"malformed log": {func() *Announce {
			return f.announce(t, &evidenceSource{Source: src.Source, log: []byte("{not json")}, headNow)
		}, ReasonMalformed},
		"forged log": {func() *Announce {
			return f.announce(t, &evidenceSource{Source: src.Source, log: forgedLog}, headNow)
		}, ReasonEventLogMismatch},
		"log stripped after signing": {func() *Announce {
			a := f.announce(t, src, headNow)
			a.EventLog = nil
			return a
		}, ReasonBadSignature},
		"no log, events pinned": {func() *Announce {
			return f.announce(t, src.Source, headNow)
		}, Reason(attest.ReasonEventLogMissing)},
		"replayed announce": {func() *Announce { return good }, ReasonQuoteReplayed},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			a := c.announce()
			if name == "replayed announce" {
				f.view.used[adm.QuoteHash] = true
				defer delete(f.view.used, adm.QuoteHash)
			}
			_, err := f.checker.Check(ctx, testNS, a, f.view)
			if got := Reasons(err); !slices.Contains(got, c.want) {
				t.Fatalf("reasons %v (%v), want %s", got, err, c.want)
			}
		})
	}

	// On the wire: the log round-trips under the signature, and one over
	// the limit is refused before anything else.
	wire, _ := good.Encode()
	back, err := DecodeAnnounce(wire)
	if err != nil || !bytes.Equal(back.EventLog, log) || !back.VerifySignature() {
		t.Fatalf("round trip: %v", err)
	}
	big := *good
	big.EventLog = make([]byte, attest.MaxEventLog+1)
	wire, _ = big.Encode()
	if _, err := DecodeAnnounce(wire); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "event log") {
		t.Fatalf("oversize event log: %v", err)
	}
}
