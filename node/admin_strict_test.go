package node

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// adminDo sends a raw request to the admin API with the node's token.
func adminDo(t *testing.T, n *tnode, method, path, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, n.AdminURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+n.Token())
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The admin API's bodies: JSON declared, within the limit, decoded exactly.
func TestAdminBodiesAreStrict(t *testing.T) {
	n := startNode(t, "strict", newHome(t))
	created, err := n.client.CreateNamespace(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	groups := "/v1/namespaces/" + created.ID + "/groups"
	policy := "/v1/namespaces/" + created.ID + "/policy"
	const okPolicy = `{"allowedMrtd":["*"],"allowedRtmr0":["*"],"allowedRtmr1":["*"],"allowedRtmr2":["*"],"allowedRtmr3":["*"],"acceptMock":false}`
	cases := map[string]struct {
		method, path, ct, body string
		want                   int
	}{
		"text/plain POST (a browser's simple request)": {"POST", groups, "text/plain", `{"parent":"root"}`, http.StatusUnsupportedMediaType},
		"form POST":                  {"POST", groups, "application/x-www-form-urlencoded", `{"parent":"root"}`, http.StatusUnsupportedMediaType},
		"no Content-Type on PUT":     {"PUT", policy, "", okPolicy, http.StatusUnsupportedMediaType},
		"trailing second object":     {"POST", groups, "application/json", `{"parent":"root"}{"parent":"x"}`, http.StatusBadRequest},
		"duplicate key":              {"POST", groups, "application/json", `{"parent":"root","parent":"root"}`, http.StatusBadRequest},
		"key in another case":        {"POST", groups, "application/json", `{"Parent":"root"}`, http.StatusBadRequest},
		"policy acceptmock override": {"PUT", policy, "application/json", strings.TrimSuffix(okPolicy, "}") + `,"acceptmock":true}`, http.StatusBadRequest},
		"oversize body":              {"PUT", policy, "application/json", `{"allowedMrtd":["` + strings.Repeat("a", maxAdminBody) + `"]}`, http.StatusRequestEntityTooLarge},
		"valid, with charset":        {"POST", groups, "application/json; charset=utf-8", `{"parent":"root"}`, http.StatusOK},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, body := adminDo(t, n, tc.method, tc.path, tc.ct, tc.body)
			if code != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, code, body, tc.want)
			}
		})
	}
}

func TestLoadFileConfigIsExact(t *testing.T) {
	for name, doc := range map[string]string{
		"duplicate adminAddr": `{"listenAddrs":[],"adminAddr":"127.0.0.1:1","adminAddr":"0.0.0.0:1","heartbeatInterval":"30s"}`,
		"AdminAddr":           `{"listenAddrs":[],"AdminAddr":"0.0.0.0:1","heartbeatInterval":"30s"}`,
	} {
		t.Run(name, func(t *testing.T) {
			home := t.TempDir()
			if err := os.WriteFile(filepath.Join(home, ConfigFile), []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			if fc, err := LoadFileConfig(home); err == nil {
				t.Fatalf("accepted: %+v", fc)
			}
		})
	}
}
