package handlers_test

import (
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func specOperations(t *testing.T) []string {
	t.Helper()
	spec, err := openapi3.NewLoader().LoadFromData(gen.OpenAPIYAML)
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, item := range spec.Paths.Map() {
		for _, op := range item.Operations() {
			ops = append(ops, op.OperationID)
		}
	}
	sort.Strings(ops)
	return ops
}

// TestPolicyCoversEveryOperation walks the embedded spec: an operation added
// without an access rule fails here (and the server refuses to start).
func TestPolicyCoversEveryOperation(t *testing.T) {
	ops := specOperations(t)
	inSpec := map[string]bool{}
	for _, op := range ops {
		inSpec[op] = true
		rule, ok := handlers.Policy[op]
		if !ok {
			t.Errorf("operation %s has no entry in handlers.Policy", op)
			continue
		}
		if rule.Level == auth.OrgRole && rule.MinRole == "" {
			t.Errorf("operation %s needs a role but names none", op)
		}
	}
	for op := range handlers.Policy {
		if !inSpec[op] {
			t.Errorf("handlers.Policy names %s, which the spec does not have", op)
		}
	}
}

// fixture builds one valid request for an operation in a world. minRole
// overrides the policy's least role where the handler is stricter for this
// request (acting on someone else's member or key).
type fixture struct {
	req     func(w *world) (method, path string, body any)
	minRole db.OrgRole
	// bare runs in a world without a fleet (an organisation with fleets
	// cannot be deleted).
	bare bool
	// stream is "sse" or "websocket" for operations that answer with a
	// stream: the check opens it and closes it once it is answered.
	stream string
}

var fixtures = map[string]fixture{
	"version:get": {req: func(w *world) (string, string, any) { return "GET", "/v1/version", nil }},
	"me:get":      {req: func(w *world) (string, string, any) { return "GET", "/v1/me", nil }},
	"org:list":    {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs", nil }},
	"org:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/orgs", map[string]any{"name": "New"}
	}},
	"org:get": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org, nil }},
	"org:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/orgs/" + w.org, map[string]any{"name": "Renamed"}
	}},
	"org:delete":  {bare: true, req: func(w *world) (string, string, any) { return "DELETE", "/v1/orgs/" + w.org, nil }},
	"member:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org + "/members", nil }},
	"member:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/orgs/" + w.org + "/members", map[string]any{"email": "new@example.com", "role": "viewer"}
	}},
	"member:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/orgs/" + w.org + "/members/" + w.victimID, map[string]any{"role": "viewer"}
	}},
	"member:delete": {minRole: db.OrgRoleAdmin, req: func(w *world) (string, string, any) {
		return "DELETE", "/v1/orgs/" + w.org + "/members/" + w.victimID, nil
	}},
	"api-key:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org + "/api-keys", nil }},
	"api-key:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/orgs/" + w.org + "/api-keys", map[string]any{"name": "deploy", "role": "viewer"}
	}},
	"api-key:delete": {minRole: db.OrgRoleAdmin, req: func(w *world) (string, string, any) {
		return "DELETE", "/v1/orgs/" + w.org + "/api-keys/" + w.ownerKeyID, nil
	}},
	"audit-event:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org + "/audit-events", nil }},

	"fleet:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org + "/fleets", nil }},
	"fleet:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/orgs/" + w.org + "/fleets", map[string]any{"name": "more", "architecture": "arm64"}
	}},
	"fleet:get": {req: func(w *world) (string, string, any) { return "GET", "/v1/fleets/" + w.fleet, nil }},
	"fleet:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/fleets/" + w.fleet, map[string]any{"tags": map[string]any{"site": "lab"}}
	}},
	// A fleet with devices cannot go: this one is empty.
	"fleet:delete": {req: func(w *world) (string, string, any) { return "DELETE", "/v1/fleets/" + w.emptyFleet(), nil }},
	"provisioning-key:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/fleets/" + w.fleet + "/provisioning-keys", nil
	}},
	"provisioning-key:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/fleets/" + w.fleet + "/provisioning-keys", map[string]any{"name": "line 2"}
	}},
	"provisioning-key:delete": {req: func(w *world) (string, string, any) {
		return "DELETE", "/v1/fleets/" + w.fleet + "/provisioning-keys/" + w.provKeyID, nil
	}},
	"release:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/fleets/" + w.fleet + "/releases", nil }},
	"release:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/fleets/" + w.fleet + "/releases", w.releaseBody(w.fleet, "draft")
	}},
	"release:get": {req: func(w *world) (string, string, any) { return "GET", "/v1/releases/" + w.release, nil }},
	"release:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/releases/" + w.release, map[string]any{"tags": map[string]any{"qa": "passed"}}
	}},
	"build:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/fleets/" + w.fleet + "/builds", nil }},
	"build:get":  {req: func(w *world) (string, string, any) { return "GET", "/v1/builds/" + w.buildForReads(), nil }},
	"build:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/fleets/" + w.fleet + "/builds", buildUpload(w.t)
	}},
	"build:cancel": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/builds/" + w.openBuild() + "/cancel", nil
	}},
	"build-log:get": {req: func(w *world) (string, string, any) { return "GET", "/v1/builds/" + w.buildForReads() + "/log", nil }},
	"build-log:stream": {stream: "sse", req: func(w *world) (string, string, any) {
		return "GET", "/v1/builds/" + w.buildForReads() + "/log/stream", nil
	}},
	"rollout:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/fleets/" + w.fleet + "/rollouts", nil }},
	"rollout:get":  {req: func(w *world) (string, string, any) { return "GET", "/v1/rollouts/" + w.rolloutForReads(), nil }},
	"rollout-device:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/rollouts/" + w.rolloutForReads() + "/devices", nil
	}},
	"rollout:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/fleets/" + w.fleet + "/rollouts", map[string]any{"release_id": w.withRelease2(), "groups": []any{map[string]any{}}}
	}},
	"rollout:start": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("ready") + "/start", nil
	}},
	"rollout:cancel": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("ready") + "/cancel", nil
	}},
	"rollout:pause": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("running") + "/pause", nil
	}},
	"rollout:resume": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("paused") + "/resume", nil
	}},
	"rollout:next-group": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("running") + "/next-group", nil
	}},
	"rollout:approve": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("waiting_for_approval") + "/approve", nil
	}},
	"rollout:abort": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/rollouts/" + w.rolloutIn("running") + "/abort", map[string]any{"rollback": true}
	}},
	"device-group:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org + "/device-groups", nil }},
	"device-group:get":  {req: func(w *world) (string, string, any) { return "GET", "/v1/device-groups/" + w.groupForReads(), nil }},
	"device-group:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/orgs/" + w.org + "/device-groups", map[string]any{"name": "lab", "tags": map[string]any{"site": "lab"}}
	}},
	"device-group:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/device-groups/" + w.groupForReads(), map[string]any{"name_prefix": "lab-"}
	}},
	"device-group:delete": {req: func(w *world) (string, string, any) {
		return "DELETE", "/v1/device-groups/" + w.groupForReads(), nil
	}},
	"device:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/orgs/" + w.org + "/devices", nil }},
	"device:get":  {req: func(w *world) (string, string, any) { return "GET", "/v1/devices/" + w.device.id.String(), nil }},
	"device:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/devices/" + w.device.id.String(), map[string]any{"name": "renamed"}
	}},
	"device:delete": {req: func(w *world) (string, string, any) { return "DELETE", "/v1/devices/" + w.device.id.String(), nil }},
	"device-connectivity:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/devices/" + w.device.id.String() + "/connectivity", nil
	}},
	"fleet-variable:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/fleets/" + w.fleet + "/variables", nil }},
	"fleet-variable:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/fleets/" + w.fleet + "/variables", map[string]any{"name": "NEW", "value": "x"}
	}},
	"fleet-variable:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/fleets/" + w.fleet + "/variables/" + w.fleetVar, map[string]any{"value": "9"}
	}},
	"fleet-variable:delete": {req: func(w *world) (string, string, any) {
		return "DELETE", "/v1/fleets/" + w.fleet + "/variables/" + w.fleetVar, nil
	}},
	"device-variable:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/devices/" + w.device.id.String() + "/variables", nil
	}},
	"device-variable:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/devices/" + w.device.id.String() + "/variables", map[string]any{"name": "NEW", "value": "x"}
	}},
	"device-variable:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/devices/" + w.device.id.String() + "/variables/" + w.deviceVar, map[string]any{"value": "9"}
	}},
	"device-variable:delete": {req: func(w *world) (string, string, any) {
		return "DELETE", "/v1/devices/" + w.device.id.String() + "/variables/" + w.deviceVar, nil
	}},
	// Developer is the organisation's tunnel_min_role unless an admin
	// changes it (checked in the handler, the policy lets viewers through).
	"device-tunnel:open": {stream: "websocket", minRole: db.OrgRoleDeveloper, req: func(w *world) (string, string, any) {
		return "GET", "/v1/devices/" + w.device.id.String() + "/tunnel?port=22", nil
	}},
	"device-tunnel-session:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/devices/" + w.device.id.String() + "/tunnel-sessions", nil
	}},
	"device-tunnel:register": {req: func(w *world) (string, string, any) {
		return "PUT", "/device/v1/tunnel", map[string]any{"public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}
	}},
	"event-type:list": {req: func(w *world) (string, string, any) { return "GET", "/v1/event-types", nil }},
	"event-endpoint:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/orgs/" + w.org + "/event-endpoints", nil
	}},
	"event-endpoint:create": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/orgs/" + w.org + "/event-endpoints", map[string]any{"name": "k", "kind": "webhook", "url": hookURL()}
	}},
	"event-endpoint:get": {req: func(w *world) (string, string, any) { return "GET", "/v1/event-endpoints/" + w.endpoint(), nil }},
	"event-endpoint:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/v1/event-endpoints/" + w.endpoint(), map[string]any{"name": "renamed"}
	}},
	"event-endpoint:delete": {req: func(w *world) (string, string, any) { return "DELETE", "/v1/event-endpoints/" + w.endpoint(), nil }},
	"event-endpoint:rotate-secret": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/event-endpoints/" + w.endpoint() + "/rotate-secret", map[string]any{}
	}},
	"event-endpoint:test": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/event-endpoints/" + w.endpoint() + "/test", nil
	}},
	"event-delivery-attempt:list": {req: func(w *world) (string, string, any) {
		return "GET", "/v1/event-endpoints/" + w.endpoint() + "/attempts", nil
	}},
	"event-endpoint:replay": {req: func(w *world) (string, string, any) {
		return "POST", "/v1/event-endpoints/" + w.endpoint() + "/replay", map[string]any{"since": "2026-01-01T00:00:00Z"}
	}},
	"org-cloudevents:websocket": {stream: "websocket", req: func(w *world) (string, string, any) {
		return "GET", "/v1/orgs/" + w.org + "/cloudevents/ws", nil
	}},
	// The device API answers devices, not people: registration and the token
	// endpoint prove themselves in the body, so any caller may call them.
	"device:register": {req: func(w *world) (string, string, any) {
		return "POST", "/device/v1/register", newDeviceT(w).registration(w.provKey)
	}},
	"device:token": {req: func(w *world) (string, string, any) {
		return "POST", "/device/v1/token", map[string]any{"assertion": w.device.assertion(w.t)}
	}},
	"jwks:get":         {req: func(w *world) (string, string, any) { return "GET", "/.well-known/jwks.json", nil }},
	"device-state:get": {req: func(w *world) (string, string, any) { return "GET", "/device/v1/state", nil }},
	"device-delta:get": {req: func(w *world) (string, string, any) {
		return "GET", "/device/v1/deltas?from=sha256:" + strings.Repeat("a", 64) + "&to=sha256:" + strings.Repeat("b", 64), nil
	}},
	"device-state:update": {req: func(w *world) (string, string, any) {
		return "PATCH", "/device/v1/state", map[string]any{"seq": 1, "os_version": "1"}
	}},
	// The broker's hooks answer whoever calls (a deployment may demand a
	// hook token); the decision is in the body.
	"mqtt-hook:authenticate": {req: func(w *world) (string, string, any) {
		id := w.device.id.String()
		return "POST", "/internal/v1/mqtt/auth", map[string]any{"clientid": id, "username": id, "password": "not-a-token"}
	}},
	"mqtt-hook:authorize": {req: func(w *world) (string, string, any) {
		id := w.device.id.String()
		return "POST", "/internal/v1/mqtt/acl", map[string]any{"clientid": id, "username": id,
			"topic": "flock/v1/devices/" + id + "/state", "action": "publish"}
	}},
}

var callers = []string{"owner", "admin", "developer", "viewer", "outsider", "anonymous"}

// expect is the status class a caller must get: "ok" (2xx) or an exact status.
func expect(rule auth.Rule, fx fixture, caller string) int {
	if rule.Level == auth.Public {
		return 0
	}
	if rule.Level == auth.Device { // people and API keys are not devices
		return http.StatusUnauthorized
	}
	if caller == "anonymous" {
		return http.StatusUnauthorized
	}
	if rule.Level != auth.OrgRole {
		return 0
	}
	if caller == "outsider" {
		return http.StatusNotFound
	}
	min := rule.MinRole
	if fx.minRole != "" {
		min = fx.minRole
	}
	if !auth.AtLeast(db.OrgRole(caller), min) {
		return http.StatusForbidden
	}
	return 0
}

// TestRBACMatrix checks allow and deny for every caller on every operation.
func TestRBACMatrix(t *testing.T) {
	// Event endpoints point at a receiver on loopback.
	srv := apptest.Start(t, "--events-allow-private")
	shared := newWorld(t, srv).withFleet(t) // reads do not change the world
	for _, op := range specOperations(t) {
		fx, ok := fixtures[op]
		if !ok {
			t.Errorf("operation %s has no fixture in the RBAC matrix", op)
			continue
		}
		rule := handlers.Policy[op]
		for _, caller := range callers {
			t.Run(op+"/"+caller, func(t *testing.T) {
				w := shared
				if rule.Write {
					w = newWorld(t, srv)
					if !fx.bare {
						w.withFleet(t)
					}
				}
				w.t = t
				method, path, body := fx.req(w)
				var status int
				var hdr http.Header
				var out map[string]any
				if fx.stream != "" {
					status, hdr, out = openStream(t, srv, fx.stream, path, w.token(caller))
				} else {
					status, hdr, out = call(t, srv, method, path, w.token(caller), body)
				}
				want := expect(rule, fx, caller)
				switch {
				case want == 0 && status/100 != 2 && !(fx.stream == "websocket" && status == http.StatusSwitchingProtocols):
					t.Fatalf("%s as %s = %d, want success: %v", op, caller, status, out)
				case want != 0 && status != want:
					t.Fatalf("%s as %s = %d, want %d: %v", op, caller, status, want, out)
				}
				if status == http.StatusUnauthorized && hdr.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if status == http.StatusForbidden {
					if d, _ := out["detail"].(string); d == "" {
						t.Error("403 without a detail naming the role needed")
					}
				}
			})
		}
	}
}
