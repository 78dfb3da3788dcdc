package builder_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/buildah/buildahtest"
)

// TestBuildLimitsAndBaseRegistryLogin: an image that outlasts
// --build-timeout fails with timeout and its release with it; a base image
// from another registry behind a login is pulled with the project's
// .flock/registry-auth.json, whose password never reaches the log.
func TestBuildLimitsAndBaseRegistryLogin(t *testing.T) {
	const user, password = "vendor", "vendor-pass-5e3ret"
	other := buildahtest.RegistryWithAuth(t, user, password)
	base := buildahtest.PushBusybox(t, other, "vendor/busybox", "amd64")
	// The timeout has a server of its own: under load an ordinary build
	// can outlast 5 s too.
	e := setup(t, "--builder-insecure-registries="+other)

	t.Run("timeout", func(t *testing.T) {
		e := setup(t, "--build-timeout=5s")
		code, b := e.upload(t, "", project(t, map[string]string{
			"Dockerfile": "FROM " + e.base(t) + "\nRUN echo waiting && sleep 600\n",
		}))
		if code != 202 {
			t.Fatalf("upload = %d: %v", code, b)
		}
		b = e.wait(t, b["id"].(string))
		errDoc, _ := b["error"].(map[string]any)
		if b["status"] != "failed" || errDoc["code"] != "timeout" {
			t.Fatalf("build = %v", b)
		}
		rel := mustDo(t, e.srv, 200, "GET", "/v1/releases/"+b["release_id"].(string), e.token, nil)
		if rel["status"] != "failed" {
			t.Fatalf("release = %v", rel["status"])
		}
	})

	t.Run("base image behind a login", func(t *testing.T) {
		auth, _ := json.Marshal(map[string]any{"auths": map[string]any{other: map[string]string{
			"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}}})
		files := map[string]string{
			"Dockerfile":                "FROM " + base + "\nRUN echo from the vendor base > /vendor\n",
			".flock/registry-auth.json": string(auth),
		}
		code, b := e.upload(t, "", project(t, files))
		if code != 202 {
			t.Fatalf("upload = %d: %v", code, b)
		}
		id := b["id"].(string)
		b = e.wait(t, id)
		log := e.log(t, id)
		if b["status"] != "succeeded" {
			t.Fatalf("build = %v\n%s", b, log)
		}
		if strings.Contains(log, password) || strings.Contains(log, base64.StdEncoding.EncodeToString([]byte(user+":"+password))) {
			t.Fatalf("the log holds the registry password:\n%s", log)
		}

		// Without the login the same project fails at its FROM step, in
		// another fleet: each fleet has its own layer storage, and this one
		// holds the base image already.
		delete(files, ".flock/registry-auth.json")
		other := *e
		other.fleet = mustDo(t, e.srv, 201, "POST", "/v1/orgs/"+e.orgID+"/fleets", e.token,
			map[string]any{"name": "Edge 2", "architecture": "amd64"})["id"].(string)
		code, b = other.upload(t, "", project(t, files))
		if code != 202 {
			t.Fatalf("upload = %d: %v", code, b)
		}
		b = e.wait(t, b["id"].(string))
		errDoc, _ := b["error"].(map[string]any)
		if b["status"] != "failed" || errDoc["code"] != "build_failed" || !strings.Contains(fmt.Sprint(errDoc["step"]), "FROM") {
			t.Fatalf("build without the login = %v", b)
		}
	})
}
