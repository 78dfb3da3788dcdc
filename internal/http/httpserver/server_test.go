package httpserver_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/http/httpserver"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/syncbuf"
)

func newServer(t *testing.T, ready *httpserver.Readiness) *httpserver.Server {
	t.Helper()
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0", BodyLimit: 1 << 20, ShutdownGrace: 5 * time.Second},
		metrics.New(), ready, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReadiness(t *testing.T) {
	ready := httpserver.NewReadiness()
	srv := newServer(t, ready)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	base := "http://" + srv.Addr()

	var failing atomic.Bool
	ready.Add("store", func(context.Context) error {
		if failing.Load() {
			return errors.New("connection refused")
		}
		return nil
	})

	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, `"store":"ok"`) {
		t.Fatalf("readyz = %d %s", code, body)
	}
	failing.Store(true)
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "store: connection refused") {
		t.Fatalf("readyz with a failing check = %d %s", code, body)
	}
	failing.Store(false)
	ready.Drain()
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, `"code":"draining"`) {
		t.Fatalf("readyz while draining = %d %s", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz while draining = %d, want 200 (alive)", code)
	}
	if code, body := get(t, base+"/metrics"); code != 200 ||
		!strings.Contains(body, `flock_http_requests_total{method="GET",operation="readyz",status="503"} 2`) ||
		!strings.Contains(body, "go_goroutines") || !strings.Contains(body, "flock_http_request_duration_seconds_bucket") {
		t.Fatalf("metrics lack request counts or runtime metrics:\n%s", body)
	}
}

func TestShutdownLetsInFlightRequestsFinish(t *testing.T) {
	srv := newServer(t, httpserver.NewReadiness())
	entered, release := make(chan struct{}), make(chan struct{})
	srv.Router().Get("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + srv.Addr() + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(b), err}
	}()
	<-entered
	cancel()
	// The request is still running when the server stops taking new ones.
	testutil.Eventually(t, "the server to stop accepting connections", func() error {
		resp, err := http.Get("http://" + srv.Addr() + "/healthz")
		if err == nil {
			resp.Body.Close()
			return errors.New("still accepting")
		}
		return nil
	})
	close(release)
	r := <-res
	if r.err != nil || r.code != 200 || r.body != "finished" {
		t.Fatalf("in-flight request = %d %q %v, want 200 finished", r.code, r.body, r.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil after a clean drain", err)
	}
}

func TestListenErrorNamesTheSetting(t *testing.T) {
	_, err := httpserver.New(httpserver.Config{Addr: "256.0.0.1:80"}, metrics.New(), httpserver.NewReadiness(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "FLOCK_HTTP_ADDR") {
		t.Fatalf("err = %v", err)
	}
}

// TestHeadIsGetWithoutBody: every GET route answers HEAD with GET's status
// and headers and no body; the access log and the metrics keep the method
// HEAD, and the log counts no bytes sent.
func TestHeadIsGetWithoutBody(t *testing.T) {
	var logs syncbuf.Buffer
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0", BodyLimit: 1 << 20, ShutdownGrace: 5 * time.Second},
		metrics.New(), httpserver.NewReadiness(), slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv.Router().Get("/thing", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"1"`)
		io.WriteString(w, "a thing")
	})
	srv.Router().Post("/only-post", func(w http.ResponseWriter, r *http.Request) {})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	base := "http://" + srv.Addr()

	send := func(method, path string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/thing", "/only-post", "/nowhere"} {
		t.Run(path, func(t *testing.T) {
			get, _ := send("GET", path)
			head, body := send("HEAD", path)
			if head.StatusCode != get.StatusCode || len(body) != 0 {
				t.Fatalf("HEAD = %d with %d bytes; GET = %d", head.StatusCode, len(body), get.StatusCode)
			}
			for _, k := range []string{"Content-Type", "Content-Length", "Cache-Control", "ETag"} {
				// The scrapes themselves move the counters; a 405 names the
				// method it refuses.
				if (path == "/metrics" || path == "/only-post") && k == "Content-Length" {
					continue
				}
				if got, want := head.Header.Get(k), get.Header.Get(k); got != want {
					t.Errorf("HEAD %s = %q, GET's = %q", k, got, want)
				}
			}
		})
	}
	if !strings.Contains(logs.String(), `"method":"HEAD","path":"/thing","operation":"unmatched","status":200,"bytes":0`) {
		t.Errorf("no access log line for HEAD /thing with 0 bytes sent:\n%s", logs.String())
	}
	_, scrape := send("GET", "/metrics")
	if !strings.Contains(string(scrape), `flock_http_requests_total{method="HEAD",operation="healthz",status="200"} 1`) {
		t.Errorf("metrics lack HEAD /healthz:\n%s", scrape)
	}
}
