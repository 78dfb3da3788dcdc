package restapi

import (
	"net/http"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/auth"
)

// Chain is what stands between a request and the generated handlers.
type Chain struct {
	// Authn says who is calling (user, API key or device); required.
	Authn *auth.Authenticator
	// Guard decides whether they may, and runs writes in a transaction
	// with their audit record; required.
	Guard *auth.Guard
	// Between runs after authentication and before validation: middleware
	// that needs the caller and the whole body (the idempotency lookup; the
	// guard replays what it finds).
	Between []func(http.Handler) http.Handler
	// Gate, when set, runs before authentication: the MQTT hooks carry the
	// broker's hook token in Authorization, not a user's or a device's, and
	// their gate checks and removes it before the authenticator would
	// refuse it.
	Gate func(http.Handler) http.Handler
}

// Mount serves s under every top-level prefix of spec (/v1, /device, ...),
// so unknown paths there get the validator's 404 and known paths with a
// wrong method its 405. From the outside in: Gate, authentication, Between,
// validation against spec, then the strict handler with the guard and the
// operation label, and every failure mapped to problem+json.
func Mount(r chi.Router, spec *openapi3.T, s api.StrictServerInterface, c Chain) {
	ops := NewOperations(spec)
	// The last middleware is the outermost: the operation is labelled
	// before the guard may refuse the request.
	strict := api.NewStrictHandlerWithOptions(s,
		[]api.StrictMiddlewareFunc{
			auth.StrictMiddleware[api.StrictHandlerFunc](c.Guard, ops.ID),
			StrictMiddleware[api.StrictHandlerFunc](ops),
		},
		api.StrictHTTPServerOptions{
			RequestErrorHandlerFunc:  RequestError,
			ResponseErrorHandlerFunc: ResponseError,
		})
	h := api.HandlerWithOptions(strict, api.ChiServerOptions{
		BaseRouter:       chi.NewRouter(),
		ErrorHandlerFunc: RequestError,
	})
	handler := Validator(spec, Options{Authenticate: auth.RequirePrincipal})(h)
	for i := len(c.Between) - 1; i >= 0; i-- {
		handler = c.Between[i](handler)
	}
	handler = c.Authn.Middleware(handler)
	if c.Gate != nil {
		handler = c.Gate(handler)
	}
	for _, p := range Prefixes(spec) {
		r.Handle(p+"/*", handler)
	}
}
