package handlers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func TestAPIKeys(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	base := "/v1/orgs/" + w.org + "/api-keys"

	created := must(t, srv, 201, "POST", base, w.developer, map[string]any{"name": "deploy", "role": "developer"})
	secret := created["secret"].(string)
	if !strings.HasPrefix(secret, "flk_") || !strings.HasPrefix(secret, created["prefix"].(string)) {
		t.Fatalf("created = %v", created)
	}
	// The secret is shown once: never in a list.
	list := must(t, srv, 200, "GET", base, w.developer, nil)
	for _, k := range list["items"].([]any) {
		if _, ok := k.(map[string]any)["secret"]; ok {
			t.Fatal("list shows a secret")
		}
	}
	// Stored hashed: the secret is nowhere in the database.
	var n int
	if err := srv.Pool(t).QueryRow(context.Background(),
		"SELECT count(*) FROM api_keys WHERE encode(secret_hash, 'escape') LIKE '%' || $1 || '%'", secret[20:]).Scan(&n); err != nil || n != 0 {
		t.Fatalf("secret found in the database (%d, %v)", n, err)
	}

	// The key authenticates as its role: a developer key reads members but
	// cannot add one.
	must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/members", secret, nil)
	status, _, out := call(t, srv, "POST", "/v1/orgs/"+w.org+"/members", secret, map[string]any{"email": "x@example.com", "role": "viewer"})
	if status != 403 || !strings.Contains(out["detail"].(string), "admin") {
		t.Fatalf("developer key adding a member = %d %v", status, out)
	}
	// Keys cannot mint keys; a key's role is at most its creator's.
	if status, _, _ := call(t, srv, "POST", base, secret, map[string]any{"name": "child", "role": "viewer"}); status != 403 {
		t.Fatalf("key creating a key = %d, want 403", status)
	}
	if status, _, _ := call(t, srv, "POST", base, w.developer, map[string]any{"name": "up", "role": "admin"}); status != 403 {
		t.Fatalf("developer creating an admin key = %d, want 403", status)
	}
	// last_used_at is recorded.
	got := must(t, srv, 200, "GET", base, w.admin, nil)["items"].([]any)
	used := false
	for _, k := range got {
		km := k.(map[string]any)
		if km["id"] == created["id"] && km["last_used_at"] != nil {
			used = true
		}
	}
	if !used {
		t.Fatal("last_used_at not set after use")
	}

	// Revocation takes effect at once.
	must(t, srv, 204, "DELETE", base+"/"+created["id"].(string), w.developer, nil)
	status, hdr, out := call(t, srv, "GET", "/v1/orgs/"+w.org, secret, nil)
	if status != 401 || !strings.Contains(hdr.Get("WWW-Authenticate"), "invalid_token") {
		t.Fatalf("revoked key = %d %v", status, out)
	}

	// An expired key is refused with a detail that says so.
	soon := time.Now().Add(1500 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	exp := must(t, srv, 201, "POST", base, w.admin, map[string]any{"name": "short", "role": "viewer", "expires_at": soon})
	must(t, srv, 200, "GET", "/v1/orgs/"+w.org, exp["secret"].(string), nil)
	testutil.Eventually(t, "the short key to expire", func() error {
		status, _, out = call(t, srv, "GET", "/v1/orgs/"+w.org, exp["secret"].(string), nil)
		if status != 401 {
			return fmt.Errorf("GET with the key = %d", status)
		}
		return nil
	})
	if !strings.Contains(out["detail"].(string), "expired") {
		t.Fatalf("expired key = %d %v", status, out)
	}
	if status, _, _ := call(t, srv, "POST", base, w.admin, map[string]any{"name": "past", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}); status != 400 {
		t.Fatalf("key expiring in the past = %d, want 400", status)
	}
}
