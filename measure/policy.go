package measure

import (
	"errors"
	"fmt"
	"slices"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/measure/tdvf"
)

// Register names as PolicyOptions.Waive takes them.
const (
	RegMRTD  = "mrtd"
	RegRTMR0 = "rtmr0"
	RegRTMR1 = "rtmr1"
	RegRTMR2 = "rtmr2"
	RegRTMR3 = "rtmr3"
)

// PolicyOptions shape the policy written from measurements.
type PolicyOptions struct {
	// Profiles to admit; nil means every profile, which is only allowed when
	// the measurements hold exactly one.
	Profiles []string
	// Orders of MRTD to allow; nil means every order recorded (each is the
	// same firmware as built by a different hypervisor).
	Orders []tdvf.Order
	// RTMR0 values to allow in addition to those recorded in the
	// measurements (from reference boots).
	RTMR0 []attest.RTMR
	// Waive lists registers to write as ["*"], explicitly not enforced.
	Waive []string
	// TcbStatuses, AllowDebug and AcceptMock are copied into the policy.
	TcbStatuses []attest.TcbStatus
	AllowDebug  bool
	AcceptMock  bool
}

// ErrRTMR0Unknown means no RTMR0 value is known and RTMR0 was not waived.
var ErrRTMR0Unknown = errors.New("measure: no rtmr0 value: give one from a reference boot (quote or event log) or waive rtmr0 explicitly")

// ErrProfileChoice means the measurements hold several profiles and none was
// chosen.
var ErrProfileChoice = errors.New("measure: measurements hold several profiles: choose which to admit")

// PolicyFromMeasurements writes the TeeAdmissionPolicy that admits exactly
// the chosen profiles. Every register is pinned unless waived; a register
// with no known value and no waiver is an error, never an empty list.
func PolicyFromMeasurements(m *Measurements, o *PolicyOptions) (*attest.Policy, error) {
	if o == nil {
		o = &PolicyOptions{}
	}
	names := o.Profiles
	if len(names) == 0 {
		if len(m.Profiles) != 1 {
			return nil, fmt.Errorf("%w (have %v)", ErrProfileChoice, m.ProfileNames())
		}
		names = m.ProfileNames()
	}
	for _, w := range o.Waive {
		if !slices.Contains([]string{RegMRTD, RegRTMR0, RegRTMR1, RegRTMR2, RegRTMR3}, w) {
			return nil, fmt.Errorf("measure: cannot waive %q (registers: mrtd, rtmr0..rtmr3)", w)
		}
	}
	waived := func(r string) bool { return slices.Contains(o.Waive, r) }
	var mrtd, r0, r1, r2, r3 []string
	addU := func(l *[]string, s string) {
		if !slices.Contains(*l, s) {
			*l = append(*l, s)
		}
	}
	for _, r := range o.RTMR0 {
		addU(&r0, r.String())
	}
	var errs []error
	for _, n := range names {
		p, ok := m.Profiles[n]
		if !ok {
			errs = append(errs, fmt.Errorf("measure: no profile %q (have %v)", n, m.ProfileNames()))
			continue
		}
		orders := o.Orders
		if len(orders) == 0 {
			orders = tdvf.Orders
		}
		found := false
		for _, ord := range orders {
			if v, ok := p.MRTD[ord]; ok {
				addU(&mrtd, v.String())
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("measure: profile %q has no mrtd for orders %v", n, orders))
		}
		for _, r := range p.RTMR0 {
			addU(&r0, r.String())
		}
		addU(&r1, p.RTMR1.String())
		addU(&r2, p.RTMR2.String())
		if p.RTMR3 != nil {
			addU(&r3, p.RTMR3.String())
		} else if !waived(RegRTMR3) {
			errs = append(errs, fmt.Errorf("measure: profile %q has no rtmr3 (no configuration was measured): measure one or waive rtmr3 explicitly", n))
		}
	}
	if len(r0) == 0 && !waived(RegRTMR0) {
		errs = append(errs, ErrRTMR0Unknown)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	pick := func(reg string, l []string) []string {
		if waived(reg) {
			return []string{attest.Wildcard}
		}
		return l
	}
	pol := &attest.Policy{
		AllowedMrtd:        pick(RegMRTD, mrtd),
		AllowedRtmr0:       pick(RegRTMR0, r0),
		AllowedRtmr1:       pick(RegRTMR1, r1),
		AllowedRtmr2:       pick(RegRTMR2, r2),
		AllowedRtmr3:       pick(RegRTMR3, r3),
		AllowedTcbStatuses: o.TcbStatuses,
		AcceptMock:         o.AcceptMock,
		AllowDebug:         o.AllowDebug,
	}
	if err := pol.Validate(); err != nil {
		return nil, err
	}
	return pol, nil
}
