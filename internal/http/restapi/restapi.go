// Package restapi puts the OpenAPI document in front of the generated
// handlers: every request is validated against the spec before a handler runs,
// and every way a request can fail becomes a problem+json response here.
package restapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// LoadSpec parses and validates an OpenAPI document. Servers are dropped: the
// validator would otherwise match the Host header against them, and one
// binary serves many hostnames.
func LoadSpec(ctx context.Context, doc []byte) (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	loader.Context = ctx
	spec, err := loader.LoadFromData(doc)
	if err != nil {
		return nil, fmt.Errorf("parse openapi document: %w", err)
	}
	if err := spec.Validate(ctx); err != nil {
		return nil, fmt.Errorf("validate openapi document: %w", err)
	}
	spec.Servers = nil
	return spec, nil
}

// Options tunes Handler.
type Options struct {
	// Authenticate checks security requirements; nil accepts every request
	// (until a security scheme is declared, none are checked).
	Authenticate openapi3filter.AuthenticationFunc
}

// Validator returns middleware that validates each request against spec and
// records its operationId for logs and metrics. Requests that fail never reach
// next. Before the schemas, it holds the input to what the server can store
// (checkInput): one JSON value per body, no NUL in any string, valid UTF-8.
//
// Problems are reported in the order a client can act on them: no such
// route, missing credentials, bad parameters, then the body (not one JSON
// value, NUL in it, schema violations).
func Validator(spec *openapi3.T, opts Options) func(http.Handler) http.Handler {
	auth := opts.Authenticate
	if auth == nil {
		auth = openapi3filter.NoopAuthenticationFunc
	}
	router, err := gorillamux.NewRouter(spec)
	if err != nil {
		// LoadSpec validated the document; a router it cannot build is a bug.
		panic(fmt.Sprintf("route the openapi document: %v", err))
	}
	// KeepValidatedValue lets the body carry the defaults the schemas filled
	// in to the handler.
	full := &openapi3filter.Options{MultiError: true, AuthenticationFunc: auth, KeepValidatedValue: true}
	noBody := *full
	noBody.ExcludeRequestBody = true
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			orig := r
			r = headAsGet(r)
			route, params, err := router.FindRoute(r)
			if err != nil {
				problem.Write(w, orig, FromValidation(orig, err, spec))
				return
			}
			reqinfo.SetOperation(r.Context(), route.Operation.OperationID)
			input := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route, Options: full}
			bad, err := checkInput(r, route.Operation)
			if err != nil {
				problem.Write(w, orig, err)
				return
			}
			if bad != nil {
				// Credentials and parameters are judged first, as when the
				// body is fine: an anonymous caller learns it needs a token.
				first := *input
				first.Options = &noBody
				if err := openapi3filter.ValidateRequest(r.Context(), &first); err != nil {
					problem.Write(w, orig, FromValidation(orig, err, spec))
					return
				}
				problem.Write(w, orig, bad)
				return
			}
			if err := openapi3filter.ValidateRequest(r.Context(), input); err != nil {
				problem.Write(w, orig, FromValidation(orig, err, spec))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// headAsGet serves HEAD as the GET of the same resource (RFC 9110 §9.3.2):
// the spec declares GETs only, and both its router and the generated routes
// match by method. The request logs and metrics read keeps HEAD, and the
// server sends no body for it whatever the handler writes.
func headAsGet(r *http.Request) *http.Request {
	if r.Method != http.MethodHead {
		return r
	}
	get := r.WithContext(r.Context())
	get.Method = http.MethodGet
	// A chi router below routes by the method recorded when the routers
	// above matched, not by the request's.
	if rctx := chi.RouteContext(r.Context()); rctx != nil {
		rctx.RouteMethod = http.MethodGet
	}
	return get
}

// Operations maps the Go method names oapi-codegen derives from operationIds
// ("version:get" becomes VersionGet) back to the operationIds, so logs and
// metrics name operations as the spec does.
type Operations map[string]string

// NewOperations indexes every operation of spec.
func NewOperations(spec *openapi3.T) Operations {
	ops := Operations{}
	for _, item := range spec.Paths.Map() {
		for _, op := range item.Operations() {
			ops[GoName(op.OperationID)] = op.OperationID
		}
	}
	return ops
}

// GoName is oapi-codegen's rendering of an operationId as a Go identifier:
// split on every character that is not a letter or digit, capitalise each part.
func GoName(operationID string) string {
	var b strings.Builder
	upper := true
	for _, c := range operationID {
		isAlnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !isAlnum {
			upper = true
			continue
		}
		if upper && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		upper = false
		b.WriteRune(c)
	}
	return b.String()
}

// ID returns the operationId of a generated Go method name.
func (ops Operations) ID(goName string) string {
	if id, ok := ops[goName]; ok {
		return id
	}
	return goName
}

// StrictMiddleware records the operationId of requests that passed
// validation; pass it to the generated NewStrictHandlerWithOptions.
func StrictMiddleware[F ~func(context.Context, http.ResponseWriter, *http.Request, any) (any, error)](ops Operations) func(F, string) F {
	return func(f F, goName string) F {
		id := ops.ID(goName)
		return func(ctx context.Context, w http.ResponseWriter, r *http.Request, req any) (any, error) {
			reqinfo.SetOperation(ctx, id)
			return f(ctx, w, r, req)
		}
	}
}

// RequestError handles what the generated code could not bind after the
// validator let the request through (it should not happen: the two read the
// same spec). It is the strict server's RequestErrorHandlerFunc and the chi
// server's ErrorHandlerFunc.
func RequestError(w http.ResponseWriter, r *http.Request, err error) {
	problem.Write(w, r, &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed",
		Detail: err.Error(), Err: err})
}

// ResponseError maps an error a handler returned; it is the strict server's
// ResponseErrorHandlerFunc.
func ResponseError(w http.ResponseWriter, r *http.Request, err error) {
	problem.Write(w, r, err)
}

// FromValidation turns the validator's error into the problem to send.
func FromValidation(r *http.Request, err error, spec *openapi3.T) *problem.Error {
	switch {
	case errors.Is(err, routers.ErrMethodNotAllowed):
		return &problem.Error{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed",
			Detail: fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path),
			Header: http.Header{"Allow": {allowed(spec, r.URL.Path)}}}
	case errors.Is(err, routers.ErrPathNotFound):
		return problem.Errorf(http.StatusNotFound, "not_found", "no resource at %s", r.URL.Path)
	}
	var maxErr *http.MaxBytesError
	if errors.As(err, &maxErr) {
		return problem.TooLarge(maxErr.Limit)
	}

	if isSecurityError(err) {
		return &problem.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
			Detail: "this operation needs a bearer token or an API key",
			Header: http.Header{"WWW-Authenticate": {`Bearer`}}}
	}
	var fields []problem.FieldError
	var other []string
	for _, re := range requestErrors(err) {
		switch {
		case re.RequestBody != nil && strings.HasPrefix(re.Reason, "header Content-Type has unexpected value"):
			ct := r.Header.Get("Content-Type")
			if ct == "" {
				ct = "no Content-Type"
			}
			return &problem.Error{Status: http.StatusUnsupportedMediaType, Code: "unsupported_media_type",
				Detail: fmt.Sprintf("%s is not accepted here; send %s", ct, strings.Join(mediaTypes(re.RequestBody), " or ")),
				Header: http.Header{"Accept": mediaTypes(re.RequestBody)}}
		case re.RequestBody != nil && isParseError(re.Err):
			return &problem.Error{Status: http.StatusBadRequest, Code: "malformed_body",
				Detail: "the request body is not valid JSON: " + rootCause(re.Err)}
		case re.RequestBody != nil && errors.Is(re.Err, openapi3filter.ErrInvalidRequired):
			fields = append(fields, problem.FieldError{In: "body", Field: "", Detail: "a request body is required"})
		case re.RequestBody != nil:
			fields = append(fields, schemaFields("body", "", re.Err)...)
		case re.Parameter != nil:
			fields = append(fields, schemaFields(re.Parameter.In, re.Parameter.Name, re.Err)...)
		default:
			other = append(other, re.Error())
		}
	}
	if len(fields) == 0 && len(other) == 0 {
		other = append(other, err.Error())
	}
	p := invalid(fields)
	if len(other) > 0 {
		p.Detail = strings.Join(other, "; ")
	}
	return p
}

// isSecurityError finds a failed security requirement at the top of the
// validator's error: authentication is reported before anything else.
func isSecurityError(err error) bool {
	errs := []error{err}
	if me, ok := err.(openapi3.MultiError); ok {
		errs = me
	}
	for _, e := range errs {
		if _, ok := e.(*openapi3filter.SecurityRequirementsError); ok {
			return true
		}
	}
	return false
}

func describe(f problem.FieldError) string {
	if f.Field == "" {
		return fmt.Sprintf("%s: %s", f.In, f.Detail)
	}
	return fmt.Sprintf("%s %s: %s", f.In, f.Field, f.Detail)
}

// requestErrors flattens the validator's nesting of MultiErrors. It matches
// types directly: errors.As would look through a RequestError into the
// schema errors it wraps.
func requestErrors(err error) []*openapi3filter.RequestError {
	var out []*openapi3filter.RequestError
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case openapi3.MultiError:
			for _, y := range x {
				walk(y)
			}
		case *openapi3filter.RequestError:
			out = append(out, x)
		}
	}
	walk(err)
	return out
}

// schemaFields lists each schema violation with the JSON pointer of the value
// (for bodies) or the parameter name.
func schemaFields(in, name string, err error) []problem.FieldError {
	var out []problem.FieldError
	var walk func(error)
	walk = func(e error) {
		if me, ok := e.(openapi3.MultiError); ok {
			for _, x := range me {
				walk(x)
			}
			return
		}
		var se *openapi3.SchemaError
		if errors.As(e, &se) {
			field := name
			if in == "body" {
				field = pointer(se.JSONPointer())
			}
			out = append(out, problem.FieldError{In: in, Field: field, Detail: se.Reason})
			return
		}
		if e != nil {
			out = append(out, problem.FieldError{In: in, Field: name, Detail: rootCause(e)})
		}
	}
	walk(err)
	if len(out) == 0 {
		out = append(out, problem.FieldError{In: in, Field: name, Detail: "invalid value"})
	}
	return out
}

func pointer(parts []string) string {
	if len(parts) == 0 {
		return ""
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteByte('/')
		p = strings.ReplaceAll(p, "~", "~0")
		b.WriteString(strings.ReplaceAll(p, "/", "~1"))
	}
	return b.String()
}

func isParseError(err error) bool {
	var pe *openapi3filter.ParseError
	return errors.As(err, &pe)
}

func rootCause(err error) string {
	var pe *openapi3filter.ParseError
	if errors.As(err, &pe) {
		if rc := pe.RootCause(); rc != nil {
			return rc.Error()
		}
		return pe.Reason
	}
	return err.Error()
}

func mediaTypes(rb *openapi3.RequestBody) []string {
	out := make([]string, 0, len(rb.Content))
	for mt := range rb.Content {
		out = append(out, mt)
	}
	sort.Strings(out)
	return out
}

// allowed lists the methods the spec declares for the path, for the Allow header.
func allowed(spec *openapi3.T, path string) string {
	for tmpl, item := range spec.Paths.Map() {
		if matchTemplate(tmpl, path) {
			var ms []string
			for m := range item.Operations() {
				ms = append(ms, m)
				if m == http.MethodGet {
					ms = append(ms, http.MethodHead)
				}
			}
			sort.Strings(ms)
			return strings.Join(ms, ", ")
		}
	}
	return ""
}

func matchTemplate(tmpl, path string) bool {
	ts := strings.Split(strings.Trim(tmpl, "/"), "/")
	ps := strings.Split(strings.Trim(path, "/"), "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if strings.HasPrefix(ts[i], "{") && strings.HasSuffix(ts[i], "}") {
			if ps[i] == "" {
				return false
			}
			continue
		}
		if ts[i] != ps[i] {
			return false
		}
	}
	return true
}

// Prefixes returns the distinct first path segments of the document's paths
// ("/v1", "/device"), where the API handler is mounted.
func Prefixes(spec *openapi3.T) []string {
	seen := map[string]bool{}
	var out []string
	for p := range spec.Paths.Map() {
		seg := "/" + strings.SplitN(strings.TrimPrefix(p, "/"), "/", 2)[0]
		if !seen[seg] {
			seen[seg] = true
			out = append(out, seg)
		}
	}
	sort.Strings(out)
	return out
}
