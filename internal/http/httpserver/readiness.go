package httpserver

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flock-io/flock-api/internal/http/problem"
)

// Check reports whether a dependency answers. It must honour ctx's deadline.
type Check func(ctx context.Context) error

// Readiness is /readyz: ready while every registered check passes and the
// process is not draining. Stores register checks as they start.
type Readiness struct {
	draining atomic.Bool
	mu       sync.Mutex
	checks   map[string]Check
	timeout  time.Duration
}

// NewReadiness returns a readiness with no checks.
func NewReadiness() *Readiness {
	return &Readiness{checks: map[string]Check{}, timeout: 2 * time.Second}
}

// Add makes readiness depend on fn.
func (rd *Readiness) Add(name string, fn Check) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	rd.checks[name] = fn
}

// Drain turns /readyz to 503 for good, so load balancers stop sending
// new requests before the server stops accepting them.
func (rd *Readiness) Drain() { rd.draining.Store(true) }

// ServeHTTP runs every check concurrently under one deadline.
func (rd *Readiness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rd.draining.Load() {
		problem.Write(w, r, problem.New(http.StatusServiceUnavailable, "draining", "this process is shutting down"))
		return
	}
	rd.mu.Lock()
	checks := make(map[string]Check, len(rd.checks))
	for k, v := range rd.checks {
		checks[k] = v
	}
	rd.mu.Unlock()

	ctx, cancel := context.WithTimeout(r.Context(), rd.timeout)
	defer cancel()
	results := make(map[string]string, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range checks {
		wg.Go(func() {
			res := "ok"
			if err := check(ctx); err != nil {
				res = err.Error()
			}
			mu.Lock()
			results[name] = res
			mu.Unlock()
		})
	}
	wg.Wait()

	var failed []string
	for name, res := range results {
		if res != "ok" {
			failed = append(failed, name+": "+res)
		}
	}
	if len(failed) > 0 {
		sort.Strings(failed)
		problem.Write(w, r, problem.New(http.StatusServiceUnavailable, "not_ready", strings.Join(failed, "; ")))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "checks": results})
}
