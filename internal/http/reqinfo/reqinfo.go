// Package reqinfo carries per-request facts through the context: the request
// id (the caller's X-Request-Id when it is sane, else a fresh UUIDv7) and the
// OpenAPI operationId once routing has found it, for logs and metrics.
package reqinfo

import (
	"context"
	"net/http"

	"github.com/google/uuid"
)

// Header is the request and response header that carries the request id.
const Header = "X-Request-Id"

// Unmatched is the operation label of a request that matched no operation.
const Unmatched = "unmatched"

// Info is mutable by design: it is created by the outermost middleware and
// filled in by inner layers (the validator or the strict handler) so that the
// outer layers can log and count by operation after the request is served.
type Info struct {
	ID        string
	Operation string
}

type ctxKey struct{}

func from(ctx context.Context) *Info {
	i, _ := ctx.Value(ctxKey{}).(*Info)
	return i
}

// ID returns the request id in ctx, or "" outside a request.
func ID(ctx context.Context) string {
	if i := from(ctx); i != nil {
		return i.ID
	}
	return ""
}

// Operation returns the operationId recorded for the request, or Unmatched.
func Operation(ctx context.Context) string {
	if i := from(ctx); i != nil && i.Operation != "" {
		return i.Operation
	}
	return Unmatched
}

// SetOperation records the operationId of the request being served.
func SetOperation(ctx context.Context, op string) {
	if i := from(ctx); i != nil {
		i.Operation = op
	}
}

// With returns ctx carrying a new Info with the given id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, &Info{ID: id})
}

// Middleware assigns the id, stores it in the request context and echoes it
// in the response header before anything else can write.
func Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(Header)
		if !valid(id) {
			id = newID()
		}
		w.Header().Set(Header, id)
		next.ServeHTTP(w, r.WithContext(With(r.Context(), id)))
	})
}

// valid accepts ids a proxy or client may set, but only ones that are safe to
// log and echo: 1 to 128 characters of [A-Za-z0-9._:-].
func valid(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

func newID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}

// Label returns middleware that names the operation of routes outside the
// OpenAPI document (probes, metrics, docs) for logs and metrics.
func Label(name string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			SetOperation(r.Context(), name)
			next.ServeHTTP(w, r)
		})
	}
}
