package attest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
)

// Source produces quotes over chosen report_data.
type Source interface {
	// GetQuote returns raw quote bytes whose REPORTDATA is rd.
	GetQuote(ctx context.Context, rd ReportData) ([]byte, error)
	// Kind names the source for logs and verdicts: "tdx" or "mock".
	Kind() string
}

// ErrNoTDX means the machine offers no configfs-tsm TDX quote provider.
var ErrNoTDX = errors.New("no TDX quote provider (configfs-tsm tdx_guest) on this machine")

// TSMSource gets real quotes from the kernel's configfs-tsm report interface
// (/sys/kernel/config/tsm/report). Each call creates a report entry, writes
// report_data as inblob, reads outblob and removes the entry.
type TSMSource struct {
	client configfsi.Client
}

// NewTSMSource uses the Linux configfs-tsm interface. It fails with ErrNoTDX
// where the interface is missing.
func NewTSMSource() (*TSMSource, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoTDX, err)
	}
	return &TSMSource{client: c}, nil
}

// NewTSMSourceWithClient uses the given configfs client (a faketsm client in tests).
func NewTSMSourceWithClient(c configfsi.Client) *TSMSource { return &TSMSource{client: c} }

// GetQuote implements Source.
func (s *TSMSource) GetQuote(ctx context.Context, rd ReportData) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	resp, err := report.Get(s.client, &report.Request{InBlob: rd[:]})
	if err != nil {
		return nil, fmt.Errorf("getting quote from configfs-tsm: %w", err)
	}
	if p := strings.TrimSpace(resp.Provider); p != "tdx_guest" {
		return nil, fmt.Errorf("getting quote from configfs-tsm: provider %q is not tdx_guest", p)
	}
	if len(resp.OutBlob) == 0 {
		return nil, errors.New("getting quote from configfs-tsm: empty outblob")
	}
	return resp.OutBlob, nil
}

// Kind implements Source.
func (s *TSMSource) Kind() string { return "tdx" }

// Evidence is a quote with the event log that explains its registers (nil
// when the source has none).
type Evidence struct {
	Quote    []byte
	EventLog []byte
}

// EvidenceSource is a Source whose quotes come with the TD's event log: the
// dstack agent's, or the appliance's replayed log.
type EvidenceSource interface {
	Source
	GetEvidence(ctx context.Context, rd ReportData) (*Evidence, error)
}

// GetEvidence asks src for a quote over rd, with its event log where src
// keeps one.
func GetEvidence(ctx context.Context, src Source, rd ReportData) (*Evidence, error) {
	if es, ok := src.(EvidenceSource); ok {
		return es.GetEvidence(ctx, rd)
	}
	q, err := src.GetQuote(ctx, rd)
	if err != nil {
		return nil, err
	}
	return &Evidence{Quote: q}, nil
}
