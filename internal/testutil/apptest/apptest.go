// Package apptest runs the real flock-api command in the test process, on a
// free port and its own database, exactly as main would: same flags, same
// module graph, same middleware. Tests talk to it over HTTP.
package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/testutil/launch"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// PublicURL is the public URL the test server is started with. Nothing
// listens there: the server verifies dev tokens in process, which is what
// this proves.
const PublicURL = "http://flock.test:8080"

// Server is a running flock-api.
type Server struct {
	URL         string
	DatabaseURL string
	// PublicURL is the URL the server was started with: PublicURL, or
	// for StartReachable its own address.
	PublicURL string

	mu   sync.Mutex
	pool *pgxpool.Pool
	prov *devoidc.Provider
}

// Token mints a dev-provider token for email (the server must run in dev
// mode, which Start does unless an --oidc-issuer is given).
func (s *Server) Token(t testing.TB, email string) string {
	t.Helper()
	p := s.provider(t)
	tok, err := p.Mint(context.Background(), email, "", time.Hour)
	if err != nil {
		t.Fatalf("mint token for %s: %v", email, err)
	}
	return tok
}

// Provider is the dev OIDC provider of the server's database, for tests that
// rotate keys or mint unusual tokens.
func (s *Server) Provider(t testing.TB) *devoidc.Provider { return s.provider(t) }

// Pool is a pool to the server's database.
func (s *Server) Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool == nil {
		pool, err := pgxpool.New(context.Background(), s.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		s.pool = pool
	}
	return s.pool
}

func (s *Server) provider(t testing.TB) *devoidc.Provider {
	t.Helper()
	pool := s.Pool(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.prov == nil {
		pub := s.PublicURL
		if pub == "" {
			pub = PublicURL // a Server a test made itself
		}
		p, err := devoidc.New(context.Background(), pool, app.DevIssuer(pub), app.DevAudience)
		if err != nil {
			t.Fatal(err)
		}
		s.prov = p
	}
	return s.prov
}

// Start runs flock-api in dev mode with the given extra arguments (for
// example --target=api) against a fresh migrated database, waits until /readyz
// answers 200, and stops it at the end of the test, failing the test unless it
// exits 0.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return start(t, PublicURL, args)
}

// StartReachable is Start with the public URL the server's own address,
// for clients that follow the URLs the server hands out (buildah follows
// the registry's token realm), and the registry host that address.
func StartReachable(t testing.TB, args ...string) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return start(t, "http://"+addr, append([]string{"--http-addr=" + addr}, args...))
}

func start(t testing.TB, publicURL string, args []string) *Server {
	t.Helper()
	dbURL := pgtest.URL(t)
	var logLine func(string)
	if testing.Verbose() {
		logLine = func(l string) { t.Log(l) }
	}
	full := append([]string{"--database-url=" + dbURL, "--shutdown-grace=5s", "--dev", "--public-url=" + publicURL, "--mqtt-listen=127.0.0.1:0",
		"--data-dir=" + t.TempDir()}, args...)
	p, err := launch.Start(full, logLine)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{URL: p.URL, DatabaseURL: dbURL, PublicURL: publicURL}
	t.Cleanup(func() {
		srv.mu.Lock()
		if srv.pool != nil {
			srv.pool.Close()
		}
		srv.mu.Unlock()
		code, err := p.Stop(15 * time.Second)
		if err != nil || code != 0 {
			t.Errorf("flock-api stopped with %d (%v), want 0 after a clean stop", code, err)
		}
	})
	return srv
}

// WaitReady polls /readyz until it answers 200.
func WaitReady(base string, within time.Duration) error { return launch.WaitReady(base, within) }

// Do sends one JSON request as a customer's script would, with token as a
// bearer token when not empty, and returns the status, the response headers
// and the decoded body (nil when empty). A failed request, or a body that
// is not a JSON object, fails the test; on other goroutines use Send.
func (s *Server) Do(t testing.TB, method, path, token string, body any) (int, http.Header, map[string]any) {
	t.Helper()
	status, hdr, out, err := s.Send(method, path, token, nil, body)
	if err != nil {
		t.Fatal(err)
	}
	return status, hdr, out
}

// Raw is a request body sent as it is, with its content type.
type Raw struct {
	ContentType string
	Data        []byte
}

// Send is Do that returns what goes wrong instead of failing a test, so any
// goroutine may call it; header adds request headers.
func (s *Server) Send(method, path, token string, header http.Header, body any) (int, http.Header, map[string]any, error) {
	var rd io.Reader
	raw, isRaw := body.(Raw)
	if isRaw {
		rd = bytes.NewReader(raw.Data)
	} else if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	switch {
	case isRaw:
		req.Header.Set("Content-Type", raw.ContentType)
	case body != nil:
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	var out map[string]any
	if ct := resp.Header.Get("Content-Type"); len(got) > 0 && strings.HasPrefix(ct, "text/plain") && resp.StatusCode/100 == 2 {
		// A text answer (a build log): its text under "text".
		return resp.StatusCode, resp.Header, map[string]any{"text": string(got)}, nil
	}
	if len(got) > 0 {
		if err := json.Unmarshal(got, &out); err != nil {
			return 0, nil, nil, fmt.Errorf("%s %s: body is not a JSON object: %w: %s", method, path, err, got)
		}
	}
	return resp.StatusCode, resp.Header, out, nil
}
