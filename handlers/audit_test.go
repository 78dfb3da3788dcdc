package handlers_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func TestAuditLog(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	log := "/v1/orgs/" + w.org + "/audit-events"

	status, hdr, _ := call(t, srv, "PATCH", "/v1/orgs/"+w.org, w.admin, map[string]any{"name": "Acme 2"})
	if status != 200 {
		t.Fatalf("rename = %d", status)
	}
	renameReq := hdr.Get("X-Request-Id")
	// A refused write is recorded as a failure.
	if status, _, _ := call(t, srv, "POST", "/v1/orgs/"+w.org+"/members", w.developer, map[string]any{"email": "z@example.com", "role": "viewer"}); status != 403 {
		t.Fatalf("developer adding a member = %d", status)
	}

	events := must(t, srv, 200, "GET", log, w.admin, nil)["items"].([]any)
	// newest first: the refused add, the rename, the key, 4 member adds, the org creation.
	if len(events) != 8 {
		t.Fatalf("got %d events, want 8: %v", len(events), events)
	}
	refused, rename := events[0].(map[string]any), events[1].(map[string]any)
	if refused["operation"] != "member:create" || refused["outcome"] != "failure" || refused["status"] != float64(403) ||
		refused["actor"].(map[string]any)["label"] != "dev@example.com" {
		t.Errorf("refused event = %v", refused)
	}
	if rename["operation"] != "org:update" || rename["outcome"] != "success" || rename["status"] != float64(200) ||
		rename["target_id"] != w.org || rename["request_id"] != renameReq || rename["org_id"] != w.org ||
		rename["actor"].(map[string]any)["type"] != "user" || rename["actor"].(map[string]any)["label"] != "admin@example.com" {
		t.Errorf("rename event = %v", rename)
	}
	create := events[7].(map[string]any)
	if create["operation"] != "org:create" || create["target_id"] != w.org {
		t.Errorf("creation event = %v", create)
	}

	// Time range and keyset pagination.
	at, _ := time.Parse(time.RFC3339Nano, rename["time"].(string))
	since := at.Format(time.RFC3339Nano)
	recent := must(t, srv, 200, "GET", log+"?since="+since, w.admin, nil)["items"].([]any)
	if len(recent) != 2 {
		t.Errorf("since the rename: %d events, want 2", len(recent))
	}
	older := must(t, srv, 200, "GET", log+"?until="+since, w.admin, nil)["items"].([]any)
	if len(older) != 6 {
		t.Errorf("until the rename: %d events, want 6", len(older))
	}
	var ids []string
	page := must(t, srv, 200, "GET", log+"?limit=3", w.admin, nil)
	for {
		for _, e := range page["items"].([]any) {
			ids = append(ids, e.(map[string]any)["id"].(string))
		}
		if page["next_cursor"] == nil {
			break
		}
		page = must(t, srv, 200, "GET", log+"?limit=3&cursor="+page["next_cursor"].(string), w.admin, nil)
	}
	if len(ids) != 8 || ids[0] != refused["id"] || ids[7] != create["id"] {
		t.Errorf("paging gave %d ids in another order", len(ids))
	}
	// Readers below admin cannot see it.
	if status, _, _ := call(t, srv, "GET", log, w.developer, nil); status != 403 {
		t.Errorf("developer reading the audit log = %d, want 403", status)
	}
}

// TestAuditToLoki: with FLOCK_LOKI_URL set, committed events also reach
// Loki's push API as JSON lines labelled by org and action.
func TestAuditToLoki(t *testing.T) {
	var mu sync.Mutex
	var lines []map[string]any
	var labels []map[string]string
	loki := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/loki/api/v1/push" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad push", 400)
			return
		}
		var body struct {
			Streams []struct {
				Stream map[string]string `json:"stream"`
				Values [][2]string       `json:"values"`
			} `json:"streams"`
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &body); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, s := range body.Streams {
			for _, v := range s.Values {
				var ev map[string]any
				if err := json.Unmarshal([]byte(v[1]), &ev); err != nil {
					http.Error(w, err.Error(), 400)
					return
				}
				lines = append(lines, ev)
				labels = append(labels, s.Stream)
			}
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer loki.Close()

	srv := apptest.Start(t, "--loki-url="+loki.URL+"/loki/api/v1/push")
	owner := srv.Token(t, "owner@example.com")
	org := must(t, srv, 201, "POST", "/v1/orgs", owner, map[string]any{"name": "Logged"})["id"].(string)
	must(t, srv, 200, "PATCH", "/v1/orgs/"+org, owner, map[string]any{"name": "Logged 2"})

	testutil.Eventually(t, "two events pushed to Loki", testutil.Until(func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lines) >= 2
	}))
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 2 {
		t.Fatalf("Loki got %d events, want 2", len(lines))
	}
	for i, ev := range lines {
		if ev["org_id"] != org || labels[i]["org"] != org || labels[i]["action"] != ev["operation"] ||
			!strings.HasPrefix(ev["operation"].(string), "org:") || ev["actor_label"] != "owner@example.com" {
			t.Errorf("event %d = %v labels %v", i, ev, labels[i])
		}
	}
}
