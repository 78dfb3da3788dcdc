// Package registrytest starts the registries tests run against: Debian's
// docker-registry (Distribution, the core Harbor wraps) as a child process
// with its own config and storage, and the embedded registry.
package registrytest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/registry"
)

// DistributionBinary is Debian's Distribution registry (package
// docker-registry; scripts/services.sh registry installs it).
const DistributionBinary = "/usr/bin/docker-registry"

// Robot's credentials on the Distribution registry (htpasswd).
const (
	RobotUser     = "flock-robot"
	RobotPassword = "robot-secret"
	// robotHash is bcrypt(RobotPassword), cost 4.
	robotHash = "$2a$04$ggnRPlYEFPME6cn0/hrFw.0F41b/zXyIvKpkt0yXp8sUsIEB8YJSu"
)

// Upstream names a registry to run a test against.
type Upstream struct {
	Name string
	// Open opens a Registry on a fresh upstream that lives until the
	// test ends.
	Open func(t testing.TB) *registry.Registry
}

// Upstreams are the embedded registry and Distribution.
func Upstreams() []Upstream {
	return []Upstream{
		{Name: "embedded", Open: Embedded},
		{Name: "distribution", Open: func(t testing.TB) *registry.Registry {
			t.Helper()
			return Open(t, Distribution(t))
		}},
	}
}

// Embedded opens the embedded registry on a fresh directory.
func Embedded(t testing.TB) *registry.Registry {
	t.Helper()
	return EmbeddedAt(t, t.TempDir())
}

// EmbeddedAt opens the embedded registry on dir, closed when the test ends.
func EmbeddedAt(t testing.TB, dir string) *registry.Registry {
	t.Helper()
	r, err := registry.Open(context.Background(), registry.Config{DataDir: dir, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Open reaches a Distribution registry at url as the robot.
func Open(t testing.TB, url string) *registry.Registry {
	t.Helper()
	r, err := registry.Open(context.Background(), registry.Config{URL: url, Username: RobotUser, Password: RobotPassword, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Distribution starts docker-registry on a free loopback port with
// filesystem storage in a temporary directory and htpasswd auth for the
// robot, and returns its URL. The test is skipped only when the binary is
// missing.
func Distribution(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(DistributionBinary); err != nil {
		t.Skipf("%s is missing (scripts/services.sh registry installs Debian's docker-registry): %v", DistributionBinary, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(RobotUser+":"+robotHash+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 3 { // the free port may be taken between probe and bind
		addr := freeAddr(t)
		config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: flock-test-secret
auth:
  htpasswd:
    realm: flock-test
    path: %s
`, filepath.Join(dir, "storage"), addr, filepath.Join(dir, "htpasswd"))
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		out := &lockedBuffer{}
		cmd := exec.Command(DistributionBinary, "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		url := "http://" + addr
		if err := waitUp(url, exited, 10*time.Second); err != nil {
			stop()
			lastErr = fmt.Errorf("%w\n%s", err, out.String())
			continue
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("docker-registry output:\n%s", out.String())
			}
		})
		return url
	}
	t.Fatalf("start docker-registry: %v", lastErr)
	return ""
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitUp polls /v2/ until the registry answers (401: it wants the robot).
func waitUp(url string, exited <-chan struct{}, within time.Duration) error {
	deadline := time.Now().Add(within)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(url + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("docker-registry exited")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("docker-registry did not answer on %s within %s (last error %v)", url, within, err)
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
