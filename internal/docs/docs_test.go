package docs_test

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func fetch(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestSwaggerUIIsSelfContained(t *testing.T) {
	srv := apptest.Start(t, "--target=api")

	resp, page := fetch(t, srv.URL+"/docs")
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte(`id="swagger-ui"`)) {
		t.Fatalf("/docs = %d %s", resp.StatusCode, page)
	}
	// Every asset the page loads comes from this server, so the UI works
	// with no network beyond it.
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllSubmatch(page, -1)
	if len(refs) < 3 {
		t.Fatalf("page references %d assets, want the bundle, the CSS and the init script", len(refs))
	}
	for _, m := range refs {
		ref := string(m[1])
		if !strings.HasPrefix(ref, "/docs/") {
			t.Errorf("asset %q is not served by flock-api", ref)
			continue
		}
		r, body := fetch(t, srv.URL+ref)
		if r.StatusCode != 200 || len(body) == 0 {
			t.Errorf("%s = %d (%d bytes)", ref, r.StatusCode, len(body))
		}
	}

	_, initJS := fetch(t, srv.URL+"/docs/init.js")
	if !bytes.Contains(initJS, []byte(`url: "/openapi.yaml"`)) {
		t.Errorf("init.js does not load this server's spec:\n%s", initJS)
	}

	resp, spec := fetch(t, srv.URL+"/openapi.yaml")
	if resp.StatusCode != 200 || !bytes.Equal(spec, gen.OpenAPIYAML) {
		t.Fatalf("/openapi.yaml = %d, %d bytes; want the embedded bundle", resp.StatusCode, len(spec))
	}
	doc, err := openapi3.NewLoader().LoadFromData(spec)
	if err != nil {
		t.Fatal(err)
	}
	// A relative server URL makes "Try it out" call the origin that served the page.
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "/" {
		t.Errorf("servers = %v, want one relative server /", doc.Servers)
	}
}
