// Package idempotency makes retried writes safe: a write sent with an
// Idempotency-Key runs once; its response is stored in the same transaction
// as the write (by the access guard) and replayed to a repeat of the same
// request by the same caller for a day, once the caller has passed the
// operation's access check again (by the guard too: whoever lost access
// since gets the refusal, not the stored answer).
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// Header is the request header; ReplayedHeader marks a replayed response.
const (
	Header         = "Idempotency-Key"
	ReplayedHeader = "Idempotent-Replayed"
)

// Request is a write that carries a key: one that has not run before, or a
// repeat of one that has, with the response it got.
type Request struct {
	Principal string
	Key       string
	Hash      []byte
	stored    *db.IdempotencyKey
}

type ctxKey struct{}

// From returns the keyed request in ctx, or nil.
func From(ctx context.Context) *Request {
	r, _ := ctx.Value(ctxKey{}).(*Request)
	return r
}

// Replayable reports whether the request ran before, so Replay would answer it.
func (r *Request) Replayable() bool { return r.stored != nil }

// Replay writes the stored response of the request's first run, which was
// an op. Only the access guard calls it, once the caller has passed op's
// access check. A key stored for another operation (the same method and
// path, routed elsewhere since) is a reused key.
func (r *Request) Replay(w http.ResponseWriter, op string) error {
	if r.stored == nil {
		return errors.New("replay a request that has not run")
	}
	if r.stored.Operation != op {
		return problem.Errorf(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"this Idempotency-Key was used for a different request (%s) in the last 24 hours; use a new key", r.stored.Operation)
	}
	w.Header().Set(ReplayedHeader, "true")
	if len(r.stored.Body) > 0 {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(int(r.stored.Status))
	_, _ = w.Write(r.stored.Body)
	return nil
}

// Middleware finds the stored response of a keyed write, if there is one;
// the access guard replays it (Request.Replay) or runs the write and stores
// its response. principal names the caller ("" for an anonymous one, whose
// keys are ignored: there is no one to scope them to). It must run after
// authentication and after the body limit.
func Middleware(pool *pgxpool.Pool, principal func(*http.Request) string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := r.Header.Get(Header)
			who := principal(r)
			if key == "" || who == "" || r.Method == http.MethodGet || r.Method == http.MethodHead {
				next.ServeHTTP(w, r)
				return
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				var maxErr *http.MaxBytesError
				if errors.As(err, &maxErr) {
					problem.Write(w, r, problem.TooLarge(maxErr.Limit))
					return
				}
				problem.Write(w, r, fmt.Errorf("read body: %w", err))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			ir := &Request{Principal: who, Key: key, Hash: requestHash(r, body)}

			stored, err := db.New(pool).IdempotencyGet(r.Context(), db.IdempotencyGetParams{Principal: who, Key: key})
			switch {
			case errors.Is(err, pgx.ErrNoRows):
			case err != nil:
				problem.Write(w, r, fmt.Errorf("look up idempotency key: %w", err))
				return
			case !bytes.Equal(stored.RequestHash, ir.Hash):
				// The caller's own key: saying what it was used for
				// tells them nothing they may not know.
				problem.Write(w, r, problem.Errorf(http.StatusUnprocessableEntity, "idempotency_key_reused",
					"this Idempotency-Key was used for a different request (%s) in the last 24 hours; use a new key", stored.Operation))
				return
			default:
				ir.stored = &stored
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, ir)))
		})
	}
}

// requestHash identifies "the same request": method, path, query and body.
func requestHash(r *http.Request, body []byte) []byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s?%s\n", r.Method, r.URL.Path, r.URL.RawQuery)
	h.Write(body)
	return h.Sum(nil)
}
