package handlers_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// call sends one JSON request as a customer's script would and returns the
// status, the response headers and the decoded body.
func call(t *testing.T, srv *apptest.Server, method, path, token string, body any) (int, http.Header, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: body is not a JSON object: %v: %s", method, path, err, raw)
		}
	}
	return resp.StatusCode, resp.Header, out
}

// must is call that fails the test unless the status is want.
func must(t *testing.T, srv *apptest.Server, want int, method, path, token string, body any) map[string]any {
	t.Helper()
	status, _, out := call(t, srv, method, path, token, body)
	if status != want {
		t.Fatalf("%s %s = %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// world is an organisation with one member of each role, and an outsider
// who owns another organisation.
type world struct {
	srv                               *apptest.Server
	org, otherOrg                     string
	owner, admin, developer, viewer   string // tokens
	ownerID, adminID, devID, viewerID string
	outsider                          string
	victimID                          string // a viewer for writes to act on
	ownerKeyID, ownerKey              string // an API key the owner created (role viewer)
}

func newWorld(t *testing.T, srv *apptest.Server) *world {
	t.Helper()
	w := &world{srv: srv}
	w.owner = srv.Token(t, "owner@example.com")
	w.admin = srv.Token(t, "admin@example.com")
	w.developer = srv.Token(t, "dev@example.com")
	w.viewer = srv.Token(t, "viewer@example.com")
	w.outsider = srv.Token(t, "outsider@example.com")
	w.org = must(t, srv, 201, "POST", "/v1/orgs", w.owner, map[string]any{"name": "Acme"})["id"].(string)
	w.otherOrg = must(t, srv, 201, "POST", "/v1/orgs", w.outsider, map[string]any{"name": "Other"})["id"].(string)
	w.ownerID = must(t, srv, 200, "GET", "/v1/me", w.owner, nil)["user"].(map[string]any)["id"].(string)
	for _, m := range []struct {
		email, role string
		id          *string
	}{
		{"admin@example.com", "admin", &w.adminID},
		{"dev@example.com", "developer", &w.devID},
		{"viewer@example.com", "viewer", &w.viewerID},
		{"victim@example.com", "viewer", &w.victimID},
	} {
		out := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/members", w.owner, map[string]any{"email": m.email, "role": m.role})
		*m.id = out["user"].(map[string]any)["id"].(string)
	}
	key := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/api-keys", w.owner, map[string]any{"name": "ci", "role": "viewer"})
	w.ownerKeyID, w.ownerKey = key["id"].(string), key["secret"].(string)
	return w
}

func (w *world) token(role string) string {
	switch role {
	case "owner":
		return w.owner
	case "admin":
		return w.admin
	case "developer":
		return w.developer
	case "viewer":
		return w.viewer
	case "outsider":
		return w.outsider
	}
	return ""
}
