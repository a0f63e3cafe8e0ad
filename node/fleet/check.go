package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// Reason is why an announce was refused: a stable code, the label of the
// refused-announce counter. Policy violations use attest's reason codes
// (mrtd_not_allowed, rtmr1_not_allowed, tcb_status_not_allowed, ...).
type Reason string

// Refusal reasons besides the policy's.
const (
	ReasonMalformed          Reason = "malformed"
	ReasonWrongNamespace     Reason = "wrong_namespace"
	ReasonBadSignature       Reason = "bad_signature"
	ReasonUnknownHead        Reason = "unknown_head"
	ReasonStaleNonce         Reason = "stale_nonce"
	ReasonAlreadyMember      Reason = "already_member"
	ReasonAttestationInvalid Reason = "attestation_invalid"
	ReasonBindingMismatch    Reason = "report_data_mismatch"
	ReasonQuoteReplayed      Reason = "quote_replayed"
	ReasonNoPolicy           Reason = "no_policy"
	ReasonEventLogMismatch   Reason = attest.ReasonEventLogMismatch
)

// Refusal is an announce refused for one or more reasons (several only for
// policy violations, which are all reported at once).
type Refusal struct {
	Reasons []Reason
	Err     error
}

func (r *Refusal) Error() string { return fmt.Sprintf("announce refused (%v): %v", r.Reasons, r.Err) }
func (r *Refusal) Unwrap() error { return r.Err }

func refuse(reason Reason, format string, a ...any) *Refusal {
	return &Refusal{Reasons: []Reason{reason}, Err: fmt.Errorf(format, a...)}
}

// View is what a verifier knows about the namespace, from its replicated
// state. Implementations must be safe for concurrent use.
type View interface {
	// Policy returns the namespace's TeeAdmissionPolicy, or nil if none is set.
	Policy() *attest.Policy
	// IsMember reports whether the key is a member of the namespace.
	IsMember(member [32]byte) bool
	// QuoteUsed reports whether a quote with this hash has ever admitted a
	// replica to the namespace (also one removed since).
	QuoteUsed(h attest.QuoteHash) bool
	// HeadAge reports how long ago head stopped being a head of the DAG (0
	// for a current head), or known=false for an op this node has not seen.
	HeadAge(head [32]byte) (age time.Duration, known bool)
}

// Admission is what a verified announce admits: the content of a
// MemberJoinedViaTeeAttestation op. Every peer re-checks it against the
// policy with Recheck when it applies the op.
type Admission struct {
	Member       [32]byte
	Agreement    [32]byte
	QuoteHash    attest.QuoteHash
	MRTD         attest.MRTD
	RTMR         [4]attest.RTMR
	TDAttributes attest.TDAttributes
	TcbStatus    attest.TcbStatus
	Mock         bool
	// EventLogChecked and Rtmr3Events record the RTMR3 events of the
	// announce's event log, which replayed to RTMR[3]; Recheck replays
	// them again, so no peer takes the admitting node's word for them.
	EventLogChecked bool
	Rtmr3Events     []attest.Rtmr3Event
}

// Checker verifies announces. Its zero Window means DefaultWindow.
type Checker struct {
	Verifier *attest.Verifier
	// Window is how long after a head was superseded an announce that names
	// it is still fresh.
	Window time.Duration
}

// DefaultWindow is the freshness window for announce heads.
const DefaultWindow = 2 * time.Minute

// Check verifies an announce for namespace ns against the verifier's view, in
// order: shape and namespace, signature, freshness of the head, membership,
// the quote (chain, signatures, collateral), the report_data binding, quote
// replay, and the namespace's policy. The first failure refuses it; policy
// violations are reported all at once.
func (c *Checker) Check(ctx context.Context, ns [32]byte, a *Announce, v View) (*Admission, error) {
	if a.Namespace != ns {
		return nil, refuse(ReasonWrongNamespace, "announce is for namespace %x, not %x", a.Namespace[:6], ns[:6])
	}
	if !a.VerifySignature() {
		return nil, refuse(ReasonBadSignature, "announce signature does not verify with member key %x", a.Member[:6])
	}
	window := c.Window
	if window == 0 {
		window = DefaultWindow
	}
	age, known := v.HeadAge(a.Head)
	if !known {
		return nil, refuse(ReasonUnknownHead, "announce names head %x, which this node does not know", a.Head[:6])
	}
	if age > window {
		return nil, refuse(ReasonStaleNonce, "announce names head %x, superseded %s ago (window %s)", a.Head[:6], age.Round(time.Second), window)
	}
	if v.IsMember(a.Member) {
		return nil, refuse(ReasonAlreadyMember, "member %x is already in the namespace", a.Member[:6])
	}
	pol := v.Policy()
	if pol == nil {
		return nil, refuse(ReasonNoPolicy, "the namespace has no TeeAdmissionPolicy")
	}
	verdict, err := c.Verifier.Verify(ctx, a.Quote)
	if err != nil {
		// The collateral's fault (stale, for another platform, no CRLs)
		// is this verifier's problem, not a forged quote: say which.
		if code := attest.CollateralReason(err); code != "" {
			return nil, refuse(Reason(code), "verifying quote: %w", err)
		}
		return nil, refuse(ReasonAttestationInvalid, "verifying quote: %w", err)
	}
	q := verdict.Quote
	if err := attest.CheckBinding(q.ReportData, a.Nonce(), a.Member[:]); err != nil {
		return nil, refuse(ReasonBindingMismatch, "quote report_data does not bind this announce's nonce and member key")
	}
	if v.QuoteUsed(q.Hash) {
		return nil, refuse(ReasonQuoteReplayed, "quote %s already admitted a replica to this namespace", q.Hash.String()[:12])
	}
	if len(a.EventLog) > 0 {
		if _, err := eventlog.Bind(a.EventLog, verdict); err != nil {
			var me *eventlog.MismatchError
			if errors.As(err, &me) {
				return nil, refuse(ReasonEventLogMismatch, "%w", err)
			}
			return nil, refuse(ReasonMalformed, "the announce's event log: %w", err)
		}
	}
	adm := &Admission{
		Member: a.Member, Agreement: a.Agreement, QuoteHash: q.Hash, MRTD: q.MRTD, RTMR: q.RTMR,
		TDAttributes: q.TDAttributes, TcbStatus: verdict.TcbStatus, Mock: verdict.Mock,
		EventLogChecked: verdict.EventLogChecked, Rtmr3Events: verdict.Rtmr3Events,
	}
	if err := Recheck(pol, adm); err != nil {
		return nil, err
	}
	return adm, nil
}

// Recheck judges an admission's recorded values against a policy: what every
// peer does when it applies MemberJoinedViaTeeAttestation. It is a pure
// function of its inputs, so all peers reach the same answer.
func Recheck(pol *attest.Policy, adm *Admission) error {
	if pol == nil {
		return refuse(ReasonNoPolicy, "the namespace has no TeeAdmissionPolicy")
	}
	q := &attest.Quote{MRTD: adm.MRTD, RTMR: adm.RTMR, TDAttributes: adm.TDAttributes, Mock: adm.Mock, Hash: adm.QuoteHash}
	err := pol.Evaluate(&attest.Verdict{Quote: q, Mock: adm.Mock, TcbStatus: adm.TcbStatus,
		EventLogChecked: adm.EventLogChecked, Rtmr3Events: adm.Rtmr3Events})
	if err == nil {
		return nil
	}
	r := &Refusal{Err: err}
	for _, vi := range attest.Violations(err) {
		r.Reasons = append(r.Reasons, Reason(vi.Reason))
	}
	return r
}

// Reasons lists the reasons of a refusal error (nil for other errors).
func Reasons(err error) []Reason {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reasons
	}
	return nil
}
