package handlers_test

import (
	"crypto/ed25519"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

const (
	hookServiceUser     = "ingester"
	hookServicePassword = "ingester-secret"
)

func startHookServer(t *testing.T, token string, noGate bool) *liveEnv {
	t.Helper()
	return startLiveServer(t, liveOptions{noGate: noGate, deps: func(e *liveEnv, d *handlers.Deps) {
		a, err := mqttauth.NewAuthenticator(hookServiceUser, hookServicePassword, e.tokens, e.pool)
		if err != nil {
			t.Fatal(err)
		}
		// Without a token the hooks answer only in dev mode.
		d.MQTTAuth, d.MQTTHookToken, d.MQTTHooksOpen = a, token, token == ""
	}})
}

// Outside dev mode, hooks without a token refuse everyone: they would
// otherwise tell anyone who reaches the API whether a device token is good.
func TestMQTTHooksClosedWithoutToken(t *testing.T) {
	e := startLiveServer(t, liveOptions{deps: func(e *liveEnv, d *handlers.Deps) {
		a, err := mqttauth.NewAuthenticator(hookServiceUser, hookServicePassword, e.tokens, e.pool)
		if err != nil {
			t.Fatal(err)
		}
		d.MQTTAuth = a
	}})
	for _, c := range []struct {
		path string
		body map[string]any
	}{
		{"/internal/v1/mqtt/auth", map[string]any{"clientid": "ingester-1", "username": hookServiceUser, "password": hookServicePassword}},
		{"/internal/v1/mqtt/acl", map[string]any{"clientid": "ingester-1", "username": hookServiceUser, "topic": "flock/v1/devices/+/state", "action": "subscribe"}},
	} {
		got := must(t, e.srv, 403, "POST", c.path, "", c.body)
		if got["code"] != "hooks_closed" {
			t.Errorf("%s: %v", c.path, got)
		}
	}
}

// craftDeviceToken signs a device token with the deployment's current
// signing key, as Issue would, but issued 25 minutes ago and expiring at exp.
func craftDeviceToken(t *testing.T, e *liveEnv, device uuid.UUID, exp time.Time) string {
	t.Helper()
	keys, err := db.New(e.pool).SigningKeyList(t.Context(), devicetoken.Purpose)
	if err != nil || len(keys) == 0 {
		t.Fatalf("signing keys: %v %v", keys, err)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(keys[0].PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA,
		Key: jose.JSONWebKey{Key: parsed.(ed25519.PrivateKey), KeyID: keys[0].Kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	issuer := app.DeviceIssuer(apptest.PublicURL)
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: issuer, Subject: device.String(), Audience: jwt.Audience{issuer},
		IssuedAt: jwt.NewNumericDate(now.Add(-25 * time.Minute)), NotBefore: jwt.NewNumericDate(now.Add(-25 * time.Minute)),
		Expiry: jwt.NewNumericDate(exp), ID: uuid.NewString()}).
		Claims(map[string]any{"org": uuid.NewString(), "fleet": uuid.NewString()}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestMQTTAuthHook(t *testing.T) {
	e := startHookServer(t, "", false)
	srv := e.srv
	w := newWorld(t, srv).withFleet(t)
	a, b := w.device, newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", b.registration(w.provKey))
	tokA := a.token(t, srv)
	ida, idb := a.id.String(), b.id.String()

	for _, tt := range []struct {
		name                         string
		clientid, username, password string
		allow, superuser             bool
	}{
		{"device with its token", ida, ida, tokA, true, false},
		{"service user", "ingester-1", hookServiceUser, hookServicePassword, true, true},
		{"service user, wrong password", "ingester-1", hookServiceUser, "guess", false, false},
		{"service user under a device's client id", ida, hookServiceUser, hookServicePassword, false, false},
		{"garbage token", ida, ida, "x.y.z", false, false},
		{"token crafted as Issue would", ida, ida, craftDeviceToken(t, e, a.id, time.Now().Add(time.Minute)), true, false},
		{"expired token", ida, ida, craftDeviceToken(t, e, a.id, time.Now().Add(-10*time.Minute)), false, false},
		{"user name not the token's subject", idb, idb, tokA, false, false},
		{"client id not the user name", "someone", ida, tokA, false, false},
		{"user name not a uuid", "x", "x", tokA, false, false},
		{"no credentials", ida, "", "", false, false},
		{"a user's token", ida, ida, w.owner, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, _, out := call(t, srv, "POST", "/internal/v1/mqtt/auth", "",
				map[string]any{"clientid": tt.clientid, "username": tt.username, "password": tt.password})
			want := map[string]any{"result": "deny", "is_superuser": false}
			if tt.allow {
				want = map[string]any{"result": "allow", "is_superuser": tt.superuser}
			}
			if status != 200 || out["result"] != want["result"] || out["is_superuser"] != want["is_superuser"] {
				t.Fatalf("auth = %d %v, want 200 %v", status, out, want)
			}
			// EMQX ends a device's connection at expire_at, as the
			// embedded broker does.
			exp, hasExp := out["expire_at"].(float64)
			if device := tt.allow && !tt.superuser; device != hasExp {
				t.Fatalf("expire_at %v present %v, want present for an admitted device only", out["expire_at"], hasExp)
			}
			if hasExp {
				c, err := e.tokens.Verify(t.Context(), tt.password)
				if err != nil || int64(exp) != c.Expiry.Unix() {
					t.Fatalf("expire_at %v, token expires %v (%v)", exp, c, err)
				}
			}
		})
	}

	// A deleted device's token, still unexpired, is refused.
	gone := newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", gone.registration(w.provKey))
	tokGone := gone.token(t, srv)
	must(t, srv, 204, "DELETE", "/v1/devices/"+gone.id.String(), w.developer, nil)
	if out := must(t, srv, 200, "POST", "/internal/v1/mqtt/auth", "",
		map[string]any{"clientid": gone.id.String(), "username": gone.id.String(), "password": tokGone}); out["result"] != "deny" {
		t.Fatalf("deleted device: %v, want deny", out)
	}

	// A body the broker was not configured to send is a 400 problem, which
	// the broker reads as "ignore".
	status, hdr, out := call(t, srv, "POST", "/internal/v1/mqtt/auth", "", map[string]any{"clientid": ida})
	if status != 400 || hdr.Get("Content-Type") != problem.ContentType {
		t.Fatalf("incomplete body = %d %v", status, out)
	}
}

func TestMQTTACLHook(t *testing.T) {
	e := startHookServer(t, "", false)
	srv := e.srv
	a, b := uuid.NewString(), uuid.NewString()
	topic := func(id, kind string) string { return "flock/v1/devices/" + id + "/" + kind }
	for _, tt := range []struct {
		name, username, action, topic string
		allow                         bool
	}{
		{"device publishes its state", a, "publish", topic(a, "state"), true},
		{"device publishes its telemetry", a, "publish", topic(a, "telemetry"), true},
		{"device publishes its status", a, "publish", topic(a, "status"), true},
		{"device publishes another's state", a, "publish", topic(b, "state"), false},
		{"device publishes its own target", a, "publish", topic(a, "target"), false},
		{"device publishes outside the tree", a, "publish", "elsewhere", false},
		{"device subscribes to its target", a, "subscribe", topic(a, "target"), true},
		{"device subscribes to its commands", a, "subscribe", topic(a, "commands"), true},
		{"device subscribes to another's target", a, "subscribe", topic(b, "target"), false},
		{"device subscribes to every target", a, "subscribe", "flock/v1/devices/+/target", false},
		{"device subscribes to its subtree", a, "subscribe", "flock/v1/devices/" + a + "/#", false},
		{"device subscribes to everything", a, "subscribe", "#", false},
		{"device subscribes to its state", a, "subscribe", topic(a, "state"), false},
		{"service publishes a target", hookServiceUser, "publish", topic(b, "target"), true},
		{"service publishes a state", hookServiceUser, "publish", topic(b, "state"), false},
		{"service shares the states", hookServiceUser, "subscribe", "$share/ingest/flock/v1/devices/+/state", true},
		{"service subscribes to everything", hookServiceUser, "subscribe", "#", false},
		{"unknown user", "someone", "publish", topic(a, "state"), false},
		{"uppercase uuid", strings.ToUpper(a), "publish", topic(strings.ToUpper(a), "state"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, _, out := call(t, srv, "POST", "/internal/v1/mqtt/acl", "",
				map[string]any{"clientid": tt.username, "username": tt.username, "topic": tt.topic, "action": tt.action})
			want := "deny"
			if tt.allow {
				want = "allow"
			}
			if status != 200 || out["result"] != want {
				t.Fatalf("acl = %d %v, want %s", status, out, want)
			}
		})
	}
	status, _, out := call(t, srv, "POST", "/internal/v1/mqtt/acl", "",
		map[string]any{"clientid": a, "username": a, "topic": topic(a, "state"), "action": "delete"})
	if status != 400 {
		t.Fatalf("unknown action = %d %v", status, out)
	}
}

func TestMQTTHookToken(t *testing.T) {
	const secret = "hook-secret-0123456789"
	e := startHookServer(t, secret, false)
	srv := e.srv
	w := newWorld(t, srv)
	dev := uuid.NewString()
	acl := map[string]any{"clientid": dev, "username": dev, "topic": "flock/v1/devices/" + dev + "/state", "action": "publish"}
	auth := map[string]any{"clientid": "ingester-1", "username": hookServiceUser, "password": hookServicePassword}

	for _, tt := range []struct {
		name, token string
		ok          bool
	}{
		{"the hook token", secret, true},
		{"no token", "", false},
		{"a wrong token", "hook-secret", false},
		{"the token and more", secret + "x", false},
		{"a user's token", w.owner, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for path, body := range map[string]any{"/internal/v1/mqtt/auth": auth, "/internal/v1/mqtt/acl": acl} {
				status, hdr, out := call(t, srv, "POST", path, tt.token, body)
				switch {
				case tt.ok && (status != 200 || out["result"] != "allow"):
					t.Errorf("%s = %d %v, want 200 allow", path, status, out)
				case !tt.ok && (status != 401 || out["code"] != "unauthorized" || hdr.Get("WWW-Authenticate") == "" ||
					hdr.Get("Content-Type") != problem.ContentType):
					t.Errorf("%s = %d %v, want a 401 problem", path, status, out)
				}
			}
		})
	}
	// Other paths are not the gate's business.
	must(t, srv, 200, "GET", "/v1/orgs/"+w.org, w.owner, nil)

	// Mounted without the gate, a hook with a token set refuses every
	// request rather than ignoring the token.
	bare := startHookServer(t, secret, true)
	if status, _, out := call(t, bare.srv, "POST", "/internal/v1/mqtt/acl", "", acl); status != 401 {
		t.Fatalf("no gate = %d %v, want 401", status, out)
	}
}
