package handlers_test

import (
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func keyed(t *testing.T, srv *apptest.Server, method, path, token, key string, body any) (int, http.Header, map[string]any) {
	t.Helper()
	status, hdr, out, err := sendKeyed(srv, method, path, token, key, body)
	if err != nil {
		t.Fatal(err)
	}
	return status, hdr, out
}

// sendKeyed is keyed for any goroutine: it returns the error.
func sendKeyed(srv *apptest.Server, method, path, token, key string, body any) (int, http.Header, map[string]any, error) {
	return srv.Send(method, path, token, http.Header{"Idempotency-Key": {key}}, body)
}

func TestIdempotencyKeys(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	orgsBefore := len(must(t, srv, 200, "GET", "/v1/orgs", w.owner, nil)["items"].([]any))

	status, hdr, first := keyed(t, srv, "POST", "/v1/orgs", w.owner, "create-acme-2", map[string]any{"name": "Acme 2"})
	if status != 201 || hdr.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first = %d %v", status, first)
	}
	status, hdr, again := keyed(t, srv, "POST", "/v1/orgs", w.owner, "create-acme-2", map[string]any{"name": "Acme 2"})
	if status != 201 || hdr.Get("Idempotent-Replayed") != "true" || again["id"] != first["id"] {
		t.Fatalf("retry = %d %v %v, want the first response replayed", status, hdr, again)
	}
	if n := len(must(t, srv, 200, "GET", "/v1/orgs", w.owner, nil)["items"].([]any)); n != orgsBefore+1 {
		t.Fatalf("%d orgs after a retried create, want %d", n, orgsBefore+1)
	}
	// The same key for another request is refused; another caller's key space is its own.
	if status, _, out := keyed(t, srv, "POST", "/v1/orgs", w.owner, "create-acme-2", map[string]any{"name": "Other"}); status != 422 || out["code"] != "idempotency_key_reused" {
		t.Fatalf("reused key = %d %v", status, out)
	}
	if status, hdr, _ := keyed(t, srv, "POST", "/v1/orgs", w.admin, "create-acme-2", map[string]any{"name": "Acme 2"}); status != 201 || hdr.Get("Idempotent-Replayed") != "" {
		t.Fatalf("another caller's same key = %d %v", status, hdr)
	}
	// A delete retried after it succeeded answers as it did, not 404.
	path := "/v1/orgs/" + w.org + "/members/" + w.victimID
	if status, _, _ := keyed(t, srv, "DELETE", path, w.admin, "rm-victim", nil); status != 204 {
		t.Fatalf("delete = %d", status)
	}
	if status, hdr, _ := keyed(t, srv, "DELETE", path, w.admin, "rm-victim", nil); status != 204 || hdr.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retried delete = %d %v", status, hdr)
	}
	// Operations whose response holds a secret never store it, so they refuse keys.
	status, _, out := keyed(t, srv, "POST", "/v1/orgs/"+w.org+"/api-keys", w.owner, "k1", map[string]any{"name": "x", "role": "viewer"})
	if status != 400 || out["code"] != "validation_failed" {
		t.Fatalf("key on api-key:create = %d %v", status, out)
	}
	// A failed write stores nothing: the retry runs again.
	if status, _, _ := keyed(t, srv, "PATCH", "/v1/orgs/"+w.org, w.viewer, "rename", map[string]any{"name": "X"}); status != 403 {
		t.Fatalf("viewer rename = %d", status)
	}
	if status, _, _ := keyed(t, srv, "PATCH", "/v1/orgs/"+w.org, w.viewer, "rename", map[string]any{"name": "X"}); status != 403 {
		t.Fatalf("viewer rename retried = %d, want 403 again", status)
	}
}

func TestIdempotencyKeyRace(t *testing.T) {
	srv := apptest.Start(t)
	owner := srv.Token(t, "racer@example.com")
	var wg sync.WaitGroup
	statuses := make([]int, 8)
	errs := make([]error, 8)
	for i := range statuses {
		wg.Go(func() {
			statuses[i], _, _, errs[i] = sendKeyed(srv, "POST", "/v1/orgs", owner, "race", map[string]any{"name": "Once"})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, s := range statuses {
		if s != 201 && s != 409 {
			t.Fatalf("statuses %v: want only 201 (run or replayed) and 409 (in flight)", statuses)
		}
	}
	if n := len(must(t, srv, 200, "GET", "/v1/orgs", owner, nil)["items"].([]any)); n != 1 {
		t.Fatalf("%d orgs created by 8 racing requests with one key, want 1 (statuses %v)", n, statuses)
	}
}
