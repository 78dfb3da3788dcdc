package app_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/auth/oidcverify"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/http/httpserver"
	"github.com/flock-io/flock-api/internal/http/restapi"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// fixedQuerier answers DatabaseVersion from memory. It exists only to
// separate the middleware stack's own cost from the PostgreSQL round trip in
// the benchmarks below; every test uses the real database.
type fixedQuerier struct{ db.Querier }

func (fixedQuerier) DatabaseVersion(context.Context) (db.DatabaseVersionRow, error) {
	return db.DatabaseVersionRow{ServerVersion: "15", SchemaVersion: 1}, nil
}

type benchStack struct {
	h    http.Handler
	prov *devoidc.Provider
	pool *pgxpool.Pool
}

// stack is the whole production HTTP stack (request id, access log, metrics,
// recovery, body limit, authentication, spec validation, access guard,
// strict handler, JSON) with the dev OIDC provider, as the api target builds
// it; versionDB answers /v1/version.
func stack(b *testing.B, versionDB func(*pgxpool.Pool) db.Querier) *benchStack {
	b.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	pool := pgtest.Pool(b)
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0", BodyLimit: 1 << 20, ShutdownGrace: time.Second},
		metrics.New(), httpserver.NewReadiness(), log)
	if err != nil {
		b.Fatal(err)
	}
	spec, err := restapi.LoadSpec(ctx, gen.OpenAPIYAML)
	if err != nil {
		b.Fatal(err)
	}
	issuer := app.DevIssuer("http://flock.test")
	prov, err := devoidc.New(ctx, pool, issuer, app.DevAudience)
	if err != nil {
		b.Fatal(err)
	}
	ph := http.StripPrefix("/dev/oidc", prov.Handler())
	verifier, err := oidcverify.New(oidcverify.Config{Issuer: issuer, Audience: app.DevAudience,
		HTTPClient: &http.Client{Transport: devoidc.Transport(ph)}})
	if err != nil {
		b.Fatal(err)
	}
	guard, err := auth.NewGuard(spec, handlers.Policy, pool, audit.NewRecorder(nil), log)
	if err != nil {
		b.Fatal(err)
	}
	tokens, err := devicetoken.New(ctx, pool, devicetoken.Config{Issuer: "http://flock.test", TokenEndpoint: app.TokenEndpoint("http://flock.test"), Log: log})
	if err != nil {
		b.Fatal(err)
	}
	server := handlers.New(handlers.Deps{Pool: pool, Targets: []string{"api"}, Tokens: tokens, TokenEndpoint: app.TokenEndpoint("http://flock.test"), Audit: audit.NewRecorder(nil)})
	server.System.DB = versionDB(pool)
	restapi.Mount(srv.Router(), spec, server, restapi.Chain{Authn: auth.NewAuthenticator(verifier, tokens, "http://flock.test", pool, log), Guard: guard})
	return &benchStack{h: srv.Router(), prov: prov, pool: pool}
}

func (s *benchStack) run(b *testing.B, method, path, token string) {
	b.Helper()
	do := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		s.h.ServeHTTP(rec, req)
		return rec
	}
	if rec := do(); rec.Code != http.StatusOK { // warms the JWKS and user caches
		b.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if rec := do(); rec.Code != http.StatusOK {
				b.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
		}
	})
}

// BenchmarkVersionGet is the baseline later issues measure their overhead
// against: GET /v1/version through the whole stack, in process (no socket).
func BenchmarkVersionGet(b *testing.B) {
	b.Run("stack-only", func(b *testing.B) {
		stack(b, func(*pgxpool.Pool) db.Querier { return fixedQuerier{} }).run(b, "GET", "/v1/version", "")
	})
	b.Run("postgres", func(b *testing.B) {
		stack(b, func(p *pgxpool.Pool) db.Querier { return db.New(p) }).run(b, "GET", "/v1/version", "")
	})
}

// BenchmarkAuthenticated measures what identity adds per request: JWT
// verification with cached keys (version with a token, against version
// without), an API key lookup, and an org-scoped read (verification plus
// the membership lookup plus the read itself).
func BenchmarkAuthenticated(b *testing.B) {
	s := stack(b, func(*pgxpool.Pool) db.Querier { return fixedQuerier{} })
	token, err := s.prov.Mint(context.Background(), "bench@example.com", "", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	org := createOrg(b, s, token)
	key := createKey(b, s, token, org)
	b.Run("version-anonymous", func(b *testing.B) { s.run(b, "GET", "/v1/version", "") })
	b.Run("version-jwt", func(b *testing.B) { s.run(b, "GET", "/v1/version", token) })
	b.Run("version-api-key", func(b *testing.B) { s.run(b, "GET", "/v1/version", key) })
	b.Run("org-get-jwt", func(b *testing.B) { s.run(b, "GET", "/v1/orgs/"+org, token) })
}

func post(b *testing.B, s *benchStack, path, token, body string) string {
	b.Helper()
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		b.Fatalf("POST %s = %d: %s", path, rec.Code, rec.Body)
	}
	return rec.Body.String()
}

func field(b *testing.B, js, name string) string {
	b.Helper()
	i := strings.Index(js, `"`+name+`":"`)
	if i < 0 {
		b.Fatalf("no %s in %s", name, js)
	}
	rest := js[i+len(name)+4:]
	return rest[:strings.IndexByte(rest, '"')]
}

func createOrg(b *testing.B, s *benchStack, token string) string {
	return field(b, post(b, s, "/v1/orgs", token, `{"name":"bench"}`), "id")
}

func createKey(b *testing.B, s *benchStack, token, org string) string {
	return field(b, post(b, s, "/v1/orgs/"+org+"/api-keys", token, `{"name":"bench","role":"viewer"}`), "secret")
}

// BenchmarkDeviceList is one page of 100 devices filtered by a tag, out of
// 10,000, through the whole stack in process: the server-side cost that
// bench/devices measures end to end.
func BenchmarkDeviceList(b *testing.B) {
	s := stack(b, func(p *pgxpool.Pool) db.Querier { return db.New(p) })
	token, err := s.prov.Mint(context.Background(), "bench@example.com", "", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	org := createOrg(b, s, token)
	fleet := field(b, post(b, s, "/v1/orgs/"+org+"/fleets", token, `{"name":"f","architecture":"amd64"}`), "id")
	if _, err := s.pool.Exec(context.Background(), `
		INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, tags, created_at)
		SELECT gen_random_uuid(), $1, $2, 'device-' || i, 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'),
		       jsonb_build_object('zone', 'zone-' || (i % 10)), now() - make_interval(secs => 10000 - i)
		FROM generate_series(1, 10000) AS i`, org, fleet); err != nil {
		b.Fatal(err)
	}
	if _, err := s.pool.Exec(context.Background(), "ANALYZE devices"); err != nil {
		b.Fatal(err)
	}
	b.Run("http-stack", func(b *testing.B) {
		s.run(b, "GET", "/v1/orgs/"+org+"/devices?tag_key=zone&tag_value=zone-3&limit=100", token)
	})
	b.Run("bare-sql", func(b *testing.B) {
		q := db.New(s.pool)
		key, value := "zone", "zone-3"
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) { // as run does for the stack
			for pb.Next() {
				if _, err := q.DeviceList(context.Background(), db.DeviceListParams{OrgID: uuid.MustParse(org), TagKey: &key, TagValue: &value, MaxRows: 101}); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
