// Package launch runs the real flock-api command inside this process, on a
// free port, and finds out where it listens from its own start-up log, for
// tests and benchmark programs alike.
package launch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/flock-io/flock-api/internal/app"
)

// Process is a running flock-api.
type Process struct {
	URL    string
	cancel context.CancelFunc
	exit   chan int
}

// Start runs flock-api with args plus --http-addr=127.0.0.1:0,
// --mqtt-listen=127.0.0.1:0 (the default MQTT port is often Mosquitto's, and
// a process under test must never take a fixed port), the same for the
// tunnel's UDP port and the proxy, and JSON logs,
// hands every log line to logLine (nil drops them), and returns once /readyz
// answers 200.
func Start(args []string, logLine func(string)) (*Process, error) {
	// A kernel pipe, not io.Pipe: its buffer lets the server write its log
	// without waiting for this reader, as it would writing to stderr, so the
	// harness does not slow the requests it measures.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("log pipe: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			if !found && bytes.Contains(sc.Bytes(), []byte(`"http server listening"`)) {
				var rec struct {
					Addr string `json:"addr"`
				}
				if json.Unmarshal(sc.Bytes(), &rec) == nil {
					found = true
					addr <- rec.Addr
				}
			}
			if logLine != nil {
				logLine(sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	full := append([]string{"--http-addr=127.0.0.1:0", "--mqtt-listen=127.0.0.1:0", "--tunnel-listen=127.0.0.1:0",
		"--proxy-addr=127.0.0.1:0", "--log-format=json"}, args...)
	p := &Process{cancel: cancel, exit: make(chan int, 1)}
	go func() {
		p.exit <- app.Main(ctx, full, io.Discard, pw, func(string) string { return "" })
		pw.Close()
	}()
	select {
	case a := <-addr:
		p.URL = "http://" + a
	case code := <-p.exit:
		cancel()
		return nil, fmt.Errorf("flock-api exited %d before listening", code)
	case <-time.After(30 * time.Second):
		cancel()
		return nil, errors.New("flock-api did not start listening within 30s")
	}
	if err := WaitReady(p.URL, 10*time.Second); err != nil {
		_, _ = p.Stop(15 * time.Second)
		return nil, err
	}
	return p, nil
}

// Stop cancels the process as SIGTERM would and returns its exit status.
func (p *Process) Stop(within time.Duration) (int, error) {
	p.cancel()
	select {
	case code := <-p.exit:
		return code, nil
	case <-time.After(within):
		return -1, fmt.Errorf("flock-api did not stop within %s", within)
	}
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
	return fmt.Errorf("flock-api not ready: %s", last)
}
