// Package dstack talks to the dstack guest agent, the service inside a
// Phala/dstack CVM that gives containers quotes with the CVM's event log and
// keys derived from the app's identity. Its RPC API is JSON over HTTP on a
// unix socket (Dstack-TEE/dstack, guest-agent RPC, "DstackGuest" service):
//
//	POST /GetQuote {"report_data": hex(64 bytes)}
//	     -> {"quote": hex, "event_log": "<JSON array as a string>", ...}
//	POST /GetKey   {"path": "...", "purpose": "..."}
//	     -> {"key": hex, "signature_chain": [hex, ...]}
//
// The event log is dstack's JSON form (measure/eventlog.ParseJSON): the
// boot events of RTMR0-2 and the runtime events of RTMR3 (app-id,
// compose-hash, instance-id, key-provider, ...).
package dstack

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// DefaultSocket is where the agent listens inside a dstack CVM; a container
// sees it where its compose file mounts it.
const DefaultSocket = "/var/run/dstack.sock"

// Limits on what is read from the agent.
const (
	maxResponse = 1 << 20
	// MaxEventLog bounds the event log taken from the agent; it travels
	// with every quote.
	MaxEventLog = attest.MaxEventLog
)

// ErrAgent wraps failures talking to the agent.
var ErrAgent = errors.New("dstack guest agent")

// Agent is a client of the guest agent. It connects nothing until used.
type Agent struct {
	socket string
	hc     *http.Client
}

// New returns a client for the agent at socket (DefaultSocket when empty).
func New(socket string) *Agent {
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Agent{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Socket is the agent's socket path.
func (a *Agent) Socket() string { return a.socket }

// call posts req to method and returns the answer's bytes (at most
// maxResponse) when the agent answered 200.
func (a *Agent) call(ctx context.Context, method string, req any) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://dstack/"+method, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := a.hc.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %s: %v", ErrAgent, a.socket, method, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: reading response: %v", ErrAgent, method, err)
	}
	if len(data) > maxResponse {
		return nil, fmt.Errorf("%w: %s: response exceeds %d bytes", ErrAgent, method, maxResponse)
	}
	if res.StatusCode != http.StatusOK {
		// The body is not echoed: for GetKey it might carry key material.
		clear(data)
		return nil, fmt.Errorf("%w: %s: HTTP %d", ErrAgent, method, res.StatusCode)
	}
	return data, nil
}

// GetQuote returns a quote whose REPORTDATA is rd, with the CVM's event log.
func (a *Agent) GetQuote(ctx context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	raw, err := a.call(ctx, "GetQuote", map[string]string{"report_data": hex.EncodeToString(rd[:])})
	if err != nil {
		return nil, fmt.Errorf("getting quote: %w", err)
	}
	ev, err := ParseQuoteResponse(raw)
	if err != nil {
		return nil, fmt.Errorf("getting quote: %w", err)
	}
	return ev, nil
}

// ParseQuoteResponse decodes the agent's GetQuote answer: the quote (hex,
// at most attest.MaxQuoteSize bytes) and the event log (a JSON string, at
// most MaxEventLog bytes). Members of the agent's own (report_data,
// vm_config) are skipped; duplicates are refused.
func ParseQuoteResponse(data []byte) (*attest.Evidence, error) {
	if len(data) > maxResponse {
		return nil, fmt.Errorf("%w: GetQuote answer exceeds %d bytes", ErrAgent, maxResponse)
	}
	// Members of the agent's own (report_data, vm_config) are skipped.
	var resp struct {
		Quote    string `json:"quote"`
		EventLog string `json:"event_log"`
	}
	if err := strictjson.UnmarshalKnown(data, &resp); err != nil {
		return nil, fmt.Errorf("%w: GetQuote answer is not the expected JSON", ErrAgent)
	}
	q, err := hex.DecodeString(strings.TrimPrefix(resp.Quote, "0x"))
	if err != nil || len(q) == 0 || len(q) > attest.MaxQuoteSize {
		return nil, fmt.Errorf("%w: GetQuote quote is not hex of at most %d bytes", ErrAgent, attest.MaxQuoteSize)
	}
	if len(resp.EventLog) > MaxEventLog {
		return nil, fmt.Errorf("%w: GetQuote event_log of %d bytes exceeds %d", ErrAgent, len(resp.EventLog), MaxEventLog)
	}
	ev := &attest.Evidence{Quote: q}
	if resp.EventLog != "" {
		ev.EventLog = []byte(resp.EventLog)
	}
	return ev, nil
}

// GetKey returns the key the agent derives for path from the app's
// identity: the same app (compose hash, KMS) gets the same key after a
// restart or on another machine. The caller wipes it.
func (a *Agent) GetKey(ctx context.Context, path, purpose string) ([]byte, error) {
	var resp struct {
		Key            string   `json:"key"`
		SignatureChain []string `json:"signature_chain"`
	}
	data, err := a.call(ctx, "GetKey", map[string]string{"path": path, "purpose": purpose})
	if err != nil {
		return nil, fmt.Errorf("getting key: %w", err)
	}
	defer clear(data)
	// The agent's answers carry members of their own: unknown members are
	// skipped, duplicates refused.
	if err := strictjson.UnmarshalKnown(data, &resp); err != nil {
		return nil, fmt.Errorf("getting key: %w: GetKey answer is not the expected JSON", ErrAgent)
	}
	b, err := hex.DecodeString(strings.TrimPrefix(resp.Key, "0x"))
	resp.Key = ""
	if err != nil || len(b) < 16 {
		clear(b)
		return nil, fmt.Errorf("getting key: %w: GetKey key is not hex of at least 16 bytes", ErrAgent)
	}
	return b, nil
}

// DeriveKey asks the agent for the key at path and derives a 32-byte key
// from it with HKDF-SHA256 under label, so that the agent's key itself is
// used for nothing else.
func (a *Agent) DeriveKey(ctx context.Context, path, purpose, label string) ([32]byte, error) {
	var out [32]byte
	k, err := a.GetKey(ctx, path, purpose)
	if err != nil {
		return out, err
	}
	defer clear(k)
	d, err := hkdf.Key(sha256.New, k, nil, label, 32)
	if err != nil {
		return out, fmt.Errorf("deriving key: %w", err)
	}
	copy(out[:], d)
	clear(d)
	return out, nil
}

// Source returns the agent as an attest.EvidenceSource of kind "dstack".
func (a *Agent) Source() attest.EvidenceSource { return source{a} }

type source struct{ a *Agent }

func (s source) GetEvidence(ctx context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	return s.a.GetQuote(ctx, rd)
}

func (s source) GetQuote(ctx context.Context, rd attest.ReportData) ([]byte, error) {
	ev, err := s.a.GetQuote(ctx, rd)
	if err != nil {
		return nil, err
	}
	return ev.Quote, nil
}

func (s source) Kind() string { return "dstack" }
