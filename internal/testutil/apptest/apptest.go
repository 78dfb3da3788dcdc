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
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// Server is a running flock-api.
type Server struct {
	URL         string
	DatabaseURL string
}

// Start runs flock-api with the given extra arguments (for example
// --target=api) against a fresh migrated database, waits until /readyz
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
		"--shutdown-grace=5s"}, args...)
	exit := make(chan int, 1)
	go func() {
		exit <- app.Main(ctx, full, io.Discard, pw, func(string) string { return "" })
		pw.Close()
	}()
	t.Cleanup(func() {
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
	return &Server{URL: base, DatabaseURL: dbURL}
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
