package auth

import (
	"context"
	"errors"
	"github.com/flock-io/flock-api/internal/postgres"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const afterCommitSpec = `
openapi: 3.0.3
info: {title: guard test, version: "1"}
paths:
  /v1/orgs/{orgId}/things:
    post:
      operationId: thing:create
      parameters: [{name: orgId, in: path, required: true, schema: {type: string}}]
      responses:
        "201": {description: created}
`

// The guard runs what a write registered with postgres.AfterCommit only once
// the write and its audit record have committed: not when the handler fails,
// and not when the commit itself fails.
func TestGuardRunsAfterCommitOnlyOnCommit(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	// n is unique only at commit, so a handler can succeed and its commit fail.
	if _, err := pool.Exec(ctx, `CREATE TABLE things (name text PRIMARY KEY,
		n int CONSTRAINT things_n_key UNIQUE DEFERRABLE INITIALLY DEFERRED)`); err != nil {
		t.Fatal(err)
	}
	spec, err := openapi3.NewLoader().LoadFromData([]byte(afterCommitSpec))
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGuard(spec, Policy{"thing:create": {Level: OrgRole, MinRole: db.OrgRoleDeveloper, Write: true}},
		pool, audit.NewRecorder(nil), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	org := uuid.New()
	visible := func(name string) bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM things WHERE name = $1`, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	refused := problem.New(http.StatusConflict, "refused", "the handler refuses after writing")

	for _, tc := range []struct {
		name    string
		n       int
		fail    error
		wantRun bool
	}{
		{"commit", 1, nil, true},
		{"handler fails after writing", 2, refused, false},
		{"commit fails", 1, nil, false}, // n = 1 again: the deferred check fails at commit
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran, sawRow := false, false
			r := httptest.NewRequest(http.MethodPost, "/v1/orgs/"+org.String()+"/things", nil)
			rctx := chi.NewRouteContext()
			rctx.URLParams.Add("orgId", org.String())
			r = r.WithContext(context.WithValue(r.Context(), chi.RouteCtxKey, rctx))
			pctx := WithPrincipal(r.Context(), &Principal{Kind: KindAPIKey, KeyID: uuid.New(), KeyName: "ci",
				KeyOrg: org, KeyRole: db.OrgRoleOwner})

			_, err := g.serve(pctx, httptest.NewRecorder(), r, "thing:create", func(ctx context.Context) (any, error) {
				if _, err := postgres.TxFrom(ctx).Exec(ctx, `INSERT INTO things VALUES ($1, $2)`, tc.name, tc.n); err != nil {
					return nil, err
				}
				postgres.AfterCommit(ctx, func() { ran, sawRow = true, visible(tc.name) })
				return "ok", tc.fail
			})
			if ran != tc.wantRun {
				t.Fatalf("after-commit function ran = %v, want %v (serve: %v)", ran, tc.wantRun, err)
			}
			if tc.wantRun {
				if err != nil || !sawRow {
					t.Fatalf("serve = %v; row visible from another connection when it ran = %v", err, sawRow)
				}
				return
			}
			if err == nil {
				t.Fatal("serve succeeded; want the write's error")
			}
			if tc.fail != nil && !errors.Is(err, tc.fail) {
				t.Fatalf("serve = %v, want %v", err, tc.fail)
			}
			if visible(tc.name) {
				t.Fatal("the failed write's row is visible")
			}
		})
	}
}
