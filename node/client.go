package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// Client talks to a node's admin API. `fleetbox ctl` uses it.
type Client struct {
	// BaseURL is like "http://127.0.0.1:7457".
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// ClientFromHome builds a client from a node home: the address the running
// node bound (home/admin.addr), else the one in its config file, and the
// token in home/admin.token.
func ClientFromHome(home string) (*Client, error) {
	fc, err := LoadFileConfig(home)
	if err != nil {
		return nil, err
	}
	tok, err := ReadAdminToken(filepath.Join(home, AdminTokenFile))
	if err != nil {
		return nil, err
	}
	addr := fc.AdminAddr
	if b, err := os.ReadFile(filepath.Join(home, AdminAddrFile)); err == nil {
		addr = strings.TrimSpace(string(b)) // what the running node bound
	} else if addr == "" {
		addr = DefaultAdminAddr
	}
	return &Client{BaseURL: "http://" + addr, Token: tok}, nil
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Status int
	APIError
}

func (e *StatusError) Error() string {
	if e.Details != "" {
		return fmt.Sprintf("%s (HTTP %d): %s", e.APIError.Error, e.Status, e.Details)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.APIError.Error, e.Status)
}

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (unless out is nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

// send sends an authorised request and decodes a JSON answer into out
// (unless out is nil); a non-2xx answer is a *StatusError.
func (c *Client) send(req *http.Request, out any) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling the node's admin API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading admin API answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Status: resp.StatusCode}
		if strictjson.UnmarshalKnown(data, &se.APIError) != nil || se.APIError.Error == "" {
			se.APIError = APIError{Error: http.StatusText(resp.StatusCode), Details: strings.TrimSpace(string(data))}
		}
		return se
	}
	if out == nil {
		return nil
	}
	if err := strictjson.UnmarshalKnown(data, out); err != nil {
		return fmt.Errorf("decoding admin API answer: %w", err)
	}
	return nil
}

func nsPath(ns string, rest ...string) string {
	p := "/v1/namespaces/" + url.PathEscape(ns)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

func groupOrRoot(g string) string {
	if g == "" {
		return "root"
	}
	return g
}

func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.Do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

func (c *Client) Peers(ctx context.Context) ([]PeerInfo, error) {
	var p []PeerInfo
	return p, c.Do(ctx, http.MethodGet, "/v1/peers", nil, &p)
}

func (c *Client) Namespaces(ctx context.Context) ([]NamespaceInfo, error) {
	var l []NamespaceInfo
	return l, c.Do(ctx, http.MethodGet, "/v1/namespaces", nil, &l)
}

func (c *Client) CreateNamespace(ctx context.Context) (*NamespaceInfo, error) {
	var n NamespaceInfo
	return &n, c.Do(ctx, http.MethodPost, "/v1/namespaces", struct{}{}, &n)
}

func (c *Client) JoinNamespace(ctx context.Context, ns string) (*JoinResult, error) {
	var j JoinResult
	return &j, c.Do(ctx, http.MethodPost, nsPath(ns, "join"), struct{}{}, &j)
}

func (c *Client) Namespace(ctx context.Context, ns string) (*NamespaceInfo, error) {
	var n NamespaceInfo
	return &n, c.Do(ctx, http.MethodGet, nsPath(ns), nil, &n)
}

func (c *Client) CreateGroup(ctx context.Context, ns, parent string) (*OpResult, error) {
	var r OpResult
	return &r, c.Do(ctx, http.MethodPost, nsPath(ns, "groups"), GroupCreateRequest{Parent: parent}, &r)
}

func (c *Client) Members(ctx context.Context, ns, group string) ([]MemberInfo, error) {
	var m []MemberInfo
	return m, c.Do(ctx, http.MethodGet, nsPath(ns, "groups", groupOrRoot(group), "members"), nil, &m)
}

func (c *Client) AddMember(ctx context.Context, ns, group string, req MemberAddRequest) (*OpResult, error) {
	var r OpResult
	return &r, c.Do(ctx, http.MethodPost, nsPath(ns, "groups", groupOrRoot(group), "members"), req, &r)
}

func (c *Client) RemoveMember(ctx context.Context, ns, group, member string) (*OpResult, error) {
	var r OpResult
	return &r, c.Do(ctx, http.MethodDelete, nsPath(ns, "groups", groupOrRoot(group), "members", member), nil, &r)
}

func (c *Client) SetRole(ctx context.Context, ns, group, member, role string) (*OpResult, error) {
	var r OpResult
	return &r, c.Do(ctx, http.MethodPut, nsPath(ns, "groups", groupOrRoot(group), "members", member, "role"), RoleRequest{Role: role}, &r)
}

func (c *Client) SetCapabilities(ctx context.Context, ns, group, member, caps string) (*OpResult, error) {
	var r OpResult
	return &r, c.Do(ctx, http.MethodPut, nsPath(ns, "groups", groupOrRoot(group), "members", member, "capabilities"), CapabilitiesRequest{Capabilities: caps}, &r)
}

func (c *Client) Policy(ctx context.Context, ns string) (*Policy, error) {
	var p Policy
	return &p, c.Do(ctx, http.MethodGet, nsPath(ns, "policy"), nil, &p)
}

func (c *Client) SetPolicy(ctx context.Context, ns string, p *Policy) (*OpResult, error) {
	var r OpResult
	return &r, c.Do(ctx, http.MethodPut, nsPath(ns, "policy"), p, &r)
}

// FleetJoin makes the node a candidate fleet replica of ns.
func (c *Client) FleetJoin(ctx context.Context, ns string) (*FleetJoinResult, error) {
	var out FleetJoinResult
	return &out, c.Do(ctx, http.MethodPost, nsPath(ns, "fleet-join"), struct{}{}, &out)
}

// FleetLeave stops announcing for ns (an admitted replica stays a member).
func (c *Client) FleetLeave(ctx context.Context, ns string) (*FleetStatus, error) {
	var out FleetStatus
	return &out, c.Do(ctx, http.MethodDelete, nsPath(ns, "fleet-join"), nil, &out)
}

// FleetStatus reports the node's standing as a fleet replica of ns.
func (c *Client) FleetStatus(ctx context.Context, ns string) (*FleetStatus, error) {
	var out FleetStatus
	return &out, c.Do(ctx, http.MethodGet, nsPath(ns, "fleet"), nil, &out)
}

// FleetReplicas lists the replicas ever admitted to ns, judged against the
// namespace's current policy.
func (c *Client) FleetReplicas(ctx context.Context, ns string) ([]ReplicaInfo, error) {
	var out []ReplicaInfo
	return out, c.Do(ctx, http.MethodGet, nsPath(ns, "fleet", "replicas"), nil, &out)
}

// IsNotFound reports whether err is a 404 from the admin API.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == http.StatusNotFound
}
