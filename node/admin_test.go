package node

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
)

func TestAdminAPI(t *testing.T) {
	ctx := context.Background()
	n := startNode(t, "admin", newHome(t))

	// Every /v1 route needs the token; a wrong one is refused.
	for name, tok := range map[string]string{"wrong": "nope", "empty": "", "prefix": n.Token()[:10]} {
		bad := &Client{BaseURL: n.AdminURL(), Token: tok}
		var se *StatusError
		if _, err := bad.Status(ctx); !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
			t.Fatalf("%s token: %v, want 401", name, err)
		}
	}
	// /metrics is open on the loopback listener.
	resp, err := http.Get(n.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}

	st, err := n.client.Status(ctx)
	if err != nil || st.PeerID != n.net.ID().String() || len(st.Addrs) == 0 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	created, err := n.client.CreateNamespace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ns := created.ID
	if created.Role != "Admin" || created.Members != 1 || !strings.HasPrefix(created.MemberKeys, "fbm1") {
		t.Fatalf("created: %+v", created)
	}

	// Policy: none yet (404), then a round trip.
	if _, err := n.client.Policy(ctx, ns); !IsNotFound(err) {
		t.Fatalf("policy before set: %v, want 404", err)
	}
	p, err := attest.ParsePolicy([]byte(`{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.SetPolicy(ctx, ns, p); err != nil {
		t.Fatal(err)
	}
	got, err := n.client.Policy(ctx, ns)
	if err != nil || !got.AcceptMock || got.AllowedMrtd[0] != "*" {
		t.Fatalf("policy after set: %+v, %v", got, err)
	}

	// Subgroup, member with capabilities, role change, removal.
	g, err := n.client.CreateGroup(ctx, ns, "")
	if err != nil || g.GroupID == "" {
		t.Fatalf("group create: %+v, %v", g, err)
	}
	_, m := outsider(t)
	if _, err := n.client.AddMember(ctx, ns, g.GroupID, MemberAddRequest{Member: m.String(), Role: "Member", Capabilities: "MANAGE_MEMBERS,CAN_CREATE_SUBGROUP"}); err != nil {
		t.Fatal(err)
	}
	key := m.Signing.String()
	if _, err := n.client.SetRole(ctx, ns, g.GroupID, key, "ReadOnly"); err != nil {
		t.Fatal(err)
	}
	ms, err := n.client.Members(ctx, ns, g.GroupID)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mi := range ms {
		if mi.Key == key {
			found = mi.Role == "ReadOnly" && mi.Capabilities == 8|32
		}
	}
	if !found {
		t.Fatalf("member list: %+v", ms)
	}
	if _, err := n.client.RemoveMember(ctx, ns, g.GroupID, key); err != nil {
		t.Fatal(err)
	}
	info, err := n.client.Namespace(ctx, ns)
	if err != nil || len(info.Groups) != 2 || !info.HasPolicy {
		t.Fatalf("show: %+v, %v", info, err)
	}

	// Input errors name the problem with stable codes.
	cases := map[string]struct {
		call func() error
		code int
	}{
		"bad namespace id": {func() error { _, err := n.client.Namespace(ctx, "zz"); return err }, http.StatusBadRequest},
		"unknown namespace": {func() error {
			_, err := n.client.Namespace(ctx, strings.Repeat("ab", 32))
			return err
		}, http.StatusNotFound},
		"bad role": {func() error {
			_, err := n.client.AddMember(ctx, ns, "", MemberAddRequest{Member: m.String(), Role: "King"})
			return err
		}, http.StatusBadRequest},
		"bad member keys": {func() error {
			_, err := n.client.AddMember(ctx, ns, "", MemberAddRequest{Member: "fbm1zz", Role: "Member"})
			return err
		}, http.StatusBadRequest},
		"unknown group": {func() error { _, err := n.client.Members(ctx, ns, strings.Repeat("cd", 32)); return err }, http.StatusNotFound},
		"ReadOnlyTee by hand": {func() error {
			_, err := n.client.AddMember(ctx, ns, "", MemberAddRequest{Member: m.String(), Role: "ReadOnlyTee"})
			return err
		}, http.StatusForbidden},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var se *StatusError
			if err := c.call(); !errors.As(err, &se) || se.Status != c.code {
				t.Fatalf("got %v, want HTTP %d", err, c.code)
			}
		})
	}
}
