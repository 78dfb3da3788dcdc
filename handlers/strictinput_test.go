package handlers_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// sendRaw sends body exactly as given, for bodies json.Marshal would not
// produce (trailing bytes, two values).
func sendRaw(t *testing.T, srv *apptest.Server, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
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
	return resp.StatusCode, out
}

// written is every table a write of the API can change, so a refused
// request can be shown to have left all of them as they were.
var written = []string{"orgs", "memberships", "api_keys", "audit_events", "fleets", "releases",
	"provisioning_keys", "devices", "config_variables", "idempotency_keys"}

// snapshot digests the rows of the tables in written.
func snapshot(t *testing.T, srv *apptest.Server) string {
	t.Helper()
	var b strings.Builder
	for _, table := range written {
		var digest string
		err := srv.Pool(t).QueryRow(context.Background(),
			`SELECT coalesce(md5(string_agg(t::text, E'\n' ORDER BY t::text)), '') FROM `+table+` t`).Scan(&digest)
		if err != nil {
			t.Fatalf("digest %s: %v", table, err)
		}
		b.WriteString(table + "=" + digest + "\n")
	}
	return b.String()
}

// hasField reports whether a problem's errors[] name the field.
func hasField(out map[string]any, in, field string) bool {
	errs, _ := out["errors"].([]any)
	for _, e := range errs {
		fe, _ := e.(map[string]any)
		if fe["in"] == in && fe["field"] == field && fe["detail"] != "" {
			return true
		}
	}
	return false
}

// TestNULIsRefused: a NUL anywhere in a body string (value or key, at any
// depth), a query parameter or a cursor is the client's error, named, and
// nothing is written. PostgreSQL refuses NUL in text and jsonb, so before
// the check these were 500s.
func TestNULIsRefused(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	const nul = "a\x00b"
	dev := w.device.id.String()
	withNUL := func(body map[string]any, key string) map[string]any {
		body[key] = nul
		return body
	}
	release := w.releaseBody(w.fleet, "draft")
	release["services"].([]any)[0].(map[string]any)["environment"] = map[string]any{"MODE": nul}
	// A variables cursor is the last (service, name), NUL-separated: a
	// third part smuggles a NUL into the name it compares with.
	variableCursor := base64.RawURLEncoding.EncodeToString([]byte("\x00LEVEL\x00x"))
	listCursor := base64.RawURLEncoding.EncodeToString([]byte(`{"t":"2026-01-01T00:00:00Z","i":"` + dev + "\x00" + `"}`))

	tests := []struct {
		name, method, path, token string
		body                      any
		in, field                 string
	}{
		{name: "org name", method: "POST", path: "/v1/orgs", token: w.owner,
			body: map[string]any{"name": nul}, in: "body", field: "/name"},
		{name: "org rename", method: "PATCH", path: "/v1/orgs/" + w.org, token: w.owner,
			body: map[string]any{"name": nul}, in: "body", field: "/name"},
		{name: "fleet name", method: "POST", path: "/v1/orgs/" + w.org + "/fleets", token: w.owner,
			body: map[string]any{"name": nul, "architecture": "amd64"}, in: "body", field: "/name"},
		{name: "fleet tag value", method: "PATCH", path: "/v1/fleets/" + w.fleet, token: w.owner,
			body: map[string]any{"tags": map[string]any{"site": nul}}, in: "body", field: "/tags/site"},
		{name: "fleet tag key", method: "PATCH", path: "/v1/fleets/" + w.fleet, token: w.owner,
			body: map[string]any{"tags": map[string]any{nul: "lab"}}, in: "body", field: "/tags/" + nul},
		{name: "device name", method: "PATCH", path: "/v1/devices/" + dev, token: w.owner,
			body: map[string]any{"name": nul}, in: "body", field: "/name"},
		{name: "device tag value", method: "PATCH", path: "/v1/devices/" + dev, token: w.owner,
			body: map[string]any{"tags": map[string]any{"site": nul}}, in: "body", field: "/tags/site"},
		{name: "device registration name", method: "POST", path: "/device/v1/register",
			body: withNUL(newDevice(t).registration(w.provKey), "name"), in: "body", field: "/name"},
		{name: "release version", method: "POST", path: "/v1/fleets/" + w.fleet + "/releases", token: w.owner,
			body: withNUL(w.releaseBody(w.fleet, "draft"), "version"), in: "body", field: "/version"},
		{name: "release service environment", method: "POST", path: "/v1/fleets/" + w.fleet + "/releases", token: w.owner,
			body: release, in: "body", field: "/services/0/environment/MODE"},
		{name: "release tag", method: "PATCH", path: "/v1/releases/" + w.release, token: w.owner,
			body: map[string]any{"tags": map[string]any{"qa": nul}}, in: "body", field: "/tags/qa"},
		{name: "fleet variable name", method: "POST", path: "/v1/fleets/" + w.fleet + "/variables", token: w.owner,
			body: map[string]any{"name": nul, "value": "x"}, in: "body", field: "/name"},
		{name: "fleet variable value", method: "POST", path: "/v1/fleets/" + w.fleet + "/variables", token: w.owner,
			body: map[string]any{"name": "NEW", "value": nul}, in: "body", field: "/value"},
		{name: "fleet variable new value", method: "PATCH", path: "/v1/fleets/" + w.fleet + "/variables/" + w.fleetVar, token: w.owner,
			body: map[string]any{"value": nul}, in: "body", field: "/value"},
		{name: "device variable value", method: "POST", path: "/v1/devices/" + dev + "/variables", token: w.owner,
			body: map[string]any{"name": "NEW", "value": nul}, in: "body", field: "/value"},
		{name: "device variable new value", method: "PATCH", path: "/v1/devices/" + dev + "/variables/" + w.deviceVar, token: w.owner,
			body: map[string]any{"value": nul}, in: "body", field: "/value"},
		{name: "api key name", method: "POST", path: "/v1/orgs/" + w.org + "/api-keys", token: w.owner,
			body: map[string]any{"name": nul, "role": "viewer"}, in: "body", field: "/name"},
		{name: "provisioning key name", method: "POST", path: "/v1/fleets/" + w.fleet + "/provisioning-keys", token: w.owner,
			body: map[string]any{"name": nul}, in: "body", field: "/name"},
		{name: "MQTT hook user name", method: "POST", path: "/internal/v1/mqtt/auth",
			body: map[string]any{"clientid": dev, "username": nul, "password": "p"}, in: "body", field: "/username"},
		{name: "tag_key", method: "GET", path: "/v1/orgs/" + w.org + "/devices?tag_key=" + url.QueryEscape(nul), token: w.owner,
			in: "query", field: "tag_key"},
		{name: "tag_value", method: "GET", path: "/v1/orgs/" + w.org + "/devices?tag_key=site&tag_value=" + url.QueryEscape(nul), token: w.owner,
			in: "query", field: "tag_value"},
		{name: "name_prefix", method: "GET", path: "/v1/orgs/" + w.org + "/devices?name_prefix=" + url.QueryEscape(nul), token: w.owner,
			in: "query", field: "name_prefix"},
		{name: "parameter the operation does not take", method: "GET", path: "/v1/orgs?" + url.QueryEscape(nul) + "=1", token: w.owner,
			in: "query", field: nul},
		{name: "list cursor", method: "GET", path: "/v1/orgs/" + w.org + "/devices?cursor=" + listCursor, token: w.owner,
			in: "query", field: "cursor"},
		{name: "variables cursor", method: "GET", path: "/v1/fleets/" + w.fleet + "/variables?cursor=" + variableCursor, token: w.owner,
			in: "query", field: "cursor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, srv)
			status, _, out := call(t, srv, tt.method, tt.path, tt.token, tt.body)
			if status != http.StatusBadRequest || out["code"] != "validation_failed" || !hasField(out, tt.in, tt.field) {
				t.Errorf("%s %s = %d %v, want 400 validation_failed naming %s %q", tt.method, tt.path, status, out, tt.in, tt.field)
			}
			if after := snapshot(t, srv); after != before {
				t.Errorf("the refused request changed the database:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestTrailingBytesAreMalformed: a body is one JSON value; whatever follows
// it (other than whitespace) makes the body malformed, on every plane.
func TestTrailingBytesAreMalformed(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	devToken := w.device.token(t, srv)
	dev := w.device.id.String()
	registration, _ := json.Marshal(newDevice(t).registration(w.provKey))
	assertion, _ := json.Marshal(map[string]any{"assertion": w.device.assertion(t)})

	tests := []struct {
		name, method, path, token, body string
	}{
		{"word after an object", "POST", "/v1/orgs", w.owner, `{"name":"a"} xyz`},
		{"two objects", "POST", "/v1/orgs/" + w.org + "/fleets", w.owner, `{}{}`},
		{"two valid objects", "PATCH", "/v1/fleets/" + w.fleet, w.owner, `{"name":"x"}{"name":"y"}`},
		{"closing brace too many", "PATCH", "/v1/devices/" + dev, w.owner, `{"name":"x"}}`},
		{"device registration", "POST", "/device/v1/register", "", string(registration) + " []"},
		{"device token", "POST", "/device/v1/token", "", string(assertion) + " 1"},
		{"device reported state", "PATCH", "/device/v1/state", devToken, `{} x`},
		{"MQTT auth hook", "POST", "/internal/v1/mqtt/auth", "", `{"clientid":"c","username":"u","password":"p"} x`},
		{"MQTT ACL hook", "POST", "/internal/v1/mqtt/acl", "",
			`{"clientid":"c","username":"u","topic":"t","action":"publish"}"more"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, srv)
			status, out := sendRaw(t, srv, tt.method, tt.path, tt.token, tt.body)
			if status != http.StatusBadRequest || out["code"] != "malformed_body" {
				t.Errorf("%s %s with %q = %d %v, want 400 malformed_body", tt.method, tt.path, tt.body, status, out)
			}
			if after := snapshot(t, srv); after != before {
				t.Errorf("the refused request changed the database:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	t.Run("trailing whitespace is fine", func(t *testing.T) {
		status, out := sendRaw(t, srv, "POST", "/v1/orgs", w.owner, "{\"name\":\"spaced\"} \r\n\t ")
		if status != http.StatusCreated || out["name"] != "spaced" {
			t.Fatalf("= %d %v, want 201", status, out)
		}
	})
}

// TestHeadMirrorsGet: HEAD answers wherever GET does, with GET's status and
// headers and no body: every GET operation of the API and the operational
// and documentation endpoints. Logs and metrics keep the method HEAD.
func TestHeadMirrorsGet(t *testing.T) {
	srv := apptest.Start(t, "--events-allow-private") // event endpoints point at a receiver on loopback
	w := newWorld(t, srv).withFleet(t)
	w.t = t
	devToken := w.device.token(t, srv)

	type target struct{ name, path, token string }
	var targets []target
	for _, op := range specOperations(t) {
		fx, ok := fixtures[op]
		if !ok {
			t.Errorf("operation %s has no fixture", op)
			continue
		}
		if handlers.Policy[op].Write {
			continue // its fixture may change the world (prepare a rollout)
		}
		if fx.stream != "" {
			continue // a stream's GET never ends; TestRBACMatrix opens the streams
		}
		method, path, _ := fx.req(w)
		if method != "GET" {
			continue
		}
		token := w.owner
		if strings.HasPrefix(path, "/device/") {
			token = devToken
		}
		targets = append(targets, target{op, path, token})
	}
	for _, p := range []string{"/docs", "/docs/", "/docs/init.js", "/openapi.yaml", "/healthz", "/readyz", "/metrics"} {
		targets = append(targets, target{p, p, ""})
	}
	// A missing resource answers HEAD as GET too.
	targets = append(targets, target{"fleet:get not found", "/v1/fleets/" + w.otherOrg, w.owner})

	send := func(t *testing.T, method, path, token string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		// Redirects are answers too: compare them, do not follow them.
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	for _, tt := range targets {
		t.Run(tt.name, func(t *testing.T) {
			// A GET before and one after: a resource that changes meanwhile
			// (an open build's log, a delivery log) must match either.
			get, _ := send(t, "GET", tt.path, tt.token)
			head, body := send(t, "HEAD", tt.path, tt.token)
			after, _ := send(t, "GET", tt.path, tt.token)
			if head.StatusCode != get.StatusCode {
				t.Fatalf("HEAD %s = %d, GET = %d", tt.path, head.StatusCode, get.StatusCode)
			}
			if len(body) != 0 {
				t.Errorf("HEAD %s sent a body of %d bytes", tt.path, len(body))
			}
			for k := range get.Header {
				switch k {
				case "Date", "X-Request-Id":
					continue
				case "Content-Length":
					if tt.path == "/metrics" { // the scrape itself moves the counters
						continue
					}
				}
				got, want, later := head.Header.Values(k), get.Header.Values(k), after.Header.Values(k)
				if strings.Join(got, ",") != strings.Join(want, ",") && strings.Join(got, ",") != strings.Join(later, ",") {
					t.Errorf("HEAD %s header %s = %q, GET's = %q before and %q after", tt.path, k, got, want, later)
				}
			}
			for k := range head.Header {
				if _, ok := get.Header[k]; !ok {
					t.Errorf("HEAD %s has header %s, GET has not", tt.path, k)
				}
			}
		})
	}
	// The scrape counts HEAD as HEAD, under the operation it was served by.
	_, metrics := send(t, "GET", "/metrics", "")
	for _, want := range []string{`method="HEAD",operation="version:get",status="200"`, `method="HEAD",operation="healthz",status="200"`} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack a series with %s", want)
		}
	}
}
