package handlers_test

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// call sends one JSON request as a customer's script would and returns the
// status, the response headers and the decoded body.
func call(t *testing.T, srv *apptest.Server, method, path, token string, body any) (int, http.Header, map[string]any) {
	t.Helper()
	return srv.Do(t, method, path, token, body)
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

	// Set by withFleet.
	fleet, provKeyID, provKey, release string
	fleetVar, deviceVar                string
	device                             *fakeDevice
	readRollout, readGroup             string     // made once for the read fixtures
	readCommand                        string     // made once for the read fixtures
	readMetric                         bool       // a sample stored for the read fixtures
	readBuild                          string     // made once for the read fixtures
	readEndpoint                       string     // made once for the read fixtures
	reportSeq                          int        // the last seq the world's device reported
	t                                  *testing.T // the subtest using the world now

	images map[string]apptest.Image // pushed for releases, by fleet id (image)
}

func newDeviceT(w *world) *fakeDevice { return newDevice(w.t) }

// emptyFleet creates a fleet with no devices.
func (w *world) emptyFleet() string {
	return must(w.t, w.srv, 201, "POST", "/v1/orgs/"+w.org+"/fleets", w.owner, map[string]any{"name": "empty", "architecture": "amd64"})["id"].(string)
}

func newWorld(t *testing.T, srv *apptest.Server) *world {
	t.Helper()
	w := &world{srv: srv, t: t}
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

// fakeDevice is a device as its agent would be: its own uuid and key pair.
type fakeDevice struct {
	id   uuid.UUID
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
}

func newDevice(t *testing.T) *fakeDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeDevice{id: uuid.New(), priv: priv, pub: pub}
}

func (d *fakeDevice) registration(provisioningKey string) map[string]any {
	return map[string]any{"provisioning_key": provisioningKey, "uuid": d.id.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(d.pub), "name": "dev-" + d.id.String()[:8], "device_type": "generic-amd64"}
}

// assertion signs a fresh assertion for the token endpoint.
func (d *fakeDevice) assertion(t *testing.T) string {
	t.Helper()
	a, err := devicetoken.SignAssertion(d.priv, d.id, app.TokenEndpoint(apptest.PublicURL), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// token registers nothing; it trades a fresh assertion for a device token.
func (d *fakeDevice) token(t *testing.T, srv *apptest.Server) string {
	t.Helper()
	out := must(t, srv, 200, "POST", "/device/v1/token", "", map[string]any{"assertion": d.assertion(t)})
	return out["access_token"].(string)
}

// image is the image of the service "app" that the world's releases in
// fleet run: a small random amd64 image pushed once per fleet, by the
// owner, to <org slug>/<fleet slug>/app through the registry-proxy.
func (w *world) image(fleet string) apptest.Image {
	w.t.Helper()
	if img, ok := w.images[fleet]; ok {
		return img
	}
	org := must(w.t, w.srv, 200, "GET", "/v1/orgs/"+w.org, w.owner, nil)["slug"].(string)
	slug := must(w.t, w.srv, 200, "GET", "/v1/fleets/"+fleet, w.owner, nil)["slug"].(string)
	img := w.srv.PushImage(w.t, w.owner, org+"/"+slug+"/app", "amd64")
	if w.images == nil {
		w.images = map[string]apptest.Image{}
	}
	w.images[fleet] = img
	return img
}

// releaseBody is a release of fleet (one of the world's organisation's)
// with status: one service, "app", running the fleet's image.
func (w *world) releaseBody(fleet, status string) map[string]any {
	w.t.Helper()
	img := w.image(fleet)
	return map[string]any{"version": "1.0", "status": status, "services": []any{map[string]any{
		"name": "app", "images": map[string]any{"amd64": map[string]any{"image": img.Ref + ":1.0", "digest": img.Digest}},
		"environment": map[string]any{"MODE": "release"}, "ports": []any{"8080:80/tcp"},
	}}}
}

// fleetWorld adds a fleet with a provisioning key, a final release, a
// registered device and a variable at each scope.
func (w *world) withFleet(t *testing.T) *world {
	t.Helper()
	if w.t == nil {
		w.t = t
	}
	srv := w.srv
	w.fleet = must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/fleets", w.owner, map[string]any{"name": "sensors", "architecture": "amd64"})["id"].(string)
	pk := must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/provisioning-keys", w.owner, map[string]any{"name": "factory"})
	w.provKeyID, w.provKey = pk["id"].(string), pk["secret"].(string)
	w.release = must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/releases", w.owner, w.releaseBody(w.fleet, "final"))["id"].(string)
	w.device = newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", w.device.registration(w.provKey))
	w.fleetVar = must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/variables", w.owner, map[string]any{"name": "LEVEL", "value": "1"})["id"].(string)
	w.deviceVar = must(t, srv, 201, "POST", "/v1/devices/"+w.device.id.String()+"/variables", w.owner, map[string]any{"name": "LEVEL", "value": "2"})["id"].(string)
	return w
}

// buildUpload is a project whose build stays open: its Dockerfile runs a
// command, so its riscv64 image waits for a builder of that architecture,
// which no test runs, for the default queue timeout (15 minutes).
func buildUpload(t *testing.T) apptest.Raw {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	df := "FROM scratch\nRUN true\n"
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(df))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return apptest.Raw{ContentType: "application/x-tar", Data: buf.Bytes()}
}

// openBuild uploads a build that stays open (see buildUpload).
func (w *world) openBuild() string {
	w.t.Helper()
	return must(w.t, w.srv, 202, "POST", "/v1/fleets/"+w.fleet+"/builds?architectures=riscv64", w.developer, buildUpload(w.t))["id"].(string)
}

func (w *world) buildForReads() string {
	if w.readBuild == "" {
		w.readBuild = w.openBuild()
	}
	return w.readBuild
}

// endpoint is an event endpoint of the world's organisation: made once for
// reads, fresh for writes (a write world is new each time). It takes only
// test sends, so its delivery log does not grow while a test reads it
// twice (the world's own changes are audited, and would be delivered).
func (w *world) endpoint() string {
	w.t.Helper()
	if w.readEndpoint == "" {
		w.readEndpoint = must(w.t, w.srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.owner,
			map[string]any{"name": "ci", "kind": "webhook", "url": hookURL(), "types": []string{"io.flock.event-endpoint.test"}})["id"].(string)
	}
	return w.readEndpoint
}

// hookURL is a webhook receiver answering 204 to everything, for worlds
// whose server allows private addresses (--events-allow-private).
var hookURL = sync.OnceValue(func() string {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })).URL
})
