package app_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/handlers/system"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/buildinfo"
	"github.com/flock-io/flock-api/internal/httpserver"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// fixedQuerier answers DatabaseVersion from memory. It exists only to
// separate the middleware stack's own cost from the PostgreSQL round trip in
// the benchmark below; every test uses the real database.
type fixedQuerier struct{ db.Querier }

func (fixedQuerier) DatabaseVersion(context.Context) (db.DatabaseVersionRow, error) {
	return db.DatabaseVersionRow{ServerVersion: "15", SchemaVersion: 1}, nil
}

// stack is the whole production HTTP stack (request id, access log, metrics,
// recovery, body limit, spec validation, strict handler, JSON) around q.
func stack(b *testing.B, q db.Querier) http.Handler {
	b.Helper()
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0", BodyLimit: 1 << 20, ShutdownGrace: 1},
		metrics.New(), httpserver.NewReadiness(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	err = app.MountAPI(context.Background(), srv.Router(), &handlers.Server{
		Handler: &system.Handler{DB: q, Build: buildinfo.Get(), Targets: []string{"api"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	return srv.Router()
}

// BenchmarkVersionGet is the baseline later issues measure their overhead
// against: GET /v1/version through the whole stack, in process (no socket).
func BenchmarkVersionGet(b *testing.B) {
	run := func(b *testing.B, h http.Handler) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/version", nil))
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
	b.Run("stack-only", func(b *testing.B) { run(b, stack(b, fixedQuerier{})) })
	b.Run("postgres", func(b *testing.B) { run(b, stack(b, db.New(pgtest.Pool(b)))) })
}
