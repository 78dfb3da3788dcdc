// Package e2e builds the flock-api binary and drives it as an operator and a
// customer would: migrate, start --target=all, call it through the generated
// Go client and the TypeScript SDK, then stop it with SIGTERM.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// build compiles the binary once per test run into a shared temp dir.
func build(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flock-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "flock-api")
		// Built as make builds it, so the version and commit it reports
		// are the Makefile's.
		cmd := exec.Command("make", "-s", "build", "BIN="+binPath)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// logLines collects the process's stderr, one JSON record a line.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) add(s string) { l.mu.Lock(); l.lines = append(l.lines, s); l.mu.Unlock() }
func (l *logLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func TestBinaryEndToEnd(t *testing.T) {
	bin := build(t)
	dbURL := pgtest.EmptyURL(t)

	// An operator migrates first; the server refuses a database that is behind.
	out, err := exec.Command(bin, "migrate", "up", "--database-url", dbURL).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "applied") {
		t.Fatalf("migrate up: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "migrate", "status", "--database-url", dbURL).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "applied") {
		t.Fatalf("migrate status: %v\n%s", err, out)
	}

	// Outside dev mode the server trusts an external OpenID Connect issuer:
	// here a zitadel/oidc provider in this test process, reached over HTTP.
	issuer, mint := externalIssuer(t, dbURL)
	cmd := exec.Command(bin, "--target=all", "--http-addr=127.0.0.1:0", "--mqtt-listen=127.0.0.1:0", "--shutdown-delay=3s",
		"--tunnel-listen=127.0.0.1:0", "--proxy-addr=127.0.0.1:0", "--device-url-domain=devices.e2e.test",
		"--data-dir="+t.TempDir())
	cmd.Env = append(os.Environ(), "FLOCK_DATABASE_URL="+dbURL, "FLOCK_DEV=", "FLOCK_LOG_FORMAT=",
		"FLOCK_OIDC_ISSUER="+issuer, "FLOCK_OIDC_AUDIENCE=flock-e2e", "FLOCK_EVENTS_ENCRYPTION_KEY=ZmxvY2stZTJlLWV2ZW50cy1rZXktMzItYnl0ZXMhISE=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	logs := &logLines{}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.add(sc.Text())
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "http server listening" {
				addr <- rec.Addr
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-exited:
		t.Fatalf("flock-api exited before listening: %v\n%s", err, strings.Join(logs.all(), "\n"))
	case <-time.After(60 * time.Second):
		t.Fatal("flock-api did not listen within 60s")
	}
	if err := apptest.WaitReady(base, 15*time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("go client", func(t *testing.T) {
		c, err := client.NewClientWithResponses(base)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.VersionGetWithResponse(context.Background())
		if err != nil || resp.JSON200 == nil {
			t.Fatalf("version: %v %d %s", err, resp.StatusCode(), resp.Body)
		}
		if got, want := resp.JSON200.Targets, []string{"api", "ingester", "scheduler", "registry-proxy", "builder", "delta", "tunnel", "proxy", "events-gateway"}; !slices.Equal(got, want) {
			t.Errorf("targets = %v, want every target that exists: %v", got, want)
		}
		head, err := exec.Command("git", "-C", repoRoot(t), "rev-parse", "--short=12", "HEAD").Output()
		if err != nil {
			t.Fatalf("git rev-parse: %v", err)
		}
		if c := resp.JSON200.Commit; !strings.HasPrefix(c, strings.TrimSpace(string(head))) {
			t.Errorf("commit = %q, want the checkout's HEAD %s", c, head)
		}

		token := mint("alice@example.com")
		authed, err := client.NewClientWithResponses(base, client.WithRequestEditorFn(func(_ context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+token)
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		org, err := authed.OrgCreateWithResponse(context.Background(), nil, client.OrgCreateJSONRequestBody{Name: "Acme"})
		if err != nil || org.JSON201 == nil || org.JSON201.Role != client.Owner {
			t.Fatalf("create org: %v %d %s", err, org.StatusCode(), org.Body)
		}
		me, err := authed.MeGetWithResponse(context.Background())
		if err != nil || me.JSON200 == nil || string(me.JSON200.User.Email) != "alice@example.com" ||
			len(me.JSON200.Memberships) != 1 || me.JSON200.Memberships[0].OrgId != org.JSON201.Id {
			t.Fatalf("me: %v %d %s", err, me.StatusCode(), me.Body)
		}
		anon, err := c.MeGetWithResponse(context.Background())
		if err != nil || anon.StatusCode() != http.StatusUnauthorized || anon.ApplicationproblemJSONDefault == nil {
			t.Fatalf("anonymous me: %v %d %s", err, anon.StatusCode(), anon.Body)
		}
	})

	t.Run("typescript sdk", func(t *testing.T) {
		sdk := filepath.Join(repoRoot(t), "sdk", "typescript")
		if _, err := os.Stat(filepath.Join(sdk, "dist", "index.js")); err != nil {
			if os.Getenv("FLOCK_SKIP_SDK_TEST") == "1" {
				t.Skip("FLOCK_SKIP_SDK_TEST=1")
			}
			t.Fatalf("the TypeScript SDK is not built (run make sdk, or set FLOCK_SKIP_SDK_TEST=1): %v", err)
		}
		node := exec.Command("node", "--test", "test/")
		node.Dir = sdk
		node.Env = append(os.Environ(), "FLOCK_API_URL="+base, "FLOCK_API_TOKEN="+mint("sdk@example.com"))
		out, err := node.CombinedOutput()
		if err != nil {
			t.Fatalf("node --test: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "# pass 6") || !strings.Contains(string(out), "# fail 0") {
			t.Fatalf("node tests did not all pass:\n%s", out)
		}
	})

	t.Run("metrics by operation", func(t *testing.T) {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `flock_http_requests_total{method="GET",operation="version:get",status="200"}`) {
			t.Fatalf("metrics lack version:get:\n%s", b)
		}
	})

	// SIGTERM: readiness turns 503 at once, then the process drains and exits 0.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The process keeps answering 503 for --shutdown-delay before it
	// drains; a refused connection means it stopped without saying so.
	testutil.Eventually(t, "/readyz to turn 503 after SIGTERM", func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			t.Fatalf("/readyz did not turn 503 before the server went away: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz = %d", resp.StatusCode)
		}
		return nil
	})
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, strings.Join(logs.all(), "\n"))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("flock-api did not exit within 30s of SIGTERM")
	}

	// Every log line is JSON; every request line carries its request id.
	requests := 0
	for _, line := range logs.all() {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		if rec["msg"] == "request" {
			requests++
			if id, _ := rec["request_id"].(string); id == "" {
				t.Errorf("request log line without request_id: %s", line)
			}
		}
	}
	if requests == 0 {
		t.Error("no request was logged")
	}
}

// externalIssuer serves a zitadel/oidc provider over HTTP from the test and
// returns its issuer URL and a function that mints its tokens.
func externalIssuer(t *testing.T, dbURL string) (string, func(email string) string) {
	t.Helper()
	mux := http.NewServeMux()
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	issuer := ts.URL + "/dev/oidc"
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	prov, err := devoidc.New(context.Background(), pool, issuer, "flock-e2e")
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/dev/oidc/", http.StripPrefix("/dev/oidc", prov.Handler()))
	return issuer, func(email string) string {
		tok, err := prov.Mint(context.Background(), email, "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
}

// TestDevToken: in dev mode, `flock-api dev-token` prints a token that the
// running dev server accepts.
func TestDevToken(t *testing.T) {
	bin := build(t)
	dbURL := pgtest.EmptyURL(t) // dev mode migrates it
	cmd := exec.Command(bin, "--dev", "--http-addr=127.0.0.1:0", "--mqtt-listen=127.0.0.1:0", "--log-format=json", "--database-url", dbURL,
		"--tunnel-listen=127.0.0.1:0", "--proxy-addr=127.0.0.1:0",
		"--data-dir="+t.TempDir())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "http server listening" {
				addr <- rec.Addr
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-time.After(60 * time.Second):
		t.Fatal("dev server did not listen")
	}
	if err := apptest.WaitReady(base, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "dev-token", "--email", "alice@example.com", "--database-url", dbURL).Output()
	if err != nil {
		t.Fatalf("dev-token: %v", err)
	}
	req, _ := http.NewRequest("GET", base+"/v1/me", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(out)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"email":"alice@example.com"`) {
		t.Fatalf("GET /v1/me with the dev token = %d %s", resp.StatusCode, body)
	}
	// The dev provider's discovery is served under the public URL's path.
	resp, err = http.Get(base + "/dev/oidc/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"issuer":"http://127.0.0.1:8080/dev/oidc"`) {
		t.Fatalf("discovery = %d %s", resp.StatusCode, body)
	}
}

func TestRefusesToStartWithoutAnIssuer(t *testing.T) {
	bin := build(t)
	out, err := exec.Command(bin, "--target=api", "--http-addr=127.0.0.1:0", "--data-dir="+t.TempDir()).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "FLOCK_OIDC_ISSUER") {
		t.Fatalf("exit = %v, want 2 naming FLOCK_OIDC_ISSUER\n%s", err, out)
	}
}

func TestRefusesADatabaseThatIsBehind(t *testing.T) {
	bin := build(t)
	cmd := exec.Command(bin, "--target=api", "--http-addr=127.0.0.1:0", "--data-dir="+t.TempDir(), "--database-url", pgtest.EmptyURL(t),
		"--oidc-issuer=https://id.example.com", "--oidc-audience=x")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "flock-api migrate up") {
		t.Fatalf("output does not tell the operator what to do:\n%s", out)
	}
}
