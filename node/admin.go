package node

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/internal/strictjson"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxAdminBody bounds request bodies (a policy is the largest).
const maxAdminBody = attest.MaxPolicySize + 4096

// errBadRequest marks input errors found by the admin layer itself.
var errBadRequest = errors.New("bad request")

func badRequest(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, a...))
}

// adminHandler builds the admin API's routes (listed in api.go).
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
	route := func(pattern string, h func(r *http.Request) (any, error)) {
		mux.Handle(pattern, n.auth(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
			v, err := h(r)
			if err != nil {
				n.writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		}))
	}
	route("GET /v1/status", func(r *http.Request) (any, error) { return n.Status(), nil })
	route("GET /v1/peers", func(r *http.Request) (any, error) {
		p := n.net.Peers()
		if p == nil {
			p = []PeerInfo{}
		}
		return p, nil
	})
	route("GET /v1/namespaces", func(r *http.Request) (any, error) { return n.Namespaces() })
	route("POST /v1/namespaces", func(r *http.Request) (any, error) { return n.CreateNamespace(r.Context()) })
	route("POST /v1/namespaces/{ns}/join", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.JoinNamespace(r.Context(), ns)
	})
	route("POST /v1/namespaces/{ns}/fleet-join", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.FleetJoin(r.Context(), ns)
	})
	route("DELETE /v1/namespaces/{ns}/fleet-join", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.FleetLeave(ns)
	})
	route("GET /v1/namespaces/{ns}/fleet", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.FleetStatus(ns)
	})
	route("GET /v1/namespaces/{ns}/fleet/replicas", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.FleetReplicas(ns)
	})
	route("GET /v1/namespaces/{ns}", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.Namespace(ns, true)
	})
	route("POST /v1/namespaces/{ns}/groups", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		var req GroupCreateRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		parent := ns.Root()
		if req.Parent != "" && req.Parent != "root" {
			if parent, err = governance.ParseGroupID(req.Parent); err != nil {
				return nil, badRequest("%v", err)
			}
		}
		return n.CreateGroup(r.Context(), ns, parent)
	})
	route("GET /v1/namespaces/{ns}/groups/{g}/members", func(r *http.Request) (any, error) {
		ns, g, err := pathGroup(r)
		if err != nil {
			return nil, err
		}
		return n.Members(ns, g)
	})
	route("POST /v1/namespaces/{ns}/groups/{g}/members", func(r *http.Request) (any, error) {
		ns, g, err := pathGroup(r)
		if err != nil {
			return nil, err
		}
		var req MemberAddRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		keys, err := governance.ParseMemberKeys(req.Member)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		role, err := governance.ParseRole(req.Role)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		caps, err := governance.ParseCapabilities(req.Capabilities)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return n.AddMember(r.Context(), ns, g, keys, role, caps)
	})
	route("DELETE /v1/namespaces/{ns}/groups/{g}/members/{key}", func(r *http.Request) (any, error) {
		ns, g, key, err := pathMember(r)
		if err != nil {
			return nil, err
		}
		return n.RemoveMember(r.Context(), ns, g, key)
	})
	route("PUT /v1/namespaces/{ns}/groups/{g}/members/{key}/role", func(r *http.Request) (any, error) {
		ns, g, key, err := pathMember(r)
		if err != nil {
			return nil, err
		}
		var req RoleRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		role, err := governance.ParseRole(req.Role)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return n.SetRole(r.Context(), ns, g, key, role)
	})
	route("PUT /v1/namespaces/{ns}/groups/{g}/members/{key}/capabilities", func(r *http.Request) (any, error) {
		ns, g, key, err := pathMember(r)
		if err != nil {
			return nil, err
		}
		var req CapabilitiesRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		caps, err := governance.ParseCapabilities(req.Capabilities)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return n.SetCapabilities(r.Context(), ns, g, key, caps)
	})
	route("GET /v1/namespaces/{ns}/policy", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		return n.Policy(ns)
	})
	route("PUT /v1/namespaces/{ns}/policy", func(r *http.Request) (any, error) {
		ns, err := pathNS(r)
		if err != nil {
			return nil, err
		}
		body, err := readBody(r)
		if err != nil {
			return nil, err
		}
		p, err := attest.ParsePolicy(body)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return n.SetPolicy(r.Context(), ns, p)
	})
	n.contextRoutes(mux, route)
	return mux
}

// auth checks the bearer token in constant time.
func (n *Node) auth(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(n.token)) != 1 {
			n.metrics.adminRequests.WithLabelValues("unauthorized").Inc()
			writeJSON(w, http.StatusUnauthorized, APIError{Error: "unauthorized", Details: "missing or wrong bearer token"})
			return
		}
		next(w, r)
	})
}

func pathNS(r *http.Request) (governance.NamespaceID, error) {
	ns, err := governance.ParseNamespaceID(r.PathValue("ns"))
	if err != nil {
		return ns, badRequest("%v", err)
	}
	return ns, nil
}

func pathGroup(r *http.Request) (governance.NamespaceID, governance.GroupID, error) {
	ns, err := pathNS(r)
	if err != nil {
		return ns, governance.GroupID{}, err
	}
	gs := r.PathValue("g")
	if gs == "root" {
		return ns, ns.Root(), nil
	}
	g, err := governance.ParseGroupID(gs)
	if err != nil {
		return ns, g, badRequest("%v", err)
	}
	return ns, g, nil
}

func pathMember(r *http.Request) (governance.NamespaceID, governance.GroupID, governance.PublicKey, error) {
	var key governance.PublicKey
	ns, g, err := pathGroup(r)
	if err != nil {
		return ns, g, key, err
	}
	ks := r.PathValue("key")
	if mk, err := governance.ParseMemberKeys(ks); err == nil {
		return ns, g, mk.Signing, nil
	}
	if err := key.UnmarshalText([]byte(ks)); err != nil {
		return ns, g, key, badRequest("%v", err)
	}
	return ns, g, key, nil
}

// readBody reads a request body that must be JSON: Content-Type
// application/json (so a browser's cross-site "simple" POST, which cannot
// set it, never reaches a handler) and at most maxAdminBody bytes.
func readBody(r *http.Request) ([]byte, error) {
	if err := requireJSON(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			// Wrapped, not formatted, so that writeError answers 413.
			return nil, fmt.Errorf("request body over the %d-byte limit: %w", mbe.Limit, err)
		}
		return nil, badRequest("reading body: %v", err)
	}
	return b, nil
}

// readJSON decodes a JSON body strictly: unknown, duplicate and miscased
// keys and trailing data are refused.
func readJSON(r *http.Request, v any) error {
	b, err := readBody(r)
	if err != nil {
		return err
	}
	if err := strictjson.Unmarshal(b, v); err != nil {
		return badRequest("decoding JSON body: %v", err)
	}
	return nil
}

// errUnsupportedMedia marks a body that is not declared as JSON (415).
var errUnsupportedMedia = errors.New("unsupported media type")

// requireJSON checks a Content-Type header for application/json.
func requireJSON(ct string) error {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fmt.Errorf("%w: Content-Type %q, want application/json", errUnsupportedMedia, ct)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// errNotFound is returned for things that do not exist (a policy not set).
var errNotFound = errors.New("not found")

func (n *Node) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code, name := http.StatusInternalServerError, "internal"
	var mbe *http.MaxBytesError
	if c, nm, ok := contextError(err); ok {
		code, name = c, nm
	}
	switch {
	case name != "internal":
	case errors.As(err, &mbe):
		code, name = http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, errUnsupportedMedia):
		code, name = http.StatusUnsupportedMediaType, "unsupported_media_type"
	case errors.Is(err, errBadRequest), errors.Is(err, governance.ErrMalformed), errors.Is(err, governance.ErrOversize):
		code, name = http.StatusBadRequest, "bad_request"
	case errors.Is(err, errNotFound), errors.Is(err, governance.ErrUnknownNamespace), errors.Is(err, governance.ErrUnknownGroup):
		code, name = http.StatusNotFound, "not_found"
	case errors.Is(err, governance.ErrNotMember), errors.Is(err, governance.ErrNotAuthorized), errors.Is(err, governance.ErrReadOnly):
		code, name = http.StatusForbidden, "forbidden"
	case errors.Is(err, governance.ErrInvalid), errors.Is(err, governance.ErrNoKey), errors.Is(err, governance.ErrNoIdentity):
		code, name = http.StatusConflict, "conflict"
	}
	n.metrics.adminRequests.WithLabelValues(name).Inc()
	if code == http.StatusInternalServerError {
		n.log.Error("admin API", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, APIError{Error: name, Details: err.Error()})
}
