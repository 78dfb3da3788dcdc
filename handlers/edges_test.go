package handlers_test

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// TestRefusedAPIKeyCreateIsAudited: an API key may not mint keys, and its
// attempt is in the audit log like every other refused write.
func TestRefusedAPIKeyCreateIsAudited(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	keys := "/v1/orgs/" + w.org + "/api-keys"
	// A developer key: its role would allow api-key:create, only NoAPIKeys refuses it.
	key := must(t, srv, 201, "POST", keys, w.owner, map[string]any{"name": "deployer", "role": "developer"})

	status, hdr, out := call(t, srv, "POST", keys, key["secret"].(string), map[string]any{"name": "child", "role": "viewer"})
	if status != http.StatusForbidden {
		t.Fatalf("key creating a key = %d %v, want 403", status, out)
	}
	events := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/audit-events?limit=1", w.admin, nil)["items"].([]any)
	if len(events) != 1 {
		t.Fatalf("audit log is empty")
	}
	ev := events[0].(map[string]any)
	actor, _ := ev["actor"].(map[string]any)
	if ev["operation"] != "api-key:create" || ev["outcome"] != "failure" || ev["status"] != float64(403) ||
		ev["request_id"] != hdr.Get("X-Request-Id") || actor["type"] != "api_key" || actor["id"] != key["id"] ||
		actor["label"] != "deployer" {
		t.Fatalf("newest audit event = %v, want the refused api-key:create by key %s", ev, key["id"])
	}
}

// TestReplayNeedsAccess: a stored response is replayed only to a caller who
// still passes the operation's access check; one who lost the role gets
// 403 and one who left the organisation its 404, never the stored 201.
func TestReplayNeedsAccess(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	fleets := "/v1/orgs/" + w.org + "/fleets"
	body := map[string]any{"name": "line 1", "architecture": "amd64"}
	member := "/v1/orgs/" + w.org + "/members/" + w.devID

	status, hdr, first := keyed(t, srv, "POST", fleets, w.developer, "line-1", body)
	if status != http.StatusCreated || hdr.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first create = %d %v", status, first)
	}
	steps := []struct {
		name       string
		before     func()
		token      string
		wantStatus int
		wantCode   string
		replayed   bool
	}{
		{name: "member retries", token: w.developer, wantStatus: http.StatusCreated, replayed: true},
		// The key is the developer's: the same key from someone else runs
		// the request, which finds the name taken.
		{name: "another member, same key", token: w.admin, wantStatus: http.StatusConflict, wantCode: "name_taken"},
		{name: "demoted to viewer", token: w.developer, wantStatus: http.StatusForbidden, wantCode: "forbidden",
			before: func() { must(t, srv, 200, "PATCH", member, w.owner, map[string]any{"role": "viewer"}) }},
		{name: "removed from the organisation", token: w.developer, wantStatus: http.StatusNotFound, wantCode: "not_found",
			before: func() { must(t, srv, 204, "DELETE", member, w.owner, nil) }},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.before != nil {
				st.before()
			}
			status, hdr, out := keyed(t, srv, "POST", fleets, st.token, "line-1", body)
			replayed := hdr.Get("Idempotent-Replayed") == "true"
			if status != st.wantStatus || replayed != st.replayed || (st.wantCode != "" && out["code"] != st.wantCode) {
				t.Fatalf("= %d replayed=%v %v, want %d %s replayed=%v", status, replayed, out, st.wantStatus, st.wantCode, st.replayed)
			}
			if st.replayed && out["id"] != first["id"] {
				t.Fatalf("replayed fleet %v, want the first response's %v", out["id"], first["id"])
			}
		})
	}
	if n := len(must(t, srv, 200, "GET", fleets, w.owner, nil)["items"].([]any)); n != 1 {
		t.Fatalf("%d fleets, want the 1 the first request created", n)
	}
}

// TestSecretResponsesAreNotCached: responses that carry a secret or a token
// tell every cache not to keep them (handlers.Policy's NoStore); others
// leave caching to their own headers.
func TestSecretResponsesAreNotCached(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	w.t = t
	tests := []struct {
		op, method, path, token string
		body                    any
		wantStatus              int
		noStore                 bool
	}{
		{"api-key:create", "POST", "/v1/orgs/" + w.org + "/api-keys", w.owner,
			map[string]any{"name": "deploy", "role": "viewer"}, 201, true},
		{"api-key:create refused", "POST", "/v1/orgs/" + w.org + "/api-keys", w.ownerKey,
			map[string]any{"name": "deploy", "role": "viewer"}, 403, true},
		{"provisioning-key:create", "POST", "/v1/fleets/" + w.fleet + "/provisioning-keys", w.owner,
			map[string]any{"name": "line 2"}, 201, true},
		{"device:token", "POST", "/device/v1/token", "",
			map[string]any{"assertion": w.device.assertion(t)}, 200, true},
		{"fleet:create", "POST", "/v1/orgs/" + w.org + "/fleets", w.owner,
			map[string]any{"name": "more", "architecture": "arm64"}, 201, false},
		{"api-key:list", "GET", "/v1/orgs/" + w.org + "/api-keys", w.owner, nil, 200, false},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			status, hdr, out := call(t, srv, tt.method, tt.path, tt.token, tt.body)
			if status != tt.wantStatus {
				t.Fatalf("= %d %v, want %d", status, out, tt.wantStatus)
			}
			if got := hdr.Get("Cache-Control") == "no-store"; got != tt.noStore {
				t.Fatalf("Cache-Control = %q, want no-store: %v", hdr.Get("Cache-Control"), tt.noStore)
			}
		})
	}
}

// TestConcurrentFirstSignIns: a new user's first requests may arrive
// together; each is answered as that user, none as "the email belongs to
// another account" (the loser of the insert race trips the email index, not
// only the identity one).
func TestConcurrentFirstSignIns(t *testing.T) {
	srv := apptest.Start(t)
	const users, requests = 20, 8
	for u := range users {
		tok := srv.Token(t, fmt.Sprintf("newcomer-%d@example.com", u))
		var wg sync.WaitGroup
		statuses := make([]int, requests)
		ids := make([]any, requests)
		errs := make([]error, requests)
		for i := range requests {
			wg.Go(func() {
				var out map[string]any
				statuses[i], _, out, errs[i] = srv.Send("GET", "/v1/me", tok, nil, nil)
				if user, ok := out["user"].(map[string]any); ok {
					ids[i] = user["id"]
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		for i := range requests {
			if statuses[i] != http.StatusOK || ids[i] != ids[0] {
				t.Fatalf("user %d: statuses %v, ids %v; want every request 200 as one user", u, statuses, ids)
			}
		}
	}
}
