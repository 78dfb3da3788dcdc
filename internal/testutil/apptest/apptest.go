// Package apptest runs the real flock-api command in the test process, on a
// free port and its own database, exactly as main would: same flags, same
// module graph, same middleware. Tests talk to it over HTTP.
package apptest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devoidc"
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
		p, err := devoidc.New(context.Background(), pool, app.DevIssuer(PublicURL), app.DevAudience)
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
	dbURL := pgtest.URL(t)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "http server listening" {
				addr <- rec.Addr
			}
			if testing.Verbose() {
				t.Log(sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	full := append([]string{"--http-addr=127.0.0.1:0", "--database-url=" + dbURL, "--log-format=json",
		"--shutdown-grace=5s", "--dev", "--public-url=" + PublicURL}, args...)
	exit := make(chan int, 1)
	go func() {
		exit <- app.Main(ctx, full, io.Discard, pw, func(string) string { return "" })
		pw.Close()
	}()
	srv := &Server{DatabaseURL: dbURL}
	t.Cleanup(func() {
		srv.mu.Lock()
		if srv.pool != nil {
			srv.pool.Close()
		}
		srv.mu.Unlock()
		cancel()
		select {
		case code := <-exit:
			if code != 0 {
				t.Errorf("flock-api exited %d, want 0 after a clean stop", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("flock-api did not stop within 15s")
		}
	})

	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case code := <-exit:
		t.Fatalf("flock-api exited %d before listening", code)
	case <-time.After(30 * time.Second):
		t.Fatal("flock-api did not start listening within 30s")
	}
	if err := WaitReady(base, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	srv.URL = base
	return srv
}

// WaitReady polls /readyz until it answers 200.
func WaitReady(base string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(string(b))
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &notReadyError{last}
}

type notReadyError struct{ last string }

func (e *notReadyError) Error() string { return "flock-api not ready: " + e.last }
