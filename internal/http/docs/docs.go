// Package docs serves the two documents a customer builds against, each
// with a page for people: the OpenAPI document at /openapi.yaml with Swagger
// UI at /docs, and the AsyncAPI document (device MQTT) at /asyncapi.yaml
// with the AsyncAPI React component at /docs/asyncapi/. The pages' assets
// are embedded in the binary (copied from pinned npm packages by make
// generate), so they work offline, and "Try it out" calls the server that
// served the page.
package docs

import (
	"bytes"
	_ "embed"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

//go:embed index.html
var indexHTML []byte

//go:embed init.js
var initJS []byte

//go:embed asyncapi.html
var asyncapiHTML []byte

//go:embed asyncapi-init.js
var asyncapiInitJS []byte

// The AsyncAPI component's parser compiles the document's schemas into
// functions (ajv), which needs 'unsafe-eval'; the page loads nothing but
// its own files and the document.
const asyncapiCSP = "default-src 'self'; script-src 'self' 'unsafe-eval'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"

// swaggerCSP: Swagger UI needs no eval.
const swaggerCSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"

// ui is one page for people: its directory, the embedded assets it loads
// from there, its own page and init script, and its security policy.
type ui struct {
	dir    string // "/docs/" or "/docs/asyncapi/"
	assets fs.FS
	page   []byte
	init   []byte
	csp    string
}

// Mount serves the UIs under /docs and the documents at /openapi.yaml and
// /asyncapi.yaml.
func Mount(root chi.Router) {
	r := root.With(reqinfo.Label("docs"))
	started := time.Now()
	serve := func(path, name, contentType string, body []byte, header map[string]string) {
		r.Get(path, func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Content-Type", contentType)
			for k, v := range header {
				w.Header().Set(k, v)
			}
			http.ServeContent(w, req, name, started, bytes.NewReader(body))
		})
	}
	serve("/openapi.yaml", "openapi.yaml", "application/yaml", gen.OpenAPIYAML, nil)
	serve("/asyncapi.yaml", "asyncapi.yaml", "application/yaml", asyncapi.YAML, nil)
	for _, u := range []ui{
		{dir: "/docs/", assets: sub(gen.SwaggerUI, "swaggerui"), page: indexHTML, init: initJS, csp: swaggerCSP},
		{dir: "/docs/asyncapi/", assets: sub(gen.AsyncAPIUI, "asyncapiui"), page: asyncapiHTML, init: asyncapiInitJS, csp: asyncapiCSP},
	} {
		r.Get(strings.TrimSuffix(u.dir, "/"), redirect(u.dir))
		serve(u.dir, "index.html", "text/html; charset=utf-8", u.page, map[string]string{"Content-Security-Policy": u.csp})
		serve(u.dir+"init.js", "init.js", "text/javascript; charset=utf-8", u.init, nil)
		r.Get(u.dir+"*", http.StripPrefix(u.dir, http.FileServerFS(u.assets)).ServeHTTP)
	}
}

// redirect answers 301 to the directory. Not http.Redirect: it writes its
// note for GET only, so HEAD would lack GET's Content-Length. The server
// drops the body for HEAD.
func redirect(to string) http.HandlerFunc {
	note := "<a href=\"" + to + "\">Moved Permanently</a>.\n"
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Location", to)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusMovedPermanently)
		_, _ = io.WriteString(w, note)
	}
}

func sub(f fs.FS, dir string) fs.FS {
	s, err := fs.Sub(f, dir)
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return s
}
