package attest

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// MaxPolicySize bounds a policy document.
const MaxPolicySize = 256 << 10

// maxPolicyEntries bounds each allow-list.
const maxPolicyEntries = 4096

// Wildcard, alone in a register list, waives that register explicitly.
const Wildcard = "*"

// Policy is a TeeAdmissionPolicy: the measurements, TCB statuses and mock
// acceptance a quote must satisfy. One document type serves a namespace and
// the KMS.
//
// Every register list must be present and non-empty: ["*"] waives a register
// on purpose, an empty or missing list is an error rather than "anything".
type Policy struct {
	AllowedMrtd  []string `json:"allowedMrtd"`
	AllowedRtmr0 []string `json:"allowedRtmr0"`
	AllowedRtmr1 []string `json:"allowedRtmr1"`
	AllowedRtmr2 []string `json:"allowedRtmr2"`
	AllowedRtmr3 []string `json:"allowedRtmr3"`
	// AllowedTcbStatuses empty means ["UpToDate"]. Revoked is always refused.
	AllowedTcbStatuses []TcbStatus `json:"allowedTcbStatuses,omitempty"`
	// AcceptMock lets mock quotes through the measurement checks. Their TCB
	// status (Mock) is exempt from AllowedTcbStatuses, since they have none.
	AcceptMock bool `json:"acceptMock"`
	// AllowDebug admits debug TDs, whose memory the host can read.
	AllowDebug bool `json:"allowDebug,omitempty"`
	// Rtmr3Events pins RTMR3 runtime events by name: each named event must
	// occur exactly once in an event log that replays to the quote, with a
	// payload (hex) in its list; ["*"] requires presence only. Where RTMR3
	// differs per instance (dstack's instance-id), pin the events and waive
	// allowedRtmr3 with ["*"]: the replay still binds the events to the quote.
	Rtmr3Events map[string][]string `json:"rtmr3Events,omitempty"`
}

// ParsePolicy decodes and validates a policy document. Unknown keys,
// duplicate keys and keys not spelled exactly are refused, so that a typo
// cannot silently drop a rule and a second "acceptmock" cannot override the
// first (what a namespace stores is what applies).
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > MaxPolicySize {
		return nil, fmt.Errorf("policy: %d bytes exceeds the %d-byte limit", len(data), MaxPolicySize)
	}
	var p Policy
	if err := strictjson.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p.normalize()
	return &p, nil
}

// Marshal returns the policy as indented JSON.
func (p *Policy) Marshal() ([]byte, error) {
	return json.MarshalIndent(p, "", "  ")
}

type registerList struct {
	name string // "mrtd", "rtmr0", ...
	key  string // "allowedMrtd", ...
	vals []string
}

func (p *Policy) registers() []registerList {
	return []registerList{
		{"mrtd", "allowedMrtd", p.AllowedMrtd},
		{"rtmr0", "allowedRtmr0", p.AllowedRtmr0},
		{"rtmr1", "allowedRtmr1", p.AllowedRtmr1},
		{"rtmr2", "allowedRtmr2", p.AllowedRtmr2},
		{"rtmr3", "allowedRtmr3", p.AllowedRtmr3},
	}
}

// Validate reports every problem with the policy at once.
func (p *Policy) Validate() error {
	var errs []error
	for _, r := range p.registers() {
		if len(r.vals) == 0 {
			errs = append(errs, fmt.Errorf("policy: %s is empty; list allowed values or [\"*\"] to waive %s explicitly", r.key, r.name))
			continue
		}
		if len(r.vals) > maxPolicyEntries {
			errs = append(errs, fmt.Errorf("policy: %s has %d entries, over the limit of %d", r.key, len(r.vals), maxPolicyEntries))
			continue
		}
		if slices.Contains(r.vals, Wildcard) {
			if len(r.vals) != 1 {
				errs = append(errs, fmt.Errorf("policy: %s mixes \"*\" with values; \"*\" must stand alone", r.key))
			}
			continue
		}
		for i, v := range r.vals {
			var m [MeasurementSize]byte
			if err := parseHexInto(m[:], v, r.key+"["+fmt.Sprint(i)+"]"); err != nil {
				errs = append(errs, fmt.Errorf("policy: %w", err))
			}
		}
	}
	errs = append(errs, p.validateEvents()...)
	for _, s := range p.AllowedTcbStatuses {
		switch {
		case s == TcbRevoked:
			errs = append(errs, errors.New("policy: allowedTcbStatuses lists Revoked, which is always refused"))
		case !knownStatus(s):
			errs = append(errs, fmt.Errorf("policy: allowedTcbStatuses: unknown status %q (known: %v)", s, IntelStatuses))
		}
	}
	return errors.Join(errs...)
}

func (p *Policy) normalize() {
	for _, l := range []*[]string{&p.AllowedMrtd, &p.AllowedRtmr0, &p.AllowedRtmr1, &p.AllowedRtmr2, &p.AllowedRtmr3} {
		for i, v := range *l {
			if v != Wildcard {
				(*l)[i] = normalizeHex(v)
			}
		}
	}
	p.normalizeEvents()
}

// TcbStatuses returns the statuses the policy accepts (UpToDate when empty).
func (p *Policy) TcbStatuses() []TcbStatus {
	if len(p.AllowedTcbStatuses) == 0 {
		return []TcbStatus{TcbUpToDate}
	}
	return p.AllowedTcbStatuses
}

// Reason codes for policy violations; stable, used in metrics and APIs.
const (
	ReasonMockNotAccepted  = "mock_not_accepted"
	ReasonDebugNotAllowed  = "debug_not_allowed"
	ReasonMrtdNotAllowed   = "mrtd_not_allowed"
	ReasonTcbNotAllowed    = "tcb_status_not_allowed"
	ReasonPolicyInvalid    = "policy_invalid"
	reasonRtmrNotAllowedFm = "rtmr%d_not_allowed"
)

// Violation is one failed policy rule.
type Violation struct {
	// Reason is a stable code: mrtd_not_allowed, rtmr2_not_allowed, ...
	Reason string
	// Message names the value and the rule: "rtmr2 5e1f… not in allowedRtmr2".
	Message string
}

func (v *Violation) Error() string { return v.Message }

// Evaluate judges a verdict. It returns nil when every rule passes, or an
// errors.Join of *Violation, one per failed rule, so an operator sees all of
// them at once. Use Violations to list them.
func (p *Policy) Evaluate(v *Verdict) error {
	if err := p.Validate(); err != nil {
		return &Violation{Reason: ReasonPolicyInvalid, Message: err.Error()}
	}
	var errs []error
	q := v.Quote
	if v.Mock && !p.AcceptMock {
		errs = append(errs, &Violation{ReasonMockNotAccepted, "quote is a mock quote (no TDX hardware) and acceptMock is false"})
	}
	if q.Debug() && !p.AllowDebug {
		errs = append(errs, &Violation{ReasonDebugNotAllowed, "td is a debug TD (TD_ATTRIBUTES.DEBUG set) and allowDebug is false"})
	}
	// register -1 is MRTD, 0-3 the RTMRs; names are built only on failure.
	check := func(register int, allowed []string, got [MeasurementSize]byte) {
		if len(allowed) == 1 && allowed[0] == Wildcard {
			return
		}
		h := hex.EncodeToString(got[:])
		for _, a := range allowed {
			if a == h || normalizeHex(a) == h {
				return
			}
		}
		reason, name, key := ReasonMrtdNotAllowed, "mrtd", "allowedMrtd"
		if register >= 0 {
			reason, name, key = fmt.Sprintf(reasonRtmrNotAllowedFm, register), fmt.Sprintf("rtmr%d", register), fmt.Sprintf("allowedRtmr%d", register)
		}
		errs = append(errs, &Violation{reason, fmt.Sprintf("%s %s not in %s", name, short(h), key)})
	}
	check(-1, p.AllowedMrtd, q.MRTD)
	for i, l := range [][]string{p.AllowedRtmr0, p.AllowedRtmr1, p.AllowedRtmr2, p.AllowedRtmr3} {
		check(i, l, q.RTMR[i])
	}
	errs = append(errs, p.evaluateEvents(v)...)
	if !v.Mock {
		switch {
		case v.TcbStatus == TcbRevoked:
			errs = append(errs, &Violation{ReasonTcbNotAllowed, "tcb status Revoked is always refused"})
		case !slices.Contains(p.TcbStatuses(), v.TcbStatus):
			msg := fmt.Sprintf("tcb status %s not in allowedTcbStatuses %v", v.TcbStatus, p.TcbStatuses())
			if v.TcbStatus == TcbUnverified {
				msg += " (no collateral was given, so the TCB could not be judged)"
			}
			errs = append(errs, &Violation{ReasonTcbNotAllowed, msg})
		}
	}
	return errors.Join(errs...)
}

// Violations lists the *Violation values inside an error from Evaluate.
func Violations(err error) []*Violation {
	if err == nil {
		return nil
	}
	var out []*Violation
	var walk func(error)
	walk = func(e error) {
		if v, ok := e.(*Violation); ok {
			out = append(out, v)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if u := errors.Unwrap(e); u != nil {
			walk(u)
		}
	}
	walk(err)
	return out
}

// DefaultPolicy is what applies when no policy is given: any measurements,
// but a genuine quote from an UpToDate platform, not a debug TD, not mock.
func DefaultPolicy() *Policy {
	return &Policy{
		AllowedMrtd:  []string{Wildcard},
		AllowedRtmr0: []string{Wildcard},
		AllowedRtmr1: []string{Wildcard},
		AllowedRtmr2: []string{Wildcard},
		AllowedRtmr3: []string{Wildcard},
	}
}
