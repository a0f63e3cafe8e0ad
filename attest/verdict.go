package attest

import "time"

// TcbStatus is the TDX TCB status of the platform that made a quote, as
// Intel's TCB Info reports it, or one of fleetbox's own outcomes for quotes
// that have none (Unverified, NoMatchingTcbLevel, Mock).
type TcbStatus string

// Intel's statuses (Intel PCS API, TDX TCB Info v3, "tcbStatus").
const (
	TcbUpToDate                          TcbStatus = "UpToDate"
	TcbSWHardeningNeeded                 TcbStatus = "SWHardeningNeeded"
	TcbConfigurationNeeded               TcbStatus = "ConfigurationNeeded"
	TcbConfigurationAndSWHardeningNeeded TcbStatus = "ConfigurationAndSWHardeningNeeded"
	TcbOutOfDate                         TcbStatus = "OutOfDate"
	TcbOutOfDateConfigurationNeeded      TcbStatus = "OutOfDateConfigurationNeeded"
	TcbRevoked                           TcbStatus = "Revoked"
	// The TD runs on an OutOfDate TDX module, but the platform has since
	// been updated (a TD-preserving module update, TEE_TCB_SVN_2 of a TDX
	// 1.5 TD report): relaunching the TD brings it up to date. Intel's QVL
	// reports these instead of OutOfDate (TDRelaunchCheck).
	TcbTDRelaunchAdvised                    TcbStatus = "TDRelaunchAdvised"
	TcbTDRelaunchAdvisedConfigurationNeeded TcbStatus = "TDRelaunchAdvisedConfigurationNeeded"
)

// fleetbox's outcomes where Intel's collateral gives no status.
const (
	// TcbNoMatchingLevel: the TCB Info has no level the platform meets.
	TcbNoMatchingLevel TcbStatus = "NoMatchingTcbLevel"
	// TcbUnverified: the signature chain was checked, but no collateral was
	// given, so the platform's TCB is unknown.
	TcbUnverified TcbStatus = "Unverified"
	// TcbMock: a mock quote, which has no platform at all.
	TcbMock TcbStatus = "Mock"
)

// IntelStatuses lists the statuses Intel's TCB Info can report, best first.
var IntelStatuses = []TcbStatus{
	TcbUpToDate, TcbSWHardeningNeeded, TcbConfigurationNeeded,
	TcbConfigurationAndSWHardeningNeeded, TcbTDRelaunchAdvised,
	TcbTDRelaunchAdvisedConfigurationNeeded, TcbOutOfDate,
	TcbOutOfDateConfigurationNeeded, TcbRevoked,
}

func knownStatus(s TcbStatus) bool {
	for _, k := range IntelStatuses {
		if k == s {
			return true
		}
	}
	return false
}

// Verdict is what verification established about a quote. A Verdict exists
// only for a quote whose signatures verified (or a mock quote); the policy
// then judges it.
type Verdict struct {
	Quote *Quote
	// Mock is true for a mock quote: nothing was verified.
	Mock bool
	// TcbStatus is the TDX TCB status of the matched TCB level.
	TcbStatus TcbStatus
	// AdvisoryIDs are the Intel security advisories of the matched level.
	AdvisoryIDs []string
	// TcbDetail explains a NoMatchingTcbLevel status.
	TcbDetail string
	// TcbDate is the matched level's tcbDate.
	TcbDate string
	// TdxModuleTcbStatus is the status of the TDX module identity level, for
	// TDX 1.5 platforms (TEE_TCB_SVN[1] > 0); empty otherwise. It is already
	// folded into TcbStatus.
	TdxModuleTcbStatus TcbStatus
	// QeTcbStatus is the status of the quoting enclave's identity level.
	QeTcbStatus TcbStatus
	// CollateralChecked is true when TCB Info and QE Identity were verified.
	CollateralChecked bool
	// RevocationChecked is true when the PCK and root CRLs were checked.
	RevocationChecked bool
	// VerifiedAt is the time the checks were made for.
	VerifiedAt time.Time
	// EventLogChecked is true when an event log came with the quote and
	// replayed to the quote's registers (measure/eventlog.Bind);
	// Rtmr3Events are then that log's RTMR3 events, which a policy's
	// rtmr3Events judge.
	EventLogChecked bool
	Rtmr3Events     []Rtmr3Event
}
