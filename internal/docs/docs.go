// Package docs serves Swagger UI at /docs from assets embedded in the binary
// (copied from the pinned swagger-ui-dist npm package by make generate), so
// it works offline and "Try it out" calls the server that served the page.
package docs

import (
	"bytes"
	_ "embed"
	"io"
	"io/fs"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/internal/reqinfo"
)

//go:embed index.html
var indexHTML []byte

//go:embed init.js
var initJS []byte

const movedNote = "<a href=\"/docs/\">Moved Permanently</a>.\n"

// Mount serves the UI under /docs and the bundled spec at /openapi.yaml.
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
}
