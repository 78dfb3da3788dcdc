package handlers_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/auth/oidcverify"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/http/idempotency"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/http/restapi"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/registryproxy"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// liveEnv is the API served in this process as the api target serves it
// (spec validation, authentication, guard, idempotency), with the Deps the
// app does not wire yet: a KV store, a telemetry store, the MQTT hooks.
type liveEnv struct {
	srv    *apptest.Server
	pool   *pgxpool.Pool
	tokens *devicetoken.Service
	server *handlers.Server
}

type liveOptions struct {
	// deps adjusts the handlers' dependencies; Pool, Tokens and Audit are set.
	deps func(e *liveEnv, d *handlers.Deps)
	// noGate mounts the API without MQTTHooks.Gate in front.
	noGate bool
}

func startLiveServer(t *testing.T, o liveOptions) *liveEnv {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	dbURL := pgtest.URL(t)
	pool, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	spec, err := restapi.LoadSpec(ctx, gen.OpenAPIYAML)
	if err != nil {
		t.Fatal(err)
	}
	issuer := app.DevIssuer(apptest.PublicURL)
	prov, err := devoidc.New(ctx, pool, issuer, app.DevAudience)
	if err != nil {
		t.Fatal(err)
	}
	prefix := strings.TrimPrefix(issuer, "http://flock.test:8080")
	verifier, err := oidcverify.New(oidcverify.Config{Issuer: issuer, Audience: app.DevAudience,
		HTTPClient: &http.Client{Transport: devoidc.Transport(http.StripPrefix(prefix, prov.Handler()))}})
	if err != nil {
		t.Fatal(err)
	}
	recorder := audit.NewRecorder(nil)
	guard, err := auth.NewGuard(spec, handlers.Policy, pool, recorder, log)
	if err != nil {
		t.Fatal(err)
	}
	devIssuer := app.DeviceIssuer(apptest.PublicURL)
	tokens, err := devicetoken.New(ctx, pool, devicetoken.Config{Issuer: devIssuer,
		TokenEndpoint: app.TokenEndpoint(apptest.PublicURL), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	e := &liveEnv{pool: pool, tokens: tokens}
	// Releases are checked against an embedded registry, which the
	// registry-proxy (mounted below, as --target=all mounts it) pushes to.
	reg := registrytest.Embedded(t)
	deps := handlers.Deps{Pool: pool, Tokens: tokens, TokenEndpoint: app.TokenEndpoint(apptest.PublicURL), Audit: recorder,
		Registry: reg, RegistryHost: apptest.RegistryHost}
	if o.deps != nil {
		o.deps(e, &deps)
	}
	e.server = handlers.New(deps)
	r := chi.NewRouter()
	authn := auth.NewAuthenticator(verifier, tokens, devIssuer, pool, log)
	proxy, err := registryproxy.New(registryproxy.Config{Registry: reg, Pool: pool, Authn: authn, Tokens: tokens,
		Realm: app.RegistryRealm(apptest.PublicURL), Service: apptest.RegistryHost, Log: log, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Mount(r)
	chain := restapi.Chain{
		Authn:   authn,
		Guard:   guard,
		Between: []func(http.Handler) http.Handler{idempotency.Middleware(pool, auth.NameOf)},
		Gate:    e.server.MQTTHooks.Gate,
	}
	if o.noGate {
		chain.Gate = nil
	}
	restapi.Mount(r, spec, e.server, chain)
	var h http.Handler = r
	hs := httptest.NewServer(reqinfo.Middleware(h))
	t.Cleanup(hs.Close)
	e.srv = &apptest.Server{URL: hs.URL, DatabaseURL: dbURL}
	return e
}
