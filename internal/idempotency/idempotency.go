// Package idempotency makes retried writes safe: a write sent with an
// Idempotency-Key runs once; its response is stored in the same transaction
// as the write (by the access guard) and replayed to a repeat of the same
// request for a day.
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/problem"
	"github.com/flock-io/flock-api/internal/reqinfo"
)

// Header is the request header; ReplayedHeader marks a replayed response.
const (
	Header         = "Idempotency-Key"
	ReplayedHeader = "Idempotent-Replayed"
)

// Request is a write that carries a key and has not run before.
type Request struct {
	Principal string
	Key       string
	Hash      []byte
}

type ctxKey struct{}

// From returns the keyed request in ctx, or nil.
func From(ctx context.Context) *Request {
	r, _ := ctx.Value(ctxKey{}).(*Request)
	return r
}

// Middleware replays stored responses. principal names the caller ("" for
// an anonymous one, whose keys are ignored: there is no one to scope them
// to). It must run after authentication and after the body limit.
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
			hash := requestHash(r, body)

			stored, err := db.New(pool).IdempotencyGet(r.Context(), db.IdempotencyGetParams{Principal: who, Key: key})
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				ctx := context.WithValue(r.Context(), ctxKey{}, &Request{Principal: who, Key: key, Hash: hash})
				next.ServeHTTP(w, r.WithContext(ctx))
			case err != nil:
				problem.Write(w, r, fmt.Errorf("look up idempotency key: %w", err))
			case !bytes.Equal(stored.RequestHash, hash):
				problem.Write(w, r, problem.Errorf(http.StatusUnprocessableEntity, "idempotency_key_reused",
					"this Idempotency-Key was used for a different request (%s) in the last 24 hours; use a new key", stored.Operation))
			default:
				reqinfo.SetOperation(r.Context(), stored.Operation)
				w.Header().Set(ReplayedHeader, "true")
				if len(stored.Body) > 0 {
					w.Header().Set("Content-Type", "application/json")
				}
				w.WriteHeader(int(stored.Status))
				_, _ = w.Write(stored.Body)
			}
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

// Janitor deletes keys older than a day, every hour, until ctx is done.
func Janitor(pool *pgxpool.Pool, log *slog.Logger) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			n, err := db.New(pool).IdempotencyDeleteExpired(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("delete expired idempotency keys", "error", err.Error())
			case n > 0:
				log.Info("deleted expired idempotency keys", "count", n)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	}
}
