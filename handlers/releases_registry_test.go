package handlers_test

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// TestReleaseImagesAreCheckedAgainstTheRegistry registers releases from
// images pushed through the registry-proxy, and refuses images that are
// missing, elsewhere, another organisation's, or of another architecture.
func TestReleaseImagesAreCheckedAgainstTheRegistry(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv)
	org := must(t, srv, 200, "GET", "/v1/orgs/"+w.org, w.owner, nil)
	fleet := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/fleets", w.owner, map[string]any{"name": "Sensors West", "architecture": "amd64"})
	if fleet["slug"] != "sensors-west" {
		t.Fatalf("fleet slug = %v, want sensors-west", fleet["slug"])
	}
	repo := org["slug"].(string) + "/sensors-west/app"
	amd := srv.PushImage(t, w.developer, repo, "amd64")
	arm := srv.PushImage(t, w.developer, org["slug"].(string)+"/sensors-west/arm", "arm64")
	other := must(t, srv, 200, "GET", "/v1/orgs/"+w.otherOrg, w.outsider, nil)["slug"].(string)
	must(t, srv, 201, "POST", "/v1/orgs/"+w.otherOrg+"/fleets", w.outsider, map[string]any{"name": "f", "architecture": "amd64"})
	theirs := srv.PushImage(t, w.outsider, other+"/f/app", "amd64")
	missing := "sha256:" + strings.Repeat("c", 64)

	body := func(image, digest string) map[string]any {
		return map[string]any{"status": "final", "services": []any{map[string]any{
			"name": "app", "images": map[string]any{"amd64": map[string]any{"image": image, "digest": digest}}}}}
	}
	path := "/v1/fleets/" + fleet["id"].(string) + "/releases"
	for _, tc := range []struct {
		name, image, digest, code string
	}{
		{"missing digest", repo, missing, "image_not_found"},
		{"external registry", "registry.example.com/acme/app:1.0", amd.Digest, "image_external"},
		{"another organisation's", theirs.Ref, theirs.Digest, "image_not_found"},
		{"another organisation's without host", theirs.Repo, theirs.Digest, "image_not_found"},
		{"wrong architecture", arm.Ref, arm.Digest, "architecture_missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := must(t, srv, 422, "POST", path, w.developer, body(tc.image, tc.digest))
			if out["code"] != tc.code {
				t.Fatalf("code = %v, want %s: %v", out["code"], tc.code, out)
			}
		})
	}

	// Layers are larger than the API's body limit (1 MiB): /v2/ is exempt.
	big, err := random.Image(3<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Push(w.developer, repo, big); err != nil {
		t.Fatalf("push a 3 MiB layer: %v", err)
	}

	rel := must(t, srv, 201, "POST", path, w.developer, body(repo+":1.0", amd.Digest))
	img := rel["services"].([]any)[0].(map[string]any)["images"].(map[string]any)["amd64"].(map[string]any)
	if img["image"] != apptest.RegistryHost+"/"+repo {
		t.Fatalf("stored image = %v, want the registry host and repository", img["image"])
	}
}
