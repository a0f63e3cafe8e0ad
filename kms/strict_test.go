package kms_test

import (
	"net/http"
	"testing"

	"github.com/fleetbox/fleetbox/kms/api"
)

// A POST must declare JSON (415 otherwise), so a web page's cross-site
// "simple" POST (text/plain, form) cannot ask for challenges or keys.
func TestPostRequiresJSONContentType(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	body := `{"peerId":"` + n.id + `"}`
	for name, ct := range map[string]string{
		"text/plain": "text/plain", "form": "application/x-www-form-urlencoded", "multipart": "multipart/form-data; boundary=x", "none": "",
	} {
		for _, path := range []string{api.PathChallenge, api.PathGetKey, api.PathAttest} {
			var e api.Error
			if st := h.request(t, http.MethodPost, path, ct, body, &e); st != http.StatusUnsupportedMediaType || e.Error != api.CodeUnsupportedMediaType {
				t.Errorf("%s %s: %d %s, want 415 %s", name, path, st, e.Error, api.CodeUnsupportedMediaType)
			}
		}
	}
	// Keys spelled otherwise or given twice are shape errors at the server.
	for name, b := range map[string]string{
		"PEERID":    `{"PEERID":"` + n.id + `"}`,
		"duplicate": `{"peerId":"x","peerId":"` + n.id + `"}`,
	} {
		if st, resp := h.post(t, api.PathChallenge, []byte(b)); st != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", name, st, resp)
		}
	}
	if st, resp := h.post(t, api.PathChallenge, []byte(body)); st != http.StatusOK {
		t.Fatalf("valid challenge: %d %s", st, resp)
	}
}
