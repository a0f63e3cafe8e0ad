package node

import (
	"encoding/base64"
	"errors"
	"io"
	"net/http"

	"github.com/fleetbox/fleetbox/node/contexts"
	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
	"github.com/fleetbox/fleetbox/node/governance"
)

// The admin API's context routes (see api.go for the others):
//
//	POST   /v1/apps                                  WASM bytes -> contexts.AppListing
//	GET    /v1/apps                                  -> []contexts.AppListing
//	GET    /v1/namespaces/{ns}/contexts              -> []contexts.ContextState
//	POST   /v1/namespaces/{ns}/contexts              ContextCreateRequest -> contexts.CallResult
//	GET    /v1/namespaces/{ns}/contexts/{ctx}        -> contexts.ContextState (with the state root)
//	DELETE /v1/namespaces/{ns}/contexts/{ctx}        -> OpResult
//	PUT    /v1/namespaces/{ns}/contexts/{ctx}/application  ContextUpgradeRequest -> OpResult
//	POST   /v1/namespaces/{ns}/contexts/{ctx}/call   CallRequest -> contexts.CallResult
//	POST   /v1/namespaces/{ns}/contexts/{ctx}/query  CallRequest -> contexts.CallResult

// ContextCreateRequest creates a context. Group empty means the root group.
type ContextCreateRequest struct {
	Application string `json:"application"`
	Group       string `json:"group,omitempty"`
	// Init is the init method's input as text; InitBase64 as bytes.
	Init       string `json:"init,omitempty"`
	InitBase64 string `json:"initBase64,omitempty"`
}

// ContextUpgradeRequest points a context at another application.
type ContextUpgradeRequest struct {
	Application string `json:"application"`
}

// CallRequest calls a method. Input is text; InputBase64 bytes (one of
// them at most).
type CallRequest struct {
	Method      string `json:"method"`
	Input       string `json:"input,omitempty"`
	InputBase64 string `json:"inputBase64,omitempty"`
}

func payload(text, b64 string) ([]byte, error) {
	switch {
	case text != "" && b64 != "":
		return nil, badRequest("give the input as text or as base64, not both")
	case b64 != "":
		b, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, badRequest("base64 input: %v", err)
		}
		return b, nil
	}
	return []byte(text), nil
}

func pathContext(r *http.Request) (governance.NamespaceID, governance.ContextID, error) {
	ns, err := pathNS(r)
	if err != nil {
		return ns, governance.ContextID{}, err
	}
	c, err := governance.ParseContextID(r.PathValue("ctx"))
	if err != nil {
		return ns, c, badRequest("%v", err)
	}
	return ns, c, nil
}

func (n *Node) contextRoutes(mux *http.ServeMux, route func(string, func(r *http.Request) (any, error))) {
	mux.Handle("POST /v1/apps", n.auth(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, wasmhost.MaxAppSize)
		wasm, err := io.ReadAll(r.Body)
		var out any
		if err == nil {
			out, err = n.ctxs.Install(r.Context(), wasm)
		}
		if err != nil {
			n.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}))
	route("GET /v1/apps", func(r *http.Request) (any, error) { return n.ctxs.Applications() })
	route("GET /v1/namespaces/{ns}/contexts", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.ctxs.List(ns)
	})
	route("POST /v1/namespaces/{ns}/contexts", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		var req ContextCreateRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		app, err := governance.ParseApplicationID(req.Application)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		g := ns.Root()
		if req.Group != "" && req.Group != "root" {
			if g, err = governance.ParseGroupID(req.Group); err != nil {
				return nil, badRequest("%v", err)
			}
		}
		init, err := payload(req.Init, req.InitBase64)
		if err != nil {
			return nil, err
		}
		res, err := n.ctxs.Create(r.Context(), ns, g, app, init)
		if err == nil {
			n.publish(r.Context(), ns, res.Wires)
		}
		return res, err
	})
	route("GET /v1/namespaces/{ns}/contexts/{ctx}", func(r *http.Request) (any, error) {
		ns, c, err := pathContext(r)
		if err != nil {
			return nil, err
		}
		return n.ctxs.Show(ns, c)
	})
	route("DELETE /v1/namespaces/{ns}/contexts/{ctx}", func(r *http.Request) (any, error) {
		ns, c, err := pathContext(r)
		if err != nil {
			return nil, err
		}
		return n.write(r.Context(), ns, "deleting context", func() ([][]byte, error) { return n.ctxs.Delete(r.Context(), ns, c) })
	})
	route("PUT /v1/namespaces/{ns}/contexts/{ctx}/application", func(r *http.Request) (any, error) {
		ns, c, err := pathContext(r)
		if err != nil {
			return nil, err
		}
		var req ContextUpgradeRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		app, err := governance.ParseApplicationID(req.Application)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return n.write(r.Context(), ns, "upgrading context", func() ([][]byte, error) { return n.ctxs.Upgrade(r.Context(), ns, c, app) })
	})
	for _, kind := range []string{"call", "query"} {
		route("POST /v1/namespaces/{ns}/contexts/{ctx}/"+kind, func(r *http.Request) (any, error) {
			ns, c, err := pathContext(r)
			if err != nil {
				return nil, err
			}
			var req CallRequest
			if err := readJSON(r, &req); err != nil {
				return nil, err
			}
			in, err := payload(req.Input, req.InputBase64)
			if err != nil {
				return nil, err
			}
			if kind == "query" {
				return n.ctxs.Query(r.Context(), ns, c, req.Method, in)
			}
			res, err := n.ctxs.Call(r.Context(), ns, c, req.Method, in)
			if err == nil {
				n.publish(r.Context(), ns, res.Wires)
			}
			return res, err
		})
	}
}

// contextError maps the contexts' errors to admin API codes.
func contextError(err error) (int, string, bool) {
	switch {
	case errors.Is(err, governance.ErrUnknownContext), errors.Is(err, contexts.ErrAppUnavailable), errors.Is(err, wasmhost.ErrNoMethod):
		return http.StatusNotFound, "not_found", true
	case errors.Is(err, wasmhost.ErrNotWasm), errors.Is(err, wasmhost.ErrInvalidModule), errors.Is(err, wasmhost.ErrBadImport),
		errors.Is(err, wasmhost.ErrBadExports), errors.Is(err, wasmhost.ErrInputTooLarge):
		return http.StatusBadRequest, "bad_request", true
	case errors.Is(err, wasmhost.ErrAppTooLarge):
		return http.StatusRequestEntityTooLarge, "too_large", true
	case errors.Is(err, wasmhost.ErrRefused):
		return http.StatusUnprocessableEntity, "refused", true
	case wasmhost.Reason(err) != "other":
		return http.StatusUnprocessableEntity, "call_failed", true
	}
	return 0, "", false
}
