package kms

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/fleetbox/fleetbox/internal/strictjson"

	"github.com/fleetbox/fleetbox/attest"
)

// DefaultDstackSocket is where the dstack guest agent listens inside a
// Phala/dstack CVM (map it into the container running the KMS).
const DefaultDstackSocket = "/var/run/dstack.sock"

// DefaultDstackKeyPath is the key path the KMS asks the dstack agent for.
// The agent derives the key from the CVM's app identity, so the same app
// (same compose hash, same KMS) gets the same root secret after a restart or
// on another machine.
const DefaultDstackKeyPath = "fleetbox/kms/root-secret"

// maxAgentResponse bounds what is read from the agent.
const maxAgentResponse = 1 << 20

// DstackAgent talks to the dstack guest agent over its unix socket. The
// agent's RPC API is JSON over HTTP: POST /GetKey {"path","purpose"} answers
// {"key": hex, "signature_chain": [hex...]}; POST /GetQuote {"report_data":
// hex} answers {"quote": hex, "event_log": ...} (dstack guest agent RPC API,
// Dstack-TEE/dstack).
type DstackAgent struct {
	socket string
	hc     *http.Client
}

// NewDstackAgent returns a client for the agent at socket (DefaultDstackSocket
// when empty). It connects nothing until used.
func NewDstackAgent(socket string) *DstackAgent {
	if socket == "" {
		socket = DefaultDstackSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &DstackAgent{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// ErrAgent wraps failures talking to the dstack agent.
var ErrAgent = errors.New("dstack guest agent")

func (a *DstackAgent) call(ctx context.Context, method string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://dstack/"+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := a.hc.Do(hr)
	if err != nil {
		return fmt.Errorf("%w at %s: %s: %v", ErrAgent, a.socket, method, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxAgentResponse+1))
	if err != nil {
		return fmt.Errorf("%w: %s: reading response: %v", ErrAgent, method, err)
	}
	if len(data) > maxAgentResponse {
		return fmt.Errorf("%w: %s: response exceeds %d bytes", ErrAgent, method, maxAgentResponse)
	}
	if res.StatusCode != http.StatusOK {
		// The body is not echoed: for GetKey it might carry key material.
		return fmt.Errorf("%w: %s: HTTP %d", ErrAgent, method, res.StatusCode)
	}
	if err := strictjson.UnmarshalKnown(data, resp); err != nil {
		return fmt.Errorf("%w: %s: response is not the expected JSON", ErrAgent, method)
	}
	return nil
}

// RootSecret asks the agent for the key at path (DefaultDstackKeyPath when
// empty) and uses it as the root secret.
func (a *DstackAgent) RootSecret(ctx context.Context, path string) (*RootSecret, error) {
	if path == "" {
		path = DefaultDstackKeyPath
	}
	var resp struct {
		Key            string   `json:"key"`
		SignatureChain []string `json:"signature_chain"`
	}
	req := map[string]string{"path": path, "purpose": "fleetbox-kms-root-secret"}
	if err := a.call(ctx, "GetKey", req, &resp); err != nil {
		return nil, fmt.Errorf("getting root secret: %w", err)
	}
	b, err := hex.DecodeString(resp.Key)
	resp.Key = ""
	if err != nil {
		return nil, fmt.Errorf("getting root secret: %w: GetKey key is not hex", ErrAgent)
	}
	defer clear(b)
	rs, err := NewRootSecret(b)
	if err != nil {
		return nil, fmt.Errorf("getting root secret from the dstack agent: %w", err)
	}
	return rs, nil
}

// QuoteSource returns an attest.Source that gets quotes from the agent's
// GetQuote, for a KMS that runs in a dstack CVM without configfs-tsm access.
func (a *DstackAgent) QuoteSource() attest.Source { return &dstackSource{a: a} }

type dstackSource struct{ a *DstackAgent }

func (s *dstackSource) GetQuote(ctx context.Context, rd attest.ReportData) ([]byte, error) {
	var resp struct {
		Quote string `json:"quote"`
	}
	if err := s.a.call(ctx, "GetQuote", map[string]string{"report_data": hex.EncodeToString(rd[:])}, &resp); err != nil {
		return nil, fmt.Errorf("getting quote: %w", err)
	}
	q, err := hex.DecodeString(resp.Quote)
	if err != nil || len(q) == 0 {
		return nil, fmt.Errorf("getting quote: %w: GetQuote quote is not hex", ErrAgent)
	}
	return q, nil
}

func (s *dstackSource) Kind() string { return "dstack" }
