package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"

	"github.com/getkin/kin-openapi/openapi3"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/auth/oidcverify"
	"github.com/flock-io/flock-api/internal/buildinfo"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/config"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/docs"
	"github.com/flock-io/flock-api/internal/httpserver"
	"github.com/flock-io/flock-api/internal/idempotency"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/nudge"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/reqinfo"
	"github.com/flock-io/flock-api/internal/restapi"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// Module names. Hidden modules are plumbing; the rest are targets.
const (
	Config     = "config"
	Metrics    = "metrics"
	Postgres   = "postgres"
	Audit      = "audit"
	HTTPServer = "http-server"
	KV         = "kv"
	Kafka      = "kafka"
	Telemetry  = "telemetry-store"
	Tokens     = "device-tokens"
	MQTTBroker = "mqtt-broker"

	API      = "api"
	Ingester = "ingester"
	All      = "all"
)

// deps is the whole graph in one screen. A target appears here only once it
// really works: an unfinished target is not mounted.
var deps = map[string][]string{
	Config:     nil,
	Metrics:    {Config},
	Postgres:   {Config},
	Audit:      {Config, Metrics},
	HTTPServer: {Config, Metrics},
	KV:         {Config, Metrics},
	Kafka:      {Config, Metrics},
	Telemetry:  {Config, Postgres},
	Tokens:     {Config, Postgres},
	MQTTBroker: {Config, Metrics, Tokens},
	API:        {Config, Postgres, Metrics, Audit, HTTPServer, KV, Kafka, Telemetry, Tokens},
	Ingester:   {Config, Postgres, Metrics, HTTPServer, KV, Kafka, Telemetry, MQTTBroker},
}

var hidden = map[string]bool{Config: true, Metrics: true, Postgres: true, Audit: true, HTTPServer: true,
	KV: true, Kafka: true, Telemetry: true, Tokens: true, MQTTBroker: true}

// App is the state the modules of one process share as they are wired.
type App struct {
	cfg     *config.Config
	log     *slog.Logger
	mgr     *modules.Manager
	targets []string // the visible modules being run, in start order

	ready   *httpserver.Readiness
	metrics *metrics.Metrics
	pool    *pgxpool.Pool
	server  *httpserver.Server
	audit   *audit.Recorder

	kv            kv.Store
	bus           *bus.Bus
	telemetry     telemetry.Store
	tokens        *devicetoken.Service
	broker        *broker.Broker
	mqttURL       *url.URL   // where the ingester connects
	mqttPublicURL mqttPublic // what devices are told
	mqttPassword  string
}

// New builds the module graph for cfg.
func New(cfg *config.Config, log *slog.Logger) *App {
	a := &App{cfg: cfg, log: log, mgr: modules.New(), ready: httpserver.NewReadiness()}
	inits := map[string]func(context.Context) (*modules.Service, error){
		Config:     a.initConfig,
		Metrics:    a.initMetrics,
		Postgres:   a.initPostgres,
		Audit:      a.initAudit,
		HTTPServer: a.initHTTPServer,
		KV:         a.initKV,
		Kafka:      a.initKafka,
		Telemetry:  a.initTelemetry,
		Tokens:     a.initDeviceTokens,
		MQTTBroker: a.initMQTTBroker,
		API:        a.initAPI,
		Ingester:   a.initIngester,
	}
	var targets []string
	for name, d := range deps {
		a.mgr.Register(modules.Module{Name: name, Deps: d, Hidden: hidden[name], Init: inits[name]})
		if !hidden[name] {
			targets = append(targets, name)
		}
	}
	sort.Strings(targets)
	a.mgr.Register(modules.Module{Name: All, Deps: targets})
	return a
}

// Manager exposes the graph (for --list-targets and tests).
func (a *App) Manager() *modules.Manager { return a.mgr }

func (a *App) initConfig(context.Context) (*modules.Service, error) {
	// An API without the broker in its process still tells devices where
	// the broker is, when configured.
	if a.cfg.MQTTPublicURL != "" {
		a.mqttPublicURL.Store(a.cfg.MQTTPublicURL)
	}
	a.log.Info("starting flock-api", "version", buildinfo.Get().Version, "commit", buildinfo.Get().Commit,
		"targets", strings.Join(a.targets, ","), "dev", a.cfg.Dev)
	return nil, nil
}

func (a *App) initMetrics(context.Context) (*modules.Service, error) {
	a.metrics = metrics.New()
	return nil, nil
}

func (a *App) initPostgres(ctx context.Context) (*modules.Service, error) {
	pool, err := postgres.Open(ctx, a.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_DATABASE_URL: %w", err)
	}
	a.log.Info("store engine", "concern", "relational", "engine", "postgresql", "mode", "external")
	m, err := postgres.NewMigrator(pool, a.log)
	if err != nil {
		pool.Close()
		return nil, err
	}
	defer m.Close()
	if a.cfg.Dev {
		n, err := m.Up(ctx)
		if err != nil {
			pool.Close()
			return nil, err
		}
		a.log.Info("dev mode: migrations applied", "applied", n)
	} else {
		pending, err := m.Pending(ctx)
		if err != nil {
			pool.Close()
			return nil, err
		}
		if pending {
			pool.Close()
			return nil, postgres.ErrSchemaBehind
		}
	}
	q := db.New(pool)
	a.ready.Add(Postgres, func(ctx context.Context) error {
		_, err := q.Ping(ctx)
		return err
	})
	a.pool = pool
	return &modules.Service{Close: pool.Close}, nil
}

func (a *App) initHTTPServer(context.Context) (*modules.Service, error) {
	srv, err := httpserver.New(httpserver.Config{
		Addr:          a.cfg.HTTPAddr,
		BodyLimit:     int64(a.cfg.HTTPBodyLimit),
		ShutdownGrace: a.cfg.ShutdownGrace,
	}, a.metrics, a.ready, a.log)
	if err != nil {
		return nil, err
	}
	a.server = srv
	return &modules.Service{Run: srv.Run}, nil
}

func (a *App) initAudit(context.Context) (*modules.Service, error) {
	if a.cfg.LokiURL == "" {
		a.audit = audit.NewRecorder(nil)
		a.log.Info("store engine", "concern", "audit", "engine", "postgresql", "mode", "external")
		return nil, nil
	}
	loki := audit.NewLoki(a.cfg.LokiURL, a.log, a.metrics.Registry)
	a.audit = audit.NewRecorder(loki)
	a.log.Info("store engine", "concern", "audit", "engine", "postgresql+loki", "mode", "external")
	return &modules.Service{Run: loki.Run}, nil
}

func (a *App) initAPI(ctx context.Context) (*modules.Service, error) {
	spec, err := restapi.LoadSpec(ctx, gen.OpenAPIYAML)
	if err != nil {
		return nil, err
	}
	verifier, err := a.userTokenVerifier(ctx)
	if err != nil {
		return nil, err
	}
	a.ready.Add("oidc", verifier.Ready)
	guard, err := auth.NewGuard(spec, handlers.Policy, a.pool, a.audit, a.log)
	if err != nil {
		return nil, err
	}
	issuer := DeviceIssuer(a.cfg.PublicURL)
	// The hooks an external broker calls admit the ingester with the
	// credentials it is configured with; without a password (embedded
	// broker) they admit no service client.
	hookUser := ""
	if a.cfg.MQTTPassword != "" {
		hookUser = a.cfg.MQTTUsername
	}
	mqttAuth, err := broker.NewAuthenticator(hookUser, a.cfg.MQTTPassword, a.tokens, a.pool)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_MQTT_USERNAME: %w", err)
	}
	nudges := nudge.New(a.pool, a.bus, a.log, a.metrics.Registry)
	server := handlers.New(handlers.Deps{Pool: a.pool, Targets: a.targets, Tokens: a.tokens,
		TokenEndpoint: TokenEndpoint(a.cfg.PublicURL), Audit: a.audit, MQTTURL: a.mqttPublicURL.Load,
		KV: a.kv, Telemetry: a.telemetry, MQTTAuth: mqttAuth, MQTTHookToken: a.cfg.MQTTHookToken,
		MQTTHooksOpen: a.cfg.Dev, Nudge: nudges})
	MountAPI(a.server.Router(), spec, server, auth.NewAuthenticator(verifier, a.tokens, issuer, a.pool, a.log), guard,
		idempotency.Middleware(a.pool, auth.NameOf))
	docs.Mount(a.server.Router())
	// Background work of the API: telling devices their targets changed;
	// forgetting day-old idempotency keys.
	janitor := idempotency.Janitor(a.pool, a.log)
	return &modules.Service{Run: func(ctx context.Context) error {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return nudges.Run(ctx) })
		g.Go(func() error { return janitor(ctx) })
		return g.Wait()
	}}, nil
}

// DeviceIssuer is the iss of device tokens: the deployment's public URL.
func DeviceIssuer(publicURL string) string { return strings.TrimRight(publicURL, "/") }

// TokenEndpoint is where devices trade assertions for tokens, and the aud
// their assertions carry.
func TokenEndpoint(publicURL string) string { return DeviceIssuer(publicURL) + "/device/v1/token" }

// DevAudience is the audience of the dev provider's tokens.
const DevAudience = "flock-dev"

// DevIssuer is where the dev provider lives: under the public URL, so
// Swagger UI and other clients on this machine can discover it.
func DevIssuer(publicURL string) string {
	return strings.TrimRight(publicURL, "/") + "/dev/oidc"
}

// userTokenVerifier verifies tokens of the configured issuer, or in dev mode
// without one, of the in-process dev provider, which it mounts.
func (a *App) userTokenVerifier(ctx context.Context) (*oidcverify.Verifier, error) {
	if a.cfg.OIDCIssuer != "" {
		a.log.Info("store engine", "concern", "human identity", "engine", "oidc", "mode", "external", "issuer", a.cfg.OIDCIssuer)
		return oidcverify.New(oidcverify.Config{Issuer: a.cfg.OIDCIssuer, Audience: a.cfg.OIDCAudience})
	}
	issuer := DevIssuer(a.cfg.PublicURL)
	prov, err := devoidc.New(ctx, a.pool, issuer, DevAudience)
	if err != nil {
		return nil, fmt.Errorf("dev OIDC provider: %w", err)
	}
	h := prov.Handler()
	prefix := strings.TrimRight(mustPath(issuer), "/")
	a.server.Router().With(reqinfo.Label("dev-oidc")).Handle(prefix+"/*", http.StripPrefix(prefix, h))
	a.log.Info("store engine", "concern", "human identity", "engine", "dev-oidc", "mode", "embedded", "issuer", issuer,
		"hint", "flock-api dev-token --email you@example.com")
	return oidcverify.New(oidcverify.Config{Issuer: issuer, Audience: DevAudience,
		HTTPClient: &http.Client{Transport: devoidc.Transport(http.StripPrefix(prefix, h))}})
}

func mustPath(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "/"
	}
	return p.Path
}

// MountAPI wraps the strict server in spec validation and problem mapping
// and routes every path under the spec's top-level prefixes (/v1, ...) to it,
// so unknown paths there get the validator's 404 and known paths with a wrong
// method its 405.
func MountAPI(r chi.Router, spec *openapi3.T, s api.StrictServerInterface, authn *auth.Authenticator, guard *auth.Guard,
	between ...func(http.Handler) http.Handler) {
	ops := restapi.NewOperations(spec)
	// The last middleware is the outermost: the operation is labelled
	// before the guard may refuse the request.
	strict := api.NewStrictHandlerWithOptions(s,
		[]api.StrictMiddlewareFunc{
			auth.StrictMiddleware[api.StrictHandlerFunc](guard, ops.ID),
			restapi.StrictMiddleware[api.StrictHandlerFunc](ops),
		},
		api.StrictHTTPServerOptions{
			RequestErrorHandlerFunc:  restapi.RequestError,
			ResponseErrorHandlerFunc: restapi.ResponseError,
		})
	h := api.HandlerWithOptions(strict, api.ChiServerOptions{
		BaseRouter:       chi.NewRouter(),
		ErrorHandlerFunc: restapi.RequestError,
	})
	var handler http.Handler = restapi.Validator(spec, restapi.Options{Authenticate: auth.RequirePrincipal})(h)
	// Middleware that needs the caller and the whole body before validation
	// (the idempotency lookup; the guard replays what it finds).
	for i := len(between) - 1; i >= 0; i-- {
		handler = between[i](handler)
	}
	handler = authn.Middleware(handler)
	// The MQTT hooks carry the broker's hook token, not a user's or a
	// device's, in Authorization: their gate checks and removes it before
	// the authenticator would refuse it.
	if g, ok := s.(interface {
		Gate(http.Handler) http.Handler
	}); ok {
		handler = g.Gate(handler)
	}
	for _, p := range restapi.Prefixes(spec) {
		r.Handle(p+"/*", handler)
	}
}
