// Package httpserver is the HTTP listener every target shares: request ids,
// access logs, metrics, panic recovery and the body limit around everything;
// /healthz, /readyz and /metrics; and a graceful drain on shutdown.
package httpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/metrics"
)

// Config holds the server's settings.
type Config struct {
	Addr string
	// BodyLimit caps request bodies in bytes; larger ones get 413.
	BodyLimit int64
	// ShutdownGrace bounds how long in-flight requests may take to finish.
	ShutdownGrace time.Duration
}

// Server is one HTTP listener with the operational endpoints mounted.
type Server struct {
	cfg      Config
	log      *slog.Logger
	metrics  *metrics.Metrics
	root     chi.Router
	listener net.Listener
	srv      *http.Server
	ready    *Readiness
	// unlimited are path prefixes whose bodies limitBody lets through;
	// set while modules are wired, before Run, and read-only after.
	unlimited []string
	// unlimitedIf are requests limitBody lets through, by a rule of their
	// own; same lifetime as unlimited.
	unlimitedIf []func(*http.Request) bool
}

// UnlimitedBodies exempts requests under prefix from the body limit, for
// surfaces that bound their bodies themselves (the registry-proxy streams
// image layers of any size and caps manifests). Call it before Run.
func (s *Server) UnlimitedBodies(prefix string) { s.unlimited = append(s.unlimited, prefix) }

// UnlimitedBodiesIf exempts the requests match accepts from the body
// limit, for one operation that bounds its body itself (a build upload).
// Call it before Run.
func (s *Server) UnlimitedBodiesIf(match func(*http.Request) bool) {
	s.unlimitedIf = append(s.unlimitedIf, match)
}

// New binds the listen address at once, so a taken or invalid address fails
// start-up rather than the first request.
func New(cfg Config, m *metrics.Metrics, ready *Readiness, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (FLOCK_HTTP_ADDR): %w", cfg.Addr, err)
	}
	s := &Server{cfg: cfg, log: log, metrics: m, listener: ln, ready: ready}

	r := chi.NewRouter()
	// HEAD is answered wherever GET is (RFC 9110 §9.3.2), by the GET route:
	// chi routes a HEAD that no route declares as its GET, keeping the
	// request's method HEAD for logs and metrics; the server sends no body.
	r.Use(reqinfo.Middleware, s.access, s.recoverer, s.limitBody, middleware.GetHead)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, r, problem.Errorf(http.StatusNotFound, "not_found", "no resource at %s", r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, r, problem.Errorf(http.StatusMethodNotAllowed, "method_not_allowed",
			"%s is not allowed on %s", r.Method, r.URL.Path))
	})
	r.With(reqinfo.Label("healthz")).Get("/healthz", s.healthz)
	r.With(reqinfo.Label("readyz")).Get("/readyz", ready.ServeHTTP)
	r.With(reqinfo.Label("metrics")).Method(http.MethodGet, "/metrics", m.Handler())
	s.root = r

	s.srv = &http.Server{
		Handler:           r,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Addr is the address actually bound (useful with port 0).
func (s *Server) Addr() string { return s.listener.Addr().String() }

// Router is where targets mount their routes, before Run.
func (s *Server) Router() chi.Router { return s.root }

// Run serves until ctx is cancelled, then stops accepting connections and
// waits up to ShutdownGrace for in-flight requests.
func (s *Server) Run(ctx context.Context) error {
	s.log.Info("http server listening", "addr", s.Addr())
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.listener) }()

	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	s.ready.Drain()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	s.log.Info("http server draining", "grace", s.cfg.ShutdownGrace.String())
	if err := s.srv.Shutdown(shutdownCtx); err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("http server drain: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	s.log.Info("http server stopped")
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
