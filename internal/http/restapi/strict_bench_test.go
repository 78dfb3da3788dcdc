package restapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"testing"
)

// BenchmarkCheckInput is what the strict input check adds to a write: a
// release of three services, about 1 KB of JSON, parsed and walked once.
func BenchmarkCheckInput(b *testing.B) {
	spec, err := LoadSpec(context.Background(), []byte(`
openapi: 3.0.3
info: {title: bench, version: "1"}
paths:
  /v1/releases:
    post:
      operationId: release:create
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object}
      responses:
        "201": {description: created}
`))
	if err != nil {
		b.Fatal(err)
	}
	op := spec.Paths.Find("/v1/releases").Post
	var body bytes.Buffer
	body.WriteString(`{"version":"1.0","status":"final","tags":{"qa":"passed","site":"lab-3"},"services":[`)
	for i := range 3 {
		if i > 0 {
			body.WriteString(",")
		}
		body.WriteString(`{"name":"app","images":{"amd64":{"image":"registry.example.com/acme/app:1.0",` +
			`"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},` +
			`"environment":{"MODE":"release","LEVEL":"3","URL":"https://example.com/x"},` +
			`"ports":["8080:80/tcp"],"volumes":["data:/var/lib/app"],"labels":{"io.flock.x":"1"}}`)
	}
	body.WriteString(`]}`)
	raw := body.Bytes()
	r := httptest.NewRequest("POST", "/v1/releases?limit=5", nil)
	r.Header.Set("Content-Type", "application/json")
	b.Run("check", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			r.Body = io.NopCloser(bytes.NewReader(raw))
			if bad, err := checkInput(r, op); bad != nil || err != nil {
				b.Fatal(bad, err)
			}
		}
	})
	// For scale: one decode of the same body, as the spec validator and
	// then the handler each do.
	b.Run("one decode", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
