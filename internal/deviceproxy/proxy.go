package deviceproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// Route is where a public device URL leads: a port on a device.
type Route struct {
	Device uuid.UUID
	Port   uint16
}

// ErrNotPublic is Resolve's answer for a device that does not exist, whose
// public URL is disabled, or that the caller may otherwise not reach. The
// proxy answers all of them alike so that URLs cannot be probed.
var ErrNotPublic = errors.New("device has no public URL")

// ErrOffline is Dial's answer when the device's public URL is enabled but no
// tunnel replica holds a connection to the device.
var ErrOffline = errors.New("device is offline")

// DefaultDialTimeout bounds a dial when Config.DialTimeout is zero. A tunnel
// dial crosses the device's (often cellular) uplink, so it is generous.
const DefaultDialTimeout = 15 * time.Second

// Config configures a Proxy.
type Config struct {
	// Domain is the parent of the device hosts (FLOCK_DEVICE_URL_DOMAIN), e.g.
	// "devices.example.com": a device answers at "<uuid>.devices.example.com".
	Domain string
	// Resolve returns the route of a device's public URL, or an error wrapping
	// ErrNotPublic. Any other error is answered with 503.
	Resolve func(ctx context.Context, device uuid.UUID) (Route, error)
	// Dial opens a connection to port on the device through the tunnel, or
	// returns an error wrapping ErrOffline when no replica holds the device.
	// Like net.Dialer.DialContext, ctx bounds the dial only, not the
	// connection it returns.
	Dial func(ctx context.Context, device uuid.UUID, port uint16) (net.Conn, error)
	// DialTimeout bounds each Dial (504 when it passes); DefaultDialTimeout
	// when zero.
	DialTimeout time.Duration
	Log         *slog.Logger
	// Registerer, when set, receives flock_proxy_requests_total{outcome} and
	// flock_proxy_requests_in_flight.
	Registerer prometheus.Registerer
}

// Outcomes of a request, the values of the outcome label and log attribute.
const (
	outcomeProxied       = "proxied"        // the device answered (any status)
	outcomeNotFound      = "not_found"      // no public device at this host
	outcomeOffline       = "offline"        // ErrOffline
	outcomeUnreachable   = "unreachable"    // the dial or the device's port failed
	outcomeTimeout       = "timeout"        // the dial timed out
	outcomeUnavailable   = "unavailable"    // Resolve failed
	outcomeClientGone    = "client_gone"    // the client left before an answer
	outcomeAborted       = "aborted"        // the device broke off its answer mid-stream
	outcomeUpgradeFailed = "upgrade_failed" // the device switched protocols wrongly
)

var outcomes = []string{outcomeProxied, outcomeNotFound, outcomeOffline, outcomeUnreachable,
	outcomeTimeout, outcomeUnavailable, outcomeClientGone, outcomeAborted, outcomeUpgradeFailed}

// Proxy is the http.Handler of the public device URLs.
type Proxy struct {
	domain      string // lower case, no leading or trailing dot
	resolve     func(context.Context, uuid.UUID) (Route, error)
	dial        func(context.Context, uuid.UUID, uint16) (net.Conn, error)
	dialTimeout time.Duration
	log         *slog.Logger

	transport *http.Transport
	forward   *httputil.ReverseProxy
	withID    http.Handler

	requests *prometheus.CounterVec
	inflight prometheus.Gauge
}

// New checks cfg, registers the metrics and builds the shared transport.
func New(cfg Config) (*Proxy, error) {
	domain := strings.Trim(strings.ToLower(cfg.Domain), ".")
	switch {
	case domain == "":
		return nil, errors.New("deviceproxy: the device URL domain is required")
	case strings.ContainsAny(domain, ":/ "):
		return nil, fmt.Errorf("deviceproxy: the device URL domain %q must be a bare host name", cfg.Domain)
	case cfg.Resolve == nil || cfg.Dial == nil:
		return nil, errors.New("deviceproxy: Resolve and Dial are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	p := &Proxy{
		domain:      domain,
		resolve:     cfg.Resolve,
		dial:        cfg.Dial,
		dialTimeout: cfg.DialTimeout,
		log:         cfg.Log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_proxy_requests_total",
			Help: "Requests to public device URLs, by outcome.",
		}, []string{"outcome"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flock_proxy_requests_in_flight",
			Help: "Requests to public device URLs being served now, open WebSockets included.",
		}),
	}
	// Every outcome is exported from the start, so rate() and alerts see a
	// zero rather than a missing series.
	for _, o := range outcomes {
		p.requests.WithLabelValues(o)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{p.requests, p.inflight} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("deviceproxy: register metrics: %w", err)
			}
		}
	}
	p.transport = &http.Transport{
		// Proxy stays nil: HTTP_PROXY from the environment must never
		// capture device traffic.
		DialContext: p.dialContext,
		// The transport pools by URL host, which rewrite makes
		// "<uuid>:<port>": keep-alive connections are reused per device, and
		// never to a port the device has stopped publishing.
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
		// Bodies pass through as the device encoded them; decompressing
		// here would only cost CPU and change what the client sees.
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
		// Device apps speak HTTP/1.1 over the tunnel: no TLS, so no ALPN,
		// and HTTP/2 is never attempted.
		ForceAttemptHTTP2: false,
	}
	p.forward = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: p.transport,
		// Server-sent events, long polls and progress streams must reach
		// the client as the device writes them.
		FlushInterval:  -1,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
	}
	p.withID = reqinfo.Middleware(http.HandlerFunc(p.serve))
	return p, nil
}

// CloseIdleConnections closes the pooled keep-alive connections to devices,
// for shutdown.
func (p *Proxy) CloseIdleConnections() { p.transport.CloseIdleConnections() }

// ServeHTTP routes r by its Host to the device that publishes it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The server's own middleware may already have assigned the id and set
	// the response header; assigning again would answer with two ids.
	if reqinfo.ID(r.Context()) != "" {
		p.serve(w, r)
		return
	}
	p.withID.ServeHTTP(w, r)
}

// state is one request's route and outcome. It travels in the request
// context because the transport calls dialContext with nothing else from
// the request, and the error handler and ModifyResponse need to record.
type state struct {
	route   Route
	client  context.Context // the inbound request's context: the client's lifetime
	outcome string
	status  int
	err     error
}

type stateKey struct{}

func stateFrom(ctx context.Context) *state {
	s, _ := ctx.Value(stateKey{}).(*state)
	return s
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	p.inflight.Inc()
	defer p.inflight.Dec()
	st := &state{client: r.Context()}
	var device uuid.UUID
	defer func() { p.record(r, device, st, time.Since(start)) }()

	device, ok := p.deviceOf(r.Host)
	if !ok {
		st.outcome = outcomeNotFound
		p.writeError(w, r, pageNotFound)
		return
	}
	route, err := p.resolve(r.Context(), device)
	if err == nil && route.Port == 0 {
		err = errors.New("route without a port")
	}
	switch {
	case errors.Is(err, ErrNotPublic):
		st.outcome = outcomeNotFound
		p.writeError(w, r, pageNotFound)
		return
	case err != nil && r.Context().Err() != nil:
		st.outcome, st.err = outcomeClientGone, fmt.Errorf("resolve device %s: %w", device, err)
		return
	case err != nil:
		st.outcome, st.err = outcomeUnavailable, fmt.Errorf("resolve device %s: %w", device, err)
		p.writeError(w, r, pageUnavailable)
		return
	}
	if route.Device == uuid.Nil {
		route.Device = device
	}
	st.route = route

	completed := false
	defer func() {
		// ReverseProxy panics with http.ErrAbortHandler when the answer
		// breaks off mid-stream, at either end; the request still counts.
		if !completed {
			st.outcome = outcomeAborted
			if r.Context().Err() != nil {
				st.outcome = outcomeClientGone
			}
		}
	}()
	p.forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
	completed = true
}

// deviceOf returns the device a Host names: exactly one label, a uuid in
// its canonical form, under the domain. One spelling per device keeps a
// device's URL, its cookies and its logs to one origin.
func (p *Proxy) deviceOf(host string) (uuid.UUID, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	label, ok := strings.CutSuffix(host, "."+p.domain)
	if !ok || len(label) != 36 {
		return uuid.Nil, false
	}
	id, err := uuid.Parse(label)
	if err != nil || id.String() != label {
		return uuid.Nil, false
	}
	return id, true
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	st := stateFrom(pr.In.Context())
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = net.JoinHostPort(st.route.Device.String(), strconv.Itoa(int(st.route.Port)))
	// The device's app builds links and checks origins with its public name.
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
	pr.Out.Header.Set(reqinfo.Header, reqinfo.ID(pr.In.Context()))
}

func (p *Proxy) modifyResponse(res *http.Response) error {
	if st := stateFrom(res.Request.Context()); st != nil {
		st.outcome, st.status = outcomeProxied, res.StatusCode
	}
	// The response already carries the proxy's id; the device's would make two.
	res.Header.Del(reqinfo.Header)
	return nil
}

// dialError marks a failure to open the tunnel connection, as opposed to
// one on a connection the device accepted.
type dialError struct {
	route    Route
	timedOut bool
	err      error
}

func (e *dialError) Error() string {
	return fmt.Sprintf("dial device %s port %d: %v", e.route.Device, e.route.Port, e.err)
}

func (e *dialError) Unwrap() error { return e.err }

// dialContext ignores addr: the route travels in ctx.
func (p *Proxy) dialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	st := stateFrom(ctx)
	if st == nil {
		return nil, errors.New("deviceproxy: dial outside a routed request")
	}
	ctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	defer cancel()
	// The transport detaches dials from the request so that a late
	// connection can serve the next request; over a tunnel a dial is costly
	// to the device, so one nobody waits for any more is abandoned.
	stop := context.AfterFunc(st.client, cancel)
	defer stop()
	conn, err := p.dial(ctx, st.route.Device, st.route.Port)
	if err != nil {
		var ne net.Error
		timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded) && st.client.Err() == nil ||
			errors.As(err, &ne) && ne.Timeout() && st.client.Err() == nil
		return nil, &dialError{route: st.route, timedOut: timedOut, err: err}
	}
	return conn, nil
}

// upstreamError answers when no response came from the device (or a
// protocol switch failed).
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	st.err = err
	if st.client.Err() != nil {
		st.outcome = outcomeClientGone
		return
	}
	if st.outcome == outcomeProxied {
		// The device answered 101 but the switch could not be made; the
		// client still has no answer (or a hijacked connection, where the
		// write below fails harmlessly).
		st.outcome = outcomeUpgradeFailed
		p.writeError(w, r, pageUnreachable)
		return
	}
	var de *dialError
	switch {
	case errors.As(err, &de) && errors.Is(de.err, ErrOffline):
		st.outcome = outcomeOffline
		p.writeError(w, r, pageOffline)
	case errors.As(err, &de) && de.timedOut:
		st.outcome = outcomeTimeout
		p.writeError(w, r, pageTimeout)
	default:
		st.outcome = outcomeUnreachable
		p.writeError(w, r, pageUnreachable)
	}
}

func (p *Proxy) record(r *http.Request, device uuid.UUID, st *state, elapsed time.Duration) {
	p.requests.WithLabelValues(st.outcome).Inc()
	attrs := []slog.Attr{
		slog.String("outcome", st.outcome),
		slog.String("request_id", reqinfo.ID(r.Context())),
		slog.String("method", r.Method),
		slog.Duration("elapsed", elapsed),
	}
	if device != uuid.Nil {
		attrs = append(attrs, slog.String("device", device.String()))
	}
	if st.route.Port != 0 {
		attrs = append(attrs, slog.Int("port", int(st.route.Port)))
	}
	if st.status != 0 {
		attrs = append(attrs, slog.Int("status", st.status))
	}
	if st.err != nil {
		attrs = append(attrs, slog.String("error", st.err.Error()))
	}
	level := slog.LevelInfo
	switch st.outcome {
	case outcomeUnavailable:
		// Our side failed, not the device or the visitor.
		level = slog.LevelError
	case outcomeUpgradeFailed:
		level = slog.LevelWarn
	}
	p.log.LogAttrs(r.Context(), level, "device proxy request", attrs...)
}
