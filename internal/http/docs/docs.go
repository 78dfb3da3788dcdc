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

const movedNote = "<a href=\"/docs/\">Moved Permanently</a>.\n"

// Mount serves the UIs under /docs and the documents at /openapi.yaml and
// /asyncapi.yaml.
func Mount(root chi.Router) {
	r := root.With(reqinfo.Label("docs"))
	assets, err := fs.Sub(gen.SwaggerUI, "swaggerui")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	files := http.StripPrefix("/docs/", http.FileServerFS(assets))
	started := time.Now()

	r.Get("/openapi.yaml", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		http.ServeContent(w, req, "openapi.yaml", started, bytes.NewReader(gen.OpenAPIYAML))
	})
	r.Get("/docs", func(w http.ResponseWriter, req *http.Request) {
		// Not http.Redirect: it writes its note for GET only, so HEAD would
		// lack GET's Content-Length. The server drops the body for HEAD.
		w.Header().Set("Location", "/docs/")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusMovedPermanently)
		_, _ = io.WriteString(w, movedNote)
	})
	r.Get("/docs/", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'")
		http.ServeContent(w, req, "index.html", started, bytes.NewReader(indexHTML))
	})
	r.Get("/docs/init.js", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		http.ServeContent(w, req, "init.js", started, bytes.NewReader(initJS))
	})
	r.Get("/docs/*", files.ServeHTTP)

	aassets, err := fs.Sub(gen.AsyncAPIUI, "asyncapiui")
	if err != nil {
		panic(err)
	}
	afiles := http.StripPrefix("/docs/asyncapi/", http.FileServerFS(aassets))
	r.Get("/asyncapi.yaml", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		http.ServeContent(w, req, "asyncapi.yaml", started, bytes.NewReader(asyncapi.YAML))
	})
	r.Get("/docs/asyncapi", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Location", "/docs/asyncapi/")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusMovedPermanently)
		_, _ = io.WriteString(w, "<a href=\"/docs/asyncapi/\">Moved Permanently</a>.\n")
	})
	r.Get("/docs/asyncapi/", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", asyncapiCSP)
		http.ServeContent(w, req, "index.html", started, bytes.NewReader(asyncapiHTML))
	})
	r.Get("/docs/asyncapi/init.js", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		http.ServeContent(w, req, "init.js", started, bytes.NewReader(asyncapiInitJS))
	})
	r.Get("/docs/asyncapi/*", afiles.ServeHTTP)
}
