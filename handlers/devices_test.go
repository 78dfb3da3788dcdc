package handlers_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func TestDeviceRegistrationAndTokens(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	dev := newDevice(t)

	first := must(t, srv, 201, "POST", "/device/v1/register", "", dev.registration(w.provKey))
	if first["fleet_id"] != w.fleet || first["org_id"] != w.org || first["token_endpoint"] != "http://flock.test:8080/device/v1/token" {
		t.Fatalf("registration = %v", first)
	}
	// A retry returns the same device and does not use the key again.
	again := must(t, srv, 200, "POST", "/device/v1/register", "", dev.registration(w.provKey))
	if again["device_id"] != first["device_id"] {
		t.Fatalf("retry = %v", again)
	}
	// The same uuid with another key pair is a conflict.
	impostor := newDevice(t)
	impostor.id = dev.id
	status, _, out := call(t, srv, "POST", "/device/v1/register", "", impostor.registration(w.provKey))
	if status != 409 || out["code"] != "device_exists" {
		t.Fatalf("same uuid, other key = %d %v", status, out)
	}
	keys := must(t, srv, 200, "GET", "/v1/fleets/"+w.fleet+"/provisioning-keys", w.developer, nil)["items"].([]any)
	if uses := keys[0].(map[string]any)["uses"]; uses != float64(2) { // withFleet's device and this one
		t.Fatalf("uses = %v, want 2", uses)
	}

	// Assertions buy tokens; an assertion is good once.
	assertion := dev.assertion(t)
	tok := must(t, srv, 200, "POST", "/device/v1/token", "", map[string]any{"assertion": assertion})
	if tok["token_type"] != "Bearer" || tok["expires_in"].(float64) > 900 || tok["expires_in"].(float64) < 800 {
		t.Fatalf("token = %v", tok)
	}
	status, hdr, out := call(t, srv, "POST", "/device/v1/token", "", map[string]any{"assertion": assertion})
	if status != 401 || out["code"] != "assertion_replayed" || hdr.Get("WWW-Authenticate") == "" {
		t.Fatalf("replayed assertion = %d %v", status, out)
	}
	// An assertion signed by another key is refused.
	forged := newDevice(t)
	forged.id = dev.id
	status, _, out = call(t, srv, "POST", "/device/v1/token", "", map[string]any{"assertion": forged.assertion(t)})
	if status != 401 || out["code"] != "invalid_assertion" {
		t.Fatalf("forged assertion = %d %v", status, out)
	}

	// The token works on the device API and nowhere else.
	access := tok["access_token"].(string)
	must(t, srv, 200, "GET", "/device/v1/state", access, nil)
	if status, _, _ := call(t, srv, "GET", "/v1/devices/"+dev.id.String(), access, nil); status != 401 {
		t.Fatalf("device token on the management API = %d, want 401", status)
	}
	if status, _, _ := call(t, srv, "GET", "/device/v1/state", w.owner, nil); status != 401 {
		t.Fatalf("user token on the device API = %d, want 401", status)
	}

	// JWKS publishes the signing key; the token names it.
	jwks := must(t, srv, 200, "GET", "/.well-known/jwks.json", "", nil)["keys"].([]any)
	if len(jwks) == 0 || jwks[0].(map[string]any)["alg"] != "EdDSA" || jwks[0].(map[string]any)["d"] != nil {
		t.Fatalf("jwks = %v", jwks)
	}

	// Deleting the device stops its tokens at once.
	must(t, srv, 204, "DELETE", "/v1/devices/"+dev.id.String(), w.developer, nil)
	status, _, out = call(t, srv, "GET", "/device/v1/state", access, nil)
	if status != 401 || !strings.Contains(out["detail"].(string), "deleted") {
		t.Fatalf("token of a deleted device = %d %v", status, out)
	}
	status, _, out = call(t, srv, "POST", "/device/v1/token", "", map[string]any{"assertion": dev.assertion(t)})
	if status != 401 || out["code"] != "unknown_device" {
		t.Fatalf("assertion of a deleted device = %d %v", status, out)
	}
}

func TestProvisioningKeyLimits(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	base := "/v1/fleets/" + w.fleet + "/provisioning-keys"

	once := must(t, srv, 201, "POST", base, w.developer, map[string]any{"name": "one", "max_uses": 1})["secret"].(string)
	must(t, srv, 201, "POST", "/device/v1/register", "", newDevice(t).registration(once))
	status, _, out := call(t, srv, "POST", "/device/v1/register", "", newDevice(t).registration(once))
	if status != 401 || out["code"] != "provisioning_key_exhausted" {
		t.Fatalf("exhausted key = %d %v", status, out)
	}

	soon := time.Now().Add(1500 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	short := must(t, srv, 201, "POST", base, w.developer, map[string]any{"name": "short", "expires_at": soon})["secret"].(string)
	testutil.Eventually(t, "the short key to expire", func() error {
		status, _, out = call(t, srv, "POST", "/device/v1/register", "", newDevice(t).registration(short))
		if status != 401 {
			return fmt.Errorf("register = %d", status)
		}
		return nil
	})
	if out["code"] != "provisioning_key_expired" {
		t.Fatalf("expired key = %d %v", status, out)
	}

	must(t, srv, 204, "DELETE", base+"/"+w.provKeyID, w.developer, nil)
	status, _, out = call(t, srv, "POST", "/device/v1/register", "", newDevice(t).registration(w.provKey))
	if status != 401 || out["code"] != "provisioning_key_revoked" || !strings.Contains(out["detail"].(string), "revoked") {
		t.Fatalf("revoked key = %d %v", status, out)
	}
	status, _, out = call(t, srv, "POST", "/device/v1/register", "", newDevice(t).registration("flp_00000000000000000000000000000000_nope"))
	if status != 401 || out["code"] != "invalid_provisioning_key" {
		t.Fatalf("unknown key = %d %v", status, out)
	}
	// A key never shows its secret again.
	for _, k := range must(t, srv, 200, "GET", base, w.developer, nil)["items"].([]any) {
		if _, ok := k.(map[string]any)["secret"]; ok {
			t.Fatal("a listed provisioning key shows its secret")
		}
	}
}

func TestTargetState(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	dev := w.device
	token := dev.token(t, srv)
	devPath := "/v1/devices/" + dev.id.String()

	get := func() (int, map[string]any, string) {
		t.Helper()
		status, hdr, out := call(t, srv, "GET", "/device/v1/state", token, nil)
		return status, out, hdr.Get("ETag")
	}
	status, ts, etag := get()
	if status != 200 || etag != `"`+ts["version"].(string)+`"` {
		t.Fatalf("state = %d %v etag %q", status, ts, etag)
	}
	rel := ts["release"].(map[string]any)
	svc := ts["services"].([]any)[0].(map[string]any)
	env := svc["environment"].(map[string]any)
	img := w.image(w.fleet)
	if rel["id"] != w.release || svc["image"] != img.Ref+"@"+img.Digest || svc["digest"] != img.Digest ||
		env["MODE"] != "release" || env["LEVEL"] != "2" || ts["variables"].(map[string]any)["LEVEL"] != "2" {
		t.Fatalf("target state = %v", ts)
	}

	// Unchanged: 304 with the same ETag.
	req, _ := http.NewRequest("GET", srv.URL+"/device/v1/state", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("If-None-Match", etag)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 304 || resp.Header.Get("ETag") != etag {
		t.Fatalf("If-None-Match = %d %q", resp.StatusCode, resp.Header.Get("ETag"))
	}

	// Service-scoped beats global; device beats fleet.
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/variables", w.developer, map[string]any{"name": "ONLY_APP", "value": "f", "service": "app"})
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/variables", w.developer, map[string]any{"name": "LEVEL", "value": "3", "service": "app"})
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/variables", w.developer, map[string]any{"name": "TOKEN", "value": "s3cret", "secret": true})
	_, ts, etag2 := get()
	env = ts["services"].([]any)[0].(map[string]any)["environment"].(map[string]any)
	if etag2 == etag || env["ONLY_APP"] != "f" || env["LEVEL"] != "2" || env["TOKEN"] != "s3cret" {
		t.Fatalf("merged environment = %v (etag %s -> %s)", env, etag, etag2)
	}
	if _, ok := ts["variables"].(map[string]any)["ONLY_APP"]; ok {
		t.Fatal("a service-scoped variable leaked into the global set")
	}
	must(t, srv, 201, "POST", devPath+"/variables", w.developer, map[string]any{"name": "LEVEL", "value": "4", "service": "app"})
	_, ts, _ = get()
	if env := ts["services"].([]any)[0].(map[string]any)["environment"].(map[string]any); env["LEVEL"] != "4" {
		t.Fatalf("device+service variable did not win: %v", env)
	}

	// A newer final release is picked up; a draft is not.
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/releases", w.developer, w.releaseBody(w.fleet, "draft"))
	newer := must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/releases", w.developer, w.releaseBody(w.fleet, "final"))["id"].(string)
	_, ts, _ = get()
	if ts["release"].(map[string]any)["id"] != newer {
		t.Fatalf("tracking fleet runs %v, want the newest final %s", ts["release"], newer)
	}
	// Fleet pin beats latest; device pin beats fleet pin.
	must(t, srv, 200, "PATCH", "/v1/fleets/"+w.fleet, w.developer, map[string]any{"release_policy": "pinned", "pinned_release_id": w.release})
	_, ts, _ = get()
	if ts["release"].(map[string]any)["id"] != w.release {
		t.Fatalf("pinned fleet runs %v", ts["release"])
	}
	must(t, srv, 200, "PATCH", devPath, w.developer, map[string]any{"pinned_release_id": newer})
	_, ts, _ = get()
	if ts["release"].(map[string]any)["id"] != newer {
		t.Fatalf("pinned device runs %v", ts["release"])
	}
	must(t, srv, 200, "PATCH", devPath, w.developer, map[string]any{"pinned_release_id": nil})
	_, ts, _ = get()
	if ts["release"].(map[string]any)["id"] != w.release {
		t.Fatalf("unpinned device runs %v, want the fleet pin", ts["release"])
	}

	// Reported state shows on the device resource, and the device is online.
	must(t, srv, 204, "PATCH", "/device/v1/state", token, map[string]any{
		"seq": 1, "running_release_id": w.release, "os_version": "flockOS 1.2", "agent_version": "0.3.0",
		"ip_addresses": []any{"10.0.0.7"},
		"services":     []any{map[string]any{"name": "app", "status": "downloading", "download_progress": 40}},
	})
	d := must(t, srv, 200, "GET", devPath, w.viewer, nil)
	rs := d["reported_state"].(map[string]any)
	if d["online"] != true || d["last_seen_at"] == nil || rs["os_version"] != "flockOS 1.2" ||
		rs["services"].([]any)[0].(map[string]any)["download_progress"] != float64(40) {
		t.Fatalf("device = %v", d)
	}
	if status, _, _ := call(t, srv, "PATCH", "/device/v1/state", token, map[string]any{"seq": 2, "services": []any{map[string]any{"name": "app", "status": "dancing"}}}); status != 400 {
		t.Fatalf("bad reported state = %d, want 400", status)
	}
}

func TestFleetsReleasesAndBadInput(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	fleets := "/v1/orgs/" + w.org + "/fleets"
	releases := "/v1/fleets/" + w.fleet + "/releases"
	dev := w.developer

	bad := []struct {
		name, method, path string
		body               any
		status             int
		field              string
	}{
		{"unknown architecture", "POST", fleets, map[string]any{"name": "x", "architecture": "sparc"}, 400, "/architecture"},
		{"duplicate fleet name", "POST", fleets, map[string]any{"name": "sensors", "architecture": "amd64"}, 409, ""},
		{"digest not sha256", "POST", releases, map[string]any{"services": []any{map[string]any{"name": "app",
			"images": map[string]any{"amd64": map[string]any{"image": "a/b", "digest": "md5:abc"}}}}}, 400, "/services/0/images/amd64/digest"},
		{"no image for the fleet's architecture", "POST", releases, map[string]any{"services": []any{map[string]any{"name": "app",
			"images": map[string]any{"arm64": map[string]any{"image": w.image(w.fleet).Ref, "digest": w.image(w.fleet).Digest}}}}}, 400, "/services/0/images"},
		{"invalid variable name", "POST", "/v1/fleets/" + w.fleet + "/variables", map[string]any{"name": "1BAD", "value": "x"}, 400, "/name"},
		{"reserved variable name", "POST", "/v1/fleets/" + w.fleet + "/variables", map[string]any{"name": "flock_secret", "value": "x"}, 400, "/name"},
		{"duplicate variable", "POST", "/v1/fleets/" + w.fleet + "/variables", map[string]any{"name": "LEVEL", "value": "x"}, 409, ""},
		{"pin to a draft", "PATCH", "/v1/fleets/" + w.fleet, map[string]any{"pinned_release_id": must(t, srv, 201, "POST", releases, dev, w.releaseBody(w.fleet, "draft"))["id"]}, 400, "/pinned_release_id"},
		{"delete a fleet with devices", "DELETE", "/v1/fleets/" + w.fleet, nil, 409, ""},
		{"delete an org with fleets", "DELETE", "/v1/orgs/" + w.org, nil, 409, ""},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			status, _, out := call(t, srv, tt.method, tt.path, w.owner, tt.body)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %v", status, tt.status, out)
			}
			if tt.field != "" && !strings.Contains(fmt.Sprint(out["errors"]), tt.field) {
				t.Fatalf("errors %v do not name %s", out["errors"], tt.field)
			}
		})
	}

	// Final releases are immutable; drafts become final once.
	status, _, out := call(t, srv, "PATCH", "/v1/releases/"+w.release, dev, map[string]any{"status": "failed"})
	if status != 409 || out["code"] != "release_immutable" {
		t.Fatalf("changing a final release = %d %v", status, out)
	}
	must(t, srv, 200, "PATCH", "/v1/releases/"+w.release, dev, map[string]any{"tags": map[string]any{"qa": "ok"}})
	draft := must(t, srv, 201, "POST", releases, dev, w.releaseBody(w.fleet, "draft"))["id"].(string)
	final := must(t, srv, 200, "PATCH", "/v1/releases/"+draft, dev, map[string]any{"status": "final"})
	if final["finalized_at"] == nil {
		t.Fatalf("finalised release = %v", final)
	}
	if n := len(must(t, srv, 200, "GET", releases+"?status=final", w.viewer, nil)["items"].([]any)); n != 2 {
		t.Fatalf("final releases = %d, want 2", n)
	}

	// Secret variables are write-only.
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/variables", dev, map[string]any{"name": "API_TOKEN", "value": "hunter2", "secret": true})
	for _, v := range must(t, srv, 200, "GET", "/v1/fleets/"+w.fleet+"/variables", w.viewer, nil)["items"].([]any) {
		if strings.Contains(fmt.Sprint(v), "hunter2") {
			t.Fatalf("secret value listed: %v", v)
		}
	}
	// A device's merged set stays under 1 MiB.
	big := strings.Repeat("x", 600<<10)
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/variables", dev, map[string]any{"name": "BIG1", "value": big})
	status, _, out = call(t, srv, "POST", "/v1/devices/"+w.device.id.String()+"/variables", dev, map[string]any{"name": "BIG2", "value": big})
	if status != 413 || out["code"] != "variables_too_large" {
		t.Fatalf("over 1 MiB merged = %d %v", status, out)
	}

	// Moves: same organisation and architecture only; variables follow.
	other := must(t, srv, 201, "POST", fleets, dev, map[string]any{"name": "second", "architecture": "amd64"})["id"].(string)
	arm := must(t, srv, 201, "POST", fleets, dev, map[string]any{"name": "arm", "architecture": "arm64"})["id"].(string)
	devPath := "/v1/devices/" + w.device.id.String()
	if status, _, _ := call(t, srv, "PATCH", devPath, dev, map[string]any{"fleet_id": arm}); status != 400 {
		t.Fatalf("move to another architecture = %d, want 400", status)
	}
	if status, _, _ := call(t, srv, "PATCH", devPath, dev, map[string]any{"fleet_id": w.otherOrgFleet(t)}); status != 400 {
		t.Fatalf("move to another organisation's fleet = %d, want 400", status)
	}
	moved := must(t, srv, 200, "PATCH", devPath, dev, map[string]any{"fleet_id": other, "name": "moved", "tags": map[string]any{"site": "b"}})
	if moved["fleet_id"] != other || moved["name"] != "moved" {
		t.Fatalf("moved = %v", moved)
	}
	vars := must(t, srv, 200, "GET", devPath+"/variables", w.viewer, nil)["items"].([]any)
	if len(vars) != 1 || vars[0].(map[string]any)["fleet_id"] != other {
		t.Fatalf("device variables after the move = %v", vars)
	}
	ts := must(t, srv, 200, "GET", "/device/v1/state", w.device.token(t, srv), nil)
	if ts["release"] != nil {
		t.Fatalf("the new fleet has no final release, yet the target is %v", ts["release"])
	}
}

func (w *world) otherOrgFleet(t *testing.T) string {
	return must(t, w.srv, 201, "POST", "/v1/orgs/"+w.otherOrg+"/fleets", w.outsider, map[string]any{"name": "theirs", "architecture": "amd64"})["id"].(string)
}

func TestDeviceListFilters(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	second := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/fleets", w.owner, map[string]any{"name": "second", "architecture": "amd64"})["id"].(string)
	pk2 := must(t, srv, 201, "POST", "/v1/fleets/"+second+"/provisioning-keys", w.owner, map[string]any{"name": "k"})["secret"].(string)
	var ids []string
	for i := range 6 {
		d := newDevice(t)
		key := w.provKey
		if i%2 == 1 {
			key = pk2
		}
		reg := d.registration(key)
		reg["name"] = fmt.Sprintf("pump-%d", i)
		must(t, srv, 201, "POST", "/device/v1/register", "", reg)
		tags := map[string]any{"site": "north"}
		if i >= 3 {
			tags["site"] = "south"
		}
		must(t, srv, 200, "PATCH", "/v1/devices/"+d.id.String(), w.developer, map[string]any{"tags": tags})
		if i == 0 {
			must(t, srv, 204, "PATCH", "/device/v1/state", d.token(t, srv), map[string]any{"seq": 1, "running_release_id": w.release})
		}
		ids = append(ids, d.id.String())
	}
	base := "/v1/orgs/" + w.org + "/devices"
	count := func(q string) int {
		t.Helper()
		n := 0
		page := must(t, srv, 200, "GET", base+q, w.viewer, nil)
		for {
			n += len(page["items"].([]any))
			if page["next_cursor"] == nil {
				return n
			}
			sep := "?"
			if strings.Contains(q, "?") {
				sep = "&"
			}
			page = must(t, srv, 200, "GET", base+q+sep+"cursor="+page["next_cursor"].(string), w.viewer, nil)
		}
	}
	for _, tt := range []struct {
		q    string
		want int
	}{
		{"", 7}, // withFleet's device too
		{"?limit=2", 7},
		{"?fleet_id=" + second, 3},
		{"?tag_key=site", 6},
		{"?tag_key=site&tag_value=south", 3},
		{"?tag_key=site&tag_value=south&fleet_id=" + second, 2},
		{"?name_prefix=pump-", 6},
		{"?name_prefix=pump_", 0}, // _ is not a wildcard
		{"?online=true", 1},
		{"?online=false", 6},
		{"?running_release_id=" + w.release, 1},
	} {
		if got := count(tt.q); got != tt.want {
			t.Errorf("GET devices%s: %d devices, want %d", tt.q, got, tt.want)
		}
	}
}

// TestDevicesIsolation: fleets, releases, devices and variables of another
// organisation are 404, also to that organisation's provisioning keys and
// device tokens used across.
func TestDevicesIsolation(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	b := &world{srv: srv, t: t, org: w.otherOrg, owner: w.outsider}
	b.withFleet(t)
	for _, p := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/fleets/" + b.fleet, nil},
		{"PATCH", "/v1/fleets/" + b.fleet, map[string]any{"name": "x"}},
		{"DELETE", "/v1/fleets/" + b.fleet, nil},
		{"GET", "/v1/fleets/" + b.fleet + "/releases", nil},
		{"POST", "/v1/fleets/" + b.fleet + "/releases", b.releaseBody(b.fleet, "final")},
		{"GET", "/v1/releases/" + b.release, nil},
		{"PATCH", "/v1/releases/" + b.release, map[string]any{"tags": map[string]any{}}},
		{"GET", "/v1/fleets/" + b.fleet + "/provisioning-keys", nil},
		{"GET", "/v1/fleets/" + b.fleet + "/variables", nil},
		{"PATCH", "/v1/fleets/" + b.fleet + "/variables/" + b.fleetVar, map[string]any{"value": "x"}},
		{"GET", "/v1/devices/" + b.device.id.String(), nil},
		{"PATCH", "/v1/devices/" + b.device.id.String(), map[string]any{"name": "x"}},
		{"DELETE", "/v1/devices/" + b.device.id.String(), nil},
		{"GET", "/v1/devices/" + b.device.id.String() + "/variables", nil},
		// A's fleet variable through B's fleet path, B's device variable through A's device.
		{"PATCH", "/v1/fleets/" + b.fleet + "/variables/" + w.fleetVar, map[string]any{"value": "x"}},
		{"DELETE", "/v1/devices/" + w.device.id.String() + "/variables/" + b.deviceVar, nil},
	} {
		status, _, out := call(t, srv, p.method, p.path, w.owner, p.body)
		if status != 404 {
			t.Errorf("%s %s as A's owner = %d, want 404: %v", p.method, p.path, status, out)
		}
	}
	// Pinning A's device to B's release is refused without revealing it.
	if status, _, _ := call(t, srv, "PATCH", "/v1/devices/"+w.device.id.String(), w.owner, map[string]any{"pinned_release_id": b.release}); status != 400 {
		t.Errorf("pin to another organisation's release = %d, want 400", status)
	}
	// A's device list never shows B's devices.
	for _, d := range must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices", w.owner, nil)["items"].([]any) {
		if d.(map[string]any)["id"] == b.device.id.String() {
			t.Fatal("A's list shows B's device")
		}
	}
	// B's device, through the device API, sees only its own target.
	ts := must(t, srv, 200, "GET", "/device/v1/state", b.device.token(t, srv), nil)
	if ts["device_id"] != b.device.id.String() || ts["release"].(map[string]any)["id"] != b.release {
		t.Fatalf("B's device target = %v", ts)
	}
}

func TestRegistrationIsAudited(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	events := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/audit-events?limit=500", w.admin, nil)["items"].([]any)
	for _, e := range events {
		ev := e.(map[string]any)
		if ev["operation"] == "device:register" {
			actor := ev["actor"].(map[string]any)
			if actor["type"] != "provisioning_key" || actor["id"] != w.provKeyID || actor["label"] != "factory" ||
				ev["target_id"] != w.device.id.String() || ev["status"] != float64(201) {
				t.Fatalf("registration event = %v", ev)
			}
			return
		}
	}
	t.Fatalf("no device:register event among %d", len(events))
}
