package docs_test

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/flock-io/flock-api/asyncapi"
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

// The device contract is served as it is embedded, and its page loads only
// what this server serves.
func TestAsyncAPIDocumentAndPage(t *testing.T) {
	srv := apptest.Start(t, "--target=api")

	resp, doc := fetch(t, srv.URL+"/asyncapi.yaml")
	if resp.StatusCode != 200 || !bytes.Equal(doc, asyncapi.YAML) || resp.Header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("/asyncapi.yaml = %d %s (%d bytes)", resp.StatusCode, resp.Header.Get("Content-Type"), len(doc))
	}
	resp, page := fetch(t, srv.URL+"/docs/asyncapi")
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte(`id="asyncapi"`)) {
		t.Fatalf("/docs/asyncapi = %d %s", resp.StatusCode, page)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllSubmatch(page, -1)
	scripts := 0
	for _, m := range refs {
		ref := string(m[1])
		if !strings.HasPrefix(ref, "/") {
			t.Errorf("asset %q is not served by flock-api", ref)
			continue
		}
		r, body := fetch(t, srv.URL+ref)
		if r.StatusCode != 200 || len(body) == 0 {
			t.Errorf("%s = %d (%d bytes)", ref, r.StatusCode, len(body))
		}
		if strings.HasSuffix(ref, ".js") {
			scripts++
		}
	}
	if scripts != 2 {
		t.Errorf("page loads %d scripts, want the component's bundle and the init script", scripts)
	}
	_, initJS := fetch(t, srv.URL+"/docs/asyncapi/init.js")
	if !bytes.Contains(initJS, []byte(`url: "/asyncapi.yaml"`)) {
		t.Errorf("init.js does not load this server's document:\n%s", initJS)
	}
	// Swagger UI links to it.
	_, swagger := fetch(t, srv.URL+"/docs/")
	if !bytes.Contains(swagger, []byte(`href="/docs/asyncapi/"`)) {
		t.Error("the Swagger UI page does not link to the AsyncAPI page")
	}
}
