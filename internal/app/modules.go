package app

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/handlers/system"
	"github.com/flock-io/flock-api/internal/buildinfo"
	"github.com/flock-io/flock-api/internal/config"
	"github.com/flock-io/flock-api/internal/docs"
	"github.com/flock-io/flock-api/internal/httpserver"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/restapi"
)

// Module names. Hidden modules are plumbing; the rest are targets.
const (
	Config     = "config"
	Metrics    = "metrics"
	Postgres   = "postgres"
	HTTPServer = "http-server"

	API = "api"
	All = "all"
)

// deps is the whole graph in one screen. A target appears here only once it
// really works: an unfinished target is not mounted.
var deps = map[string][]string{
	Config:     nil,
	Metrics:    {Config},
	Postgres:   {Config},
	HTTPServer: {Config, Metrics},
	API:        {Config, Postgres, Metrics, HTTPServer},
}

var hidden = map[string]bool{Config: true, Metrics: true, Postgres: true, HTTPServer: true}

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
}

// New builds the module graph for cfg.
func New(cfg *config.Config, log *slog.Logger) *App {
	a := &App{cfg: cfg, log: log, mgr: modules.New(), ready: httpserver.NewReadiness()}
	inits := map[string]func(context.Context) (*modules.Service, error){
		Config:     a.initConfig,
		Metrics:    a.initMetrics,
		Postgres:   a.initPostgres,
		HTTPServer: a.initHTTPServer,
		API:        a.initAPI,
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

func (a *App) initAPI(ctx context.Context) (*modules.Service, error) {
	err := MountAPI(ctx, a.server.Router(), &handlers.Server{
		Handler: &system.Handler{DB: db.New(a.pool), Build: buildinfo.Get(), Targets: a.targets},
	})
	if err != nil {
		return nil, err
	}
	docs.Mount(a.server.Router())
	return nil, nil
}

// MountAPI wraps the strict server in spec validation and problem mapping
// and routes every path under the spec's top-level prefixes (/v1, ...) to it,
// so unknown paths there get the validator's 404 and known paths with a wrong
// method its 405.
func MountAPI(ctx context.Context, r chi.Router, s api.StrictServerInterface) error {
	spec, err := restapi.LoadSpec(ctx, gen.OpenAPIYAML)
	if err != nil {
		return err
	}
	strict := api.NewStrictHandlerWithOptions(s,
		[]api.StrictMiddlewareFunc{restapi.StrictMiddleware[api.StrictHandlerFunc](restapi.NewOperations(spec))},
		api.StrictHTTPServerOptions{
			RequestErrorHandlerFunc:  restapi.RequestError,
			ResponseErrorHandlerFunc: restapi.ResponseError,
		})
	h := api.HandlerWithOptions(strict, api.ChiServerOptions{
		BaseRouter:       chi.NewRouter(),
		ErrorHandlerFunc: restapi.RequestError,
	})
	validated := restapi.Validator(spec, restapi.Options{})(h)
	for _, p := range restapi.Prefixes(spec) {
		r.Handle(p+"/*", validated)
	}
	return nil
}
