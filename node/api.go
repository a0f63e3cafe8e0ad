package node

import (
	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/p2p"
)

// The admin API's JSON shapes (camelCase). Routes, all under /v1 and all
// requiring "Authorization: Bearer <token>" (the token in home/admin.token):
//
//	GET    /v1/status
//	GET    /v1/peers
//	GET    /v1/namespaces
//	POST   /v1/namespaces                                  create; body {} -> NamespaceInfo
//	POST   /v1/namespaces/{ns}/join                        make an identity, subscribe, sync -> JoinResult
//	GET    /v1/namespaces/{ns}                             -> NamespaceInfo with groups
//	POST   /v1/namespaces/{ns}/groups                      GroupCreateRequest -> OpResult
//	GET    /v1/namespaces/{ns}/groups/{g}/members          -> []MemberInfo
//	POST   /v1/namespaces/{ns}/groups/{g}/members          MemberAddRequest -> OpResult
//	DELETE /v1/namespaces/{ns}/groups/{g}/members/{key}    -> OpResult
//	PUT    /v1/namespaces/{ns}/groups/{g}/members/{key}/role          RoleRequest -> OpResult
//	PUT    /v1/namespaces/{ns}/groups/{g}/members/{key}/capabilities  CapabilitiesRequest -> OpResult
//	GET    /v1/namespaces/{ns}/policy                      -> attest.Policy (404 when unset)
//	PUT    /v1/namespaces/{ns}/policy                      attest.Policy -> OpResult
//
// {g} may be "root" for the namespace's root group. {key} is a member's
// signing key in hex. Errors are APIError with a stable code.
// GET /metrics (Prometheus) is served on the same listener without a token.

// Status answers GET /v1/status.
type Status struct {
	PeerID         string   `json:"peerId"`
	Addrs          []string `json:"addrs"`
	Version        string   `json:"version"`
	Uptime         string   `json:"uptime"`
	Namespaces     int      `json:"namespaces"`
	Peers          int      `json:"peers"`
	StoreKeySource string   `json:"storeKeySource"`
}

// NamespaceInfo describes one namespace as this node sees it.
type NamespaceInfo struct {
	ID string `json:"id"`
	// MemberKeys is this node's namespace identity in the form `member add`
	// takes ("fbm1" + hex).
	MemberKeys string      `json:"memberKeys"`
	Ops        uint64      `json:"ops"`
	Pending    int         `json:"pending"`
	Heads      []string    `json:"heads"`
	Groups     []GroupInfo `json:"groups,omitempty"`
	// Members counts the root group's members.
	Members   int  `json:"members"`
	HasPolicy bool `json:"hasPolicy"`
	// Role is this node's role in the root group; empty if not a member.
	Role string `json:"role,omitempty"`
	// Complete is false while ops sealed under group keys this node lacks
	// exist (before its KeyDelivery, or after its removal).
	Complete bool `json:"complete"`
}

// GroupInfo describes a group.
type GroupInfo struct {
	ID      string       `json:"id"`
	Parent  string       `json:"parent,omitempty"`
	HasKey  bool         `json:"hasKey"`
	Members []MemberInfo `json:"members,omitempty"`
}

// MemberInfo describes a member of a group.
type MemberInfo struct {
	Key string `json:"key"`
	// Keys is the member's full identity ("fbm1..." form).
	Keys         string   `json:"keys"`
	Role         string   `json:"role"`
	Capabilities uint32   `json:"capabilities"`
	CapNames     []string `json:"capabilityNames"`
	// InheritedFrom is the ancestor group whose row gives the role.
	InheritedFrom string `json:"inheritedFrom,omitempty"`
}

// JoinResult answers a join: give MemberKeys to an admin, who adds it.
type JoinResult struct {
	Namespace  string `json:"namespace"`
	MemberKeys string `json:"memberKeys"`
}

// GroupCreateRequest creates a subgroup; Parent empty means the root group.
type GroupCreateRequest struct {
	Parent string `json:"parent,omitempty"`
}

// MemberAddRequest adds a member by its MemberKeys ("fbm1..." form).
type MemberAddRequest struct {
	Member       string `json:"member"`
	Role         string `json:"role"`
	Capabilities string `json:"capabilities,omitempty"` // names or a number
}

// RoleRequest sets a member's role.
type RoleRequest struct {
	Role string `json:"role"`
}

// CapabilitiesRequest sets a member's capabilities (names or a number).
type CapabilitiesRequest struct {
	Capabilities string `json:"capabilities"`
}

// OpResult names the op a write produced.
type OpResult struct {
	Op      string `json:"op"`
	GroupID string `json:"groupId,omitempty"`
	// Ops is every op the write produced (a removal also delivers new keys).
	Ops []string `json:"ops,omitempty"`
}

// APIError is every error body.
type APIError struct {
	Error   string `json:"error"`
	Details string `json:"details,omitempty"`
}

// Aliases kept here so the client side (ctl) needs only this package.
type (
	PeerInfo = p2p.PeerInfo
	Policy   = attest.Policy
)
