// Package metrics owns the process's Prometheus registry. Each process has its
// own registry (not the global default) so tests can start several servers in
// one process without collisions.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// Metrics is the registry plus the HTTP instruments every target shares.
type Metrics struct {
	Registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
}

// New returns a registry with the Go runtime and process collectors and the
// HTTP request instruments registered.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_http_requests_total",
			Help: "HTTP requests served, by OpenAPI operationId (or 'unmatched'), method and status code.",
		}, []string{"operation", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flock_http_request_duration_seconds",
			Help:    "Time to serve HTTP requests, by OpenAPI operationId and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"operation", "method"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flock_http_requests_in_flight",
			Help: "HTTP requests being served now.",
		}),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.duration, m.inflight,
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveRequest records one served request.
func (m *Metrics) ObserveRequest(r *http.Request, status int, elapsed time.Duration) {
	op, method := reqinfo.Operation(r.Context()), methodLabel(r.Method)
	m.requests.WithLabelValues(op, method, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(op, method).Observe(elapsed.Seconds())
}

// methodLabel bounds the label's values: clients choose the method, and an
// unbounded label would let them grow the registry without limit.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// InFlight returns the gauge of requests being served.
func (m *Metrics) InFlight() prometheus.Gauge { return m.inflight }
