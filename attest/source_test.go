package attest_test

import (
	"context"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
)

// fakeTDXReport is a configfs-tsm report subsystem whose provider is
// tdx_guest and whose outblob is a test-CA quote over the written inblob.
func fakeTDXReport(t *testing.T, src *attesttest.Source, provider string) *faketsm.ReportSubsystem {
	sub := faketsm.Report611(0)
	base := sub.ReadAttr
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			var rd attest.ReportData
			copy(rd[:], e.InAttrs["inblob"].Value)
			return src.GetQuote(context.Background(), rd)
		}
		return base(e, attr)
	}
	return sub
}

func TestTSMSource(t *testing.T) {
	ca := attesttest.NewCA(t)
	src := &attesttest.Source{Platform: ca.NewPlatform(t, attesttest.DefaultPlatform), Options: attesttest.QuoteOptions{MRTD: attest.MRTD{0xaa}}}
	cases := map[string]struct {
		provider string
		ok       bool
	}{
		"tdx_guest":   {"tdx_guest", true},
		"sev_guest":   {"sev_guest", false},
		"no provider": {"", false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			client := &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": fakeTDXReport(t, src, tc.provider)}}
			s := attest.NewTSMSourceWithClient(client)
			nonce := [32]byte{1, 2, 3}
			rd := attest.BindPublicKey(nonce, []byte("key"))
			raw, err := s.GetQuote(context.Background(), rd)
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			v := attest.NewVerifier(ca.VerifierConfig(nil, attesttest.Epoch))
			verdict, err := v.Verify(context.Background(), raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := attest.CheckBinding(verdict.Quote.ReportData, nonce, []byte("key")); err != nil {
				t.Fatal(err)
			}
			if verdict.Quote.MRTD != (attest.MRTD{0xaa}) || s.Kind() != "tdx" {
				t.Fatalf("mrtd %s kind %s", verdict.Quote.MRTD, s.Kind())
			}
		})
	}
}

func TestMockSource(t *testing.T) {
	mq := attest.MockQuote{MRTD: attest.MockMeasurement("mrtd")}
	mq.RTMR[2] = attest.MockMeasurement("rtmr2")
	s := &attest.MockSource{Quote: mq}
	rd := attest.BindPublicKey([32]byte{9}, []byte("pub"))
	raw, err := s.GetQuote(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	verdict, err := attest.NewVerifier(attest.VerifierConfig{}).Verify(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	q := verdict.Quote
	if !verdict.Mock || verdict.TcbStatus != attest.TcbMock || !q.Mock || q.MRTD != mq.MRTD || q.RTMR[2] != mq.RTMR[2] || q.ReportData != rd {
		t.Fatalf("verdict %+v", verdict)
	}
	// A policy refuses mock quotes unless acceptMock is set, and then only
	// with matching measurements.
	pol := attest.DefaultPolicy()
	if !hasReason(pol.Evaluate(verdict), attest.ReasonMockNotAccepted) {
		t.Fatal("default policy accepted a mock quote")
	}
	pol.AcceptMock = true
	if err := pol.Evaluate(verdict); err != nil {
		t.Fatal(err)
	}
	// One byte more or less is not a mock quote.
	for _, b := range [][]byte{raw[:len(raw)-1], append(raw, 0)} {
		if _, err := attest.ParseQuote(b); err == nil {
			t.Fatalf("%d-byte mock quote parsed", len(b))
		}
	}
}

func hasReason(err error, reason string) bool {
	for _, v := range attest.Violations(err) {
		if v.Reason == reason {
			return true
		}
	}
	return false
}
