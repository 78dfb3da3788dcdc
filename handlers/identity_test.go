package handlers_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// TestIsolation: a member of one organisation asking for anything of another,
// by id or in a list, gets 404 and never a row.
func TestIsolation(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	b := w.otherOrg
	other := must(t, srv, 201, "POST", "/v1/orgs/"+b+"/members", w.outsider, map[string]any{"email": "b-member@example.com", "role": "viewer"})
	bUser := other["user"].(map[string]any)["id"].(string)
	bKey := must(t, srv, 201, "POST", "/v1/orgs/"+b+"/api-keys", w.outsider, map[string]any{"name": "b", "role": "viewer"})["id"].(string)

	for _, tok := range []struct{ name, token string }{{"owner of A", w.owner}, {"API key of A", w.ownerKey}} {
		for _, req := range []struct {
			method, path string
			body         any
		}{
			{"GET", "/v1/orgs/" + b, nil},
			{"PATCH", "/v1/orgs/" + b, map[string]any{"name": "x"}},
			{"DELETE", "/v1/orgs/" + b, nil},
			{"GET", "/v1/orgs/" + b + "/members", nil},
			{"POST", "/v1/orgs/" + b + "/members", map[string]any{"email": "x@example.com", "role": "viewer"}},
			{"PATCH", "/v1/orgs/" + b + "/members/" + bUser, map[string]any{"role": "viewer"}},
			{"DELETE", "/v1/orgs/" + b + "/members/" + bUser, nil},
			{"GET", "/v1/orgs/" + b + "/api-keys", nil},
			{"POST", "/v1/orgs/" + b + "/api-keys", map[string]any{"name": "x", "role": "viewer"}},
			{"DELETE", "/v1/orgs/" + b + "/api-keys/" + bKey, nil},
			{"GET", "/v1/orgs/" + b + "/audit-events", nil},
			// B's member and key through A's path: still not found.
			{"PATCH", "/v1/orgs/" + w.org + "/members/" + bUser, map[string]any{"role": "viewer"}},
			{"DELETE", "/v1/orgs/" + w.org + "/members/" + bUser, nil},
			{"DELETE", "/v1/orgs/" + w.org + "/api-keys/" + bKey, nil},
		} {
			t.Run(tok.name+" "+req.method+" "+req.path, func(t *testing.T) {
				status, _, out := call(t, srv, req.method, req.path, tok.token, req.body)
				// On B's paths everything is 404. On A's own paths the viewer key
				// may be refused for its role first (403), which says nothing of B.
				onA := strings.HasPrefix(req.path, "/v1/orgs/"+w.org)
				if status != http.StatusNotFound && !(onA && tok.name == "API key of A" && status == http.StatusForbidden) {
					t.Fatalf("status %d, want 404: %v", status, out)
				}
				if strings.Contains(fmt.Sprint(out), "Other") {
					t.Fatalf("response leaks B's data: %v", out)
				}
			})
		}
	}
	list := must(t, srv, 200, "GET", "/v1/orgs", w.owner, nil)["items"].([]any)
	for _, o := range list {
		if o.(map[string]any)["id"] == b {
			t.Fatal("org list of A's owner contains B")
		}
	}
	keyList := must(t, srv, 200, "GET", "/v1/orgs", w.ownerKey, nil)["items"].([]any)
	if len(keyList) != 1 || keyList[0].(map[string]any)["id"] != w.org {
		t.Fatalf("an API key lists exactly its own org, got %v", keyList)
	}
	// B's owner still sees B intact.
	must(t, srv, 200, "GET", "/v1/orgs/"+b+"/members", w.outsider, nil)
}

func TestBadCredentials(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	prov := srv.Provider(t)
	ctx := context.Background()
	expired, err := prov.Mint(ctx, "owner@example.com", "", -time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged := w.owner[:len(w.owner)-4] + "AAAA"
	// Same database, so same signing keys: only the claim under test is wrong.
	wrongIssuer := mintWith(t, srv, "https://elsewhere.example.com/dev/oidc", app.DevAudience)
	wrongAudience := mintWith(t, srv, app.DevIssuer(apptest.PublicURL), "someone-else")
	tests := []struct {
		name, header string
		wantStatus   int
		wantAuth     string
	}{
		{"no token", "", 401, "Bearer"},
		{"expired", "Bearer " + expired, 401, `error="invalid_token"`},
		{"forged signature", "Bearer " + forged, 401, `error="invalid_token"`},
		{"wrong issuer", "Bearer " + wrongIssuer, 401, `error="invalid_token"`},
		{"wrong audience", "Bearer " + wrongAudience, 401, `error="invalid_token"`},
		{"garbage", "Bearer not-a-jwt", 401, `error="invalid_token"`},
		{"wrong scheme", "Basic dXNlcjpwYXNz", 401, `error="invalid_request"`},
		{"unknown API key", "Bearer flk_00000000000000000000000000000000_nope", 401, `error="invalid_token"`},
		{"malformed API key", "Bearer flk_zzz", 401, `error="invalid_token"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+"/v1/orgs/"+w.org, nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || !strings.Contains(resp.Header.Get("WWW-Authenticate"), tt.wantAuth) ||
				resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("status %d, WWW-Authenticate %q, type %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), resp.Header.Get("Content-Type"))
			}
		})
	}
	// After a key rotation the server fetches the new key on first sight.
	if _, err := prov.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	must(t, srv, 200, "GET", "/v1/orgs/"+w.org, srv.Token(t, "owner@example.com"), nil)

	// Anonymous with a bad body still learns nothing but 401.
	status, _, out := call(t, srv, "POST", "/v1/orgs", "", map[string]any{"nope": 1})
	if status != 401 {
		t.Fatalf("anonymous bad body = %d %v, want 401", status, out)
	}
}

func mintWith(t *testing.T, srv *apptest.Server, issuer, audience string) string {
	t.Helper()
	p, err := devoidc.New(context.Background(), srv.Pool(t), issuer, audience)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.Mint(context.Background(), "owner@example.com", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestMembers(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	base := "/v1/orgs/" + w.org + "/members"

	status, _, out := call(t, srv, "POST", base, w.admin, map[string]any{"email": "viewer@example.com", "role": "viewer"})
	if status != 409 || out["code"] != "already_member" {
		t.Fatalf("duplicate member = %d %v", status, out)
	}
	status, _, out = call(t, srv, "POST", base, w.admin, map[string]any{"email": "not-an-email", "role": "viewer"})
	if status != 400 || out["code"] != "validation_failed" {
		t.Fatalf("invalid email = %d %v", status, out)
	}
	status, _, out = call(t, srv, "POST", base, w.admin, map[string]any{"email": "boss@example.com", "role": "owner"})
	if status != 403 {
		t.Fatalf("admin granting owner = %d %v, want 403", status, out)
	}
	status, _, out = call(t, srv, "PATCH", base+"/"+w.ownerID, w.admin, map[string]any{"role": "viewer"})
	if status != 403 {
		t.Fatalf("admin demoting the owner = %d %v, want 403", status, out)
	}
	status, _, out = call(t, srv, "PATCH", base+"/"+w.devID, w.developer, map[string]any{"role": "admin"})
	if status != 403 || !strings.Contains(out["detail"].(string), "admin") {
		t.Fatalf("developer promoting self = %d %v, want 403 naming admin", status, out)
	}

	// The last owner can never be demoted or removed, even by themselves.
	status, _, out = call(t, srv, "PATCH", base+"/"+w.ownerID, w.owner, map[string]any{"role": "admin"})
	if status != 409 || out["code"] != "last_owner" {
		t.Fatalf("demoting the last owner = %d %v", status, out)
	}
	status, _, out = call(t, srv, "DELETE", base+"/"+w.ownerID, w.owner, nil)
	if status != 409 || out["code"] != "last_owner" {
		t.Fatalf("removing the last owner = %d %v", status, out)
	}
	// With a second owner, the first may step down.
	must(t, srv, 200, "PATCH", base+"/"+w.adminID, w.owner, map[string]any{"role": "owner"})
	must(t, srv, 200, "PATCH", base+"/"+w.ownerID, w.owner, map[string]any{"role": "viewer"})

	// Anyone may leave.
	must(t, srv, 204, "DELETE", base+"/"+w.devID, w.developer, nil)
	must(t, srv, 404, "GET", "/v1/orgs/"+w.org, w.developer, nil)

	// A person added before ever signing in becomes the member on first sign-in.
	must(t, srv, 201, "POST", base, w.admin, map[string]any{"email": "Later@Example.com", "role": "developer"})
	later := srv.Token(t, "later@example.com")
	me := must(t, srv, 200, "GET", "/v1/me", later, nil)
	ms := me["memberships"].([]any)
	if len(ms) != 1 || ms[0].(map[string]any)["org_id"] != w.org || ms[0].(map[string]any)["role"] != "developer" {
		t.Fatalf("invited user's memberships = %v", ms)
	}

	page := must(t, srv, 200, "GET", base+"?limit=2", w.viewer, nil)
	seen := len(page["items"].([]any))
	for page["next_cursor"] != nil {
		page = must(t, srv, 200, "GET", base+"?limit=2&cursor="+page["next_cursor"].(string), w.viewer, nil)
		seen += len(page["items"].([]any))
	}
	if seen != 5 { // admin(owner now), owner(viewer now), viewer, victim, later
		t.Fatalf("paged through %d members, want 5", seen)
	}
	status, _, _ = call(t, srv, "GET", base+"?cursor=bogus", w.viewer, nil)
	if status != 400 {
		t.Fatalf("bad cursor = %d, want 400", status)
	}
}

func TestFirstSignInCreatesTheUser(t *testing.T) {
	srv := apptest.Start(t)
	tok := srv.Token(t, "Newcomer@Example.com")
	me := must(t, srv, 200, "GET", "/v1/me", tok, nil)
	u := me["user"].(map[string]any)
	if u["email"] != "newcomer@example.com" && u["email"] != "Newcomer@Example.com" {
		t.Fatalf("user = %v", u)
	}
	if u["name"] == "" || len(me["memberships"].([]any)) != 0 {
		t.Fatalf("me = %v", me)
	}
	again := must(t, srv, 200, "GET", "/v1/me", tok, nil)
	if again["user"].(map[string]any)["id"] != u["id"] {
		t.Fatal("a second request created another user")
	}
}
