package deviceproxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/testutil/syncbuf"
)

const testDomain = "devices.test"

// device is what the test's Resolve and Dial know of one device. Dial
// reaches a real listener on loopback at 127.0.0.1:port, the way the tunnel
// reaches the device's local port; dial replaces that for the tests of
// dials that hang.
type device struct {
	public  bool
	offline bool
	port    uint16
	dial    func(ctx context.Context) (net.Conn, error)
}

// fleet is the test's device registry and tunnel.
type fleet struct {
	mu         sync.Mutex
	devices    map[uuid.UUID]device
	dials      map[uuid.UUID]int
	resolveErr error
}

func (f *fleet) add(d device) uuid.UUID {
	id := uuid.New()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[id] = d
	return id
}

func (f *fleet) failResolve(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resolveErr = err
}

func (f *fleet) dialCount(id uuid.UUID) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dials[id]
}

func (f *fleet) resolve(_ context.Context, id uuid.UUID) (Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.resolveErr != nil {
		return Route{}, f.resolveErr
	}
	d, ok := f.devices[id]
	if !ok || !d.public {
		return Route{}, fmt.Errorf("device %s: %w", id, ErrNotPublic)
	}
	return Route{Device: id, Port: d.port}, nil
}

func (f *fleet) dial(ctx context.Context, id uuid.UUID, port uint16) (net.Conn, error) {
	f.mu.Lock()
	d, ok := f.devices[id]
	f.dials[id]++
	f.mu.Unlock()
	switch {
	case !ok || d.offline:
		return nil, fmt.Errorf("tunnel: device %s: %w", id, ErrOffline)
	case d.dial != nil:
		return d.dial(ctx)
	}
	var dialer net.Dialer
	return dialer.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
}

type harness struct {
	proxy  *Proxy
	server *httptest.Server
	client *http.Client
	fleet  *fleet
	reg    *prometheus.Registry
	logs   *syncbuf.Buffer
}

// newHarness serves a Proxy on loopback. Its client sends every request to
// the proxy whatever the URL's host, as DNS for *.devices.test would.
func newHarness(t *testing.T, configure ...func(*Config)) *harness {
	t.Helper()
	h := &harness{
		fleet: &fleet{devices: map[uuid.UUID]device{}, dials: map[uuid.UUID]int{}},
		reg:   prometheus.NewRegistry(),
		logs:  &syncbuf.Buffer{},
	}
	cfg := Config{
		Domain:     testDomain,
		Resolve:    h.fleet.resolve,
		Dial:       h.fleet.dial,
		Log:        slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: h.reg,
	}
	for _, c := range configure {
		c(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.proxy = p
	h.server = httptest.NewServer(p)
	t.Cleanup(h.server.Close)
	t.Cleanup(p.CloseIdleConnections)
	h.client = clientTo(t, h.server.Listener.Addr().String(), nil)
	return h
}

// clientTo returns a client that connects to addr for every URL.
func clientTo(t *testing.T, addr string, configure func(*http.Transport)) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	if configure != nil {
		configure(tr)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// startDevice serves handler on loopback as a device's local web server and
// returns its port.
func startDevice(t *testing.T, handler http.Handler) uint16 {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return portOf(t, srv.Listener.Addr())
}

func portOf(t *testing.T, addr net.Addr) uint16 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatalf("split %s: %v", addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		t.Fatalf("port %s: %v", p, err)
	}
	return uint16(n)
}

func hostOf(id uuid.UUID) string { return id.String() + "." + testDomain }

// get sends a request and returns the response with its body read.
func (h *harness) get(t *testing.T, host string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+host+"/some/path?q=1", nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body from %s: %v", host, err)
	}
	return resp, body
}
