package restapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/go-chi/chi/v5"

	"github.com/flock-io/flock-api/internal/http/httpserver"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/http/restapi"
	"github.com/flock-io/flock-api/internal/metrics"
)

// testSpec is a small document with the shapes the error paths need: a JSON
// body with constraints and nesting, a bounded query parameter, an operation
// that needs credentials and a handler that panics.
const testSpec = `
openapi: 3.0.3
info: {title: test, version: "1"}
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
paths:
  /v1/secured:
    post:
      operationId: secured:create
      security: [{bearer: []}]
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, properties: {name: {type: string}}}
      responses:
        "201": {description: created}
  /v1/things:
    post:
      operationId: thing:create
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [name]
              additionalProperties: false
              properties:
                name: {type: string, maxLength: 5}
                count: {type: integer, minimum: 1}
                tags: {type: object, additionalProperties: {type: string}}
                items: {type: array, items: {type: string}}
      responses:
        "201": {description: created}
    get:
      operationId: thing:list
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 10}}
      responses:
        "200": {description: ok}
  /v1/panic:
    get:
      operationId: panic:get
      responses:
        "200": {description: never}
`

const bodyLimit = 256

func newServer(t *testing.T) http.Handler {
	t.Helper()
	spec, err := restapi.LoadSpec(context.Background(), []byte(testSpec))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0", BodyLimit: bodyLimit, ShutdownGrace: 1},
		metrics.New(), httpserver.NewReadiness(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	inner := chi.NewRouter()
	inner.Post("/v1/things", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write(b)
	})
	inner.Get("/v1/things", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", `"v1"`)
		io.WriteString(w, `{"items":[]}`)
	})
	inner.Post("/v1/secured", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	inner.Get("/v1/panic", func(http.ResponseWriter, *http.Request) {
		panic("secret internal detail: password=hunter2")
	})
	// Credentials are whatever Authorization holds: the authenticator is
	// not what this tests.
	authn := func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		if in.RequestValidationInput.Request.Header.Get("Authorization") == "" {
			return errors.New("no credentials")
		}
		return nil
	}
	srv.Router().Handle("/v1/*", restapi.Validator(spec, restapi.Options{Authenticate: authn})(inner))
	return srv.Router()
}

func TestErrorsAreProblems(t *testing.T) {
	h := newServer(t)
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		header      map[string]string
		chunked     bool
		wantStatus  int
		wantCode    string
		wantFields  []problem.FieldError
		wantHeader  map[string]string
		notInBody   string
	}{
		{name: "valid request passes", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"ok"}`, wantStatus: 201},
		{name: "malformed JSON", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":`, wantStatus: 400, wantCode: "malformed_body"},
		{name: "schema violations list every field", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"toolong","count":0}`, wantStatus: 400, wantCode: "validation_failed",
			wantFields: []problem.FieldError{{In: "body", Field: "/name"}, {In: "body", Field: "/count"}}},
		{name: "unknown property", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"a","extra":1}`, wantStatus: 400, wantCode: "validation_failed"},
		{name: "missing body", method: "POST", path: "/v1/things", contentType: "application/json",
			wantStatus: 400, wantCode: "validation_failed"},
		{name: "query parameter out of range", method: "GET", path: "/v1/things?limit=50",
			wantStatus: 400, wantCode: "validation_failed",
			wantFields: []problem.FieldError{{In: "query", Field: "limit"}}},
		{name: "unknown path", method: "GET", path: "/v1/nothing-here", wantStatus: 404, wantCode: "not_found"},
		{name: "unknown path outside the API", method: "GET", path: "/nowhere", wantStatus: 404, wantCode: "not_found"},
		{name: "wrong method", method: "DELETE", path: "/v1/things", wantStatus: 405, wantCode: "method_not_allowed",
			wantHeader: map[string]string{"Allow": "GET, HEAD, POST"}},
		{name: "HEAD is GET", method: "HEAD", path: "/v1/things", wantStatus: 200,
			wantHeader: map[string]string{"ETag": `"v1"`, "Content-Type": "application/json"}},
		{name: "HEAD where there is no GET", method: "HEAD", path: "/v1/secured", wantStatus: 405, wantCode: "method_not_allowed",
			wantHeader: map[string]string{"Allow": "POST"}},

		{name: "trailing word", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"a"} xyz`, wantStatus: 400, wantCode: "malformed_body"},
		// Malformed before the schema: the first value alone lacks name.
		{name: "two values", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{}{}`, wantStatus: 400, wantCode: "malformed_body"},
		{name: "trailing whitespace", method: "POST", path: "/v1/things", contentType: "application/json",
			body: "{\"name\":\"a\"}\r\n\t ", wantStatus: 201},
		{name: "not UTF-8", method: "POST", path: "/v1/things", contentType: "application/json",
			body: "{\"name\":\"\xff\"}", wantStatus: 400, wantCode: "malformed_body"},
		{name: "NUL in a string", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"a\u0000"}`, wantStatus: 400, wantCode: "validation_failed",
			wantFields: []problem.FieldError{{In: "body", Field: "/name"}}},
		{name: "NUL in a property name and in an array, with a pointer to escape", method: "POST", path: "/v1/things",
			contentType: "application/json",
			body:        `{"name":"a","tags":{"k\u0000":"v","a/b~":"\u0000"},"items":["x","y\u0000"]}`,
			wantStatus:  400, wantCode: "validation_failed",
			wantFields: []problem.FieldError{{In: "body", Field: "/tags/k\x00"}, {In: "body", Field: "/tags/a~1b~0"},
				{In: "body", Field: "/items/1"}}},
		{name: "NUL in a query parameter the operation does not declare", method: "GET", path: "/v1/things?q=a%00b",
			wantStatus: 400, wantCode: "validation_failed", wantFields: []problem.FieldError{{In: "query", Field: "q"}}},
		{name: "query parameter not UTF-8", method: "GET", path: "/v1/things?q=%FF",
			wantStatus: 400, wantCode: "validation_failed", wantFields: []problem.FieldError{{In: "query", Field: "q"}}},
		{name: "schema violations of parameters come first", method: "GET", path: "/v1/things?limit=50&q=%00",
			wantStatus: 400, wantCode: "validation_failed", wantFields: []problem.FieldError{{In: "query", Field: "limit"}}},
		{name: "missing credentials come before a bad body", method: "POST", path: "/v1/secured", contentType: "application/json",
			body: `{"name":"\u0000"} x`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "with credentials the bad body is judged", method: "POST", path: "/v1/secured", contentType: "application/json",
			header: map[string]string{"Authorization": "Bearer t"},
			body:   `{"name":"\u0000"}`, wantStatus: 400, wantCode: "validation_failed",
			wantFields: []problem.FieldError{{In: "body", Field: "/name"}}},
		{name: "body over the limit by Content-Length", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"` + strings.Repeat("x", bodyLimit) + `"}`, wantStatus: 413, wantCode: "body_too_large"},
		{name: "body over the limit while streaming", method: "POST", path: "/v1/things", contentType: "application/json",
			body: `{"name":"` + strings.Repeat("x", bodyLimit) + `"}`, chunked: true, wantStatus: 413, wantCode: "body_too_large"},
		{name: "unsupported media type", method: "POST", path: "/v1/things", contentType: "text/plain",
			body: `name=ok`, wantStatus: 415, wantCode: "unsupported_media_type",
			wantHeader: map[string]string{"Accept": "application/json"}},
		{name: "panic in a handler", method: "GET", path: "/v1/panic", wantStatus: 500, wantCode: "internal_error",
			notInBody: "hunter2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
				if tt.chunked {
					body = io.MultiReader(body) // hides the length: sent chunked
				}
			}
			req := httptest.NewRequest(tt.method, tt.path, body)
			if tt.chunked {
				req.ContentLength = -1
			}
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tt.wantStatus, rec.Body)
			}
			reqID := rec.Header().Get(reqinfo.Header)
			if reqID == "" {
				t.Error("no X-Request-Id header")
			}
			for k, v := range tt.wantHeader {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tt.wantCode == "" {
				// What passed reached the handler whole.
				if tt.method == "POST" && rec.Body.String() != tt.body {
					t.Errorf("handler read %q, want %q", rec.Body, tt.body)
				}
				return
			}
			if ct := rec.Header().Get("Content-Type"); ct != problem.ContentType {
				t.Fatalf("Content-Type = %q, want %q", ct, problem.ContentType)
			}
			if tt.notInBody != "" && strings.Contains(rec.Body.String(), tt.notInBody) {
				t.Errorf("body leaks %q: %s", tt.notInBody, rec.Body)
			}
			var p problem.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatalf("body is not JSON: %v: %s", err, rec.Body)
			}
			if p.Code != tt.wantCode || p.Status != tt.wantStatus || p.RequestID != reqID ||
				p.Type != "urn:flock:problem:"+tt.wantCode || p.Title == "" || p.Detail == "" || p.Instance == "" {
				t.Errorf("problem = %+v, want code %s status %d request_id %s with type, title, detail, instance",
					p, tt.wantCode, tt.wantStatus, reqID)
			}
			for _, want := range tt.wantFields {
				found := false
				for _, got := range p.Errors {
					if got.In == want.In && got.Field == want.Field && got.Detail != "" {
						found = true
					}
				}
				if !found {
					t.Errorf("errors %+v lack %s %s", p.Errors, want.In, want.Field)
				}
			}
		})
	}
}

func TestRequestIDIsEchoedOrReplaced(t *testing.T) {
	h := newServer(t)
	for _, tt := range []struct {
		sent string
		keep bool
	}{
		{"trace-123:abc", true},
		{"bad id with spaces", false},
		{strings.Repeat("a", 129), false},
	} {
		req := httptest.NewRequest("GET", "/v1/things", nil)
		req.Header.Set(reqinfo.Header, tt.sent)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		got := rec.Header().Get(reqinfo.Header)
		if (got == tt.sent) != tt.keep || got == "" {
			t.Errorf("sent %q, got %q; want kept=%v", tt.sent, got, tt.keep)
		}
	}
}

func TestGoName(t *testing.T) {
	for in, want := range map[string]string{
		"version:get":        "VersionGet",
		"fleet:create":       "FleetCreate",
		"api-key:list":       "ApiKeyList",
		"device_state:patch": "DeviceStatePatch",
	} {
		if got := restapi.GoName(in); got != want {
			t.Errorf("GoName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSchemaViolationBody(t *testing.T) {
	h := newServer(t)
	req := httptest.NewRequest("POST", "/v1/things", strings.NewReader(`{"name":"toolong"}`))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var p problem.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	want := problem.FieldError{In: "body", Field: "/name", Detail: "maximum string length is 5"}
	if len(p.Errors) != 1 || p.Errors[0] != want {
		t.Fatalf("errors = %+v, want [%+v]", p.Errors, want)
	}
	if p.Detail != "body /name: maximum string length is 5" {
		t.Errorf("detail = %q", p.Detail)
	}
}
