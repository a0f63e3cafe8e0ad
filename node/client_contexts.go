package node

import (
	"bytes"
	"context"
	"net/http"
	"strings"

	"github.com/fleetbox/fleetbox/node/contexts"
)

// Aliases so the client side (ctl) needs only this package.
type (
	AppListing   = contexts.AppListing
	ContextState = contexts.ContextState
	CallResult   = contexts.CallResult
)

// InstallApp uploads WASM bytes; the node checks and stores them.
func (c *Client) InstallApp(ctx context.Context, wasm []byte) (*AppListing, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.BaseURL, "/")+"/v1/apps", bytes.NewReader(wasm))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/wasm")
	var out AppListing
	return &out, c.send(req, &out)
}

func (c *Client) Apps(ctx context.Context) ([]AppListing, error) {
	var out []AppListing
	return out, c.Do(ctx, http.MethodGet, "/v1/apps", nil, &out)
}

func (c *Client) Contexts(ctx context.Context, ns string) ([]ContextState, error) {
	var out []ContextState
	return out, c.Do(ctx, http.MethodGet, nsPath(ns, "contexts"), nil, &out)
}

func (c *Client) CreateContext(ctx context.Context, ns string, req ContextCreateRequest) (*CallResult, error) {
	var out CallResult
	return &out, c.Do(ctx, http.MethodPost, nsPath(ns, "contexts"), req, &out)
}

func (c *Client) Context(ctx context.Context, ns, id string) (*ContextState, error) {
	var out ContextState
	return &out, c.Do(ctx, http.MethodGet, nsPath(ns, "contexts", id), nil, &out)
}

func (c *Client) DeleteContext(ctx context.Context, ns, id string) (*OpResult, error) {
	var out OpResult
	return &out, c.Do(ctx, http.MethodDelete, nsPath(ns, "contexts", id), nil, &out)
}

func (c *Client) UpgradeContext(ctx context.Context, ns, id, app string) (*OpResult, error) {
	var out OpResult
	return &out, c.Do(ctx, http.MethodPut, nsPath(ns, "contexts", id, "application"), ContextUpgradeRequest{Application: app}, &out)
}

// Call runs a mutating call ("call") or a query ("query").
func (c *Client) Call(ctx context.Context, ns, id, kind string, req CallRequest) (*CallResult, error) {
	var out CallResult
	return &out, c.Do(ctx, http.MethodPost, nsPath(ns, "contexts", id, kind), req, &out)
}
