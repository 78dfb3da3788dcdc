// Command commands measures device commands end to end: flock-api runs
// with --target=all (API, commands worker, embedded broker, ingester and
// relay, kfake, PostgreSQL) in this process, and the simulator's devices
// connect to it and carry the commands out. For each command type it sends
// one command to every device at once and reads, from the API, each
// command's created_at (the API's transaction), delivered_at and
// completed_at (when the ingester received the device's answers), so the
// figures are server times and polling adds nothing to them:
//
//   - created to delivered: commit, the worker's publish to Kafka, the
//     relay's MQTT publish, the device's received answer through the
//     ingester;
//   - created to completed: the same and the work: identify and
//     restart_service answer at once (restart_service after publishing two
//     states), reboot after dropping its connection and connecting again.
//
// go run ./bench/commands [-devices 200] [-rounds 2]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

// publicURL names the deployment; nothing listens there. Its host is where
// registrations tell devices the broker is.
const publicURL = "http://127.0.0.1:9"

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	devices := flag.Int("devices", 200, "simulated devices, each sent one command of each type per round")
	rounds := flag.Int("rounds", 2, "rounds over the command types")
	flag.Parse()
	if err := run(*admin, *devices, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench/commands:", err)
		os.Exit(1)
	}
}

func run(adminURL string, n, rounds int) (err error) {
	defer func() {
		// must's failures end the run here, after the deferred clean-ups.
		if r := recover(); r != nil {
			se, ok := r.(setupError)
			if !ok {
				panic(r)
			}
			err = se.err
		}
	}()
	ctx := context.Background()
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()
	// The embedded registry (the release's image) keeps its files here.
	dataDir, err := os.MkdirTemp("", "flock-bench-commands-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	var errorLines atomic.Int64
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--dev", "--target=all", "--public-url=" + publicURL, "--data-dir=" + dataDir},
		func(line string) {
			if strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, `"level":"WARN"`) {
				errorLines.Add(1)
				fmt.Fprintln(os.Stderr, line)
			}
		})
	if err != nil {
		return err
	}
	defer proc.Stop(30 * time.Second) //nolint:errcheck
	errorLines.Store(0)               // launch's polls of /readyz before it was ready
	token, err := benchapp.Token(ctx, pool, publicURL)
	if err != nil {
		return err
	}
	b := &client{base: proc.URL, token: token, http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	orgOut := b.must("POST", "/v1/orgs", map[string]any{"name": "bench"})
	org := orgOut["id"].(string)
	fleetOut := b.must("POST", "/v1/orgs/"+org+"/fleets", map[string]any{"name": "fleet", "architecture": "amd64"})
	fleet := fleetOut["id"].(string)
	// The release's image, pushed through the registry-proxy as a developer would.
	img, err := benchapp.PushImage(ctx, proc.URL, publicURL, token, orgOut["slug"].(string)+"/"+fleetOut["slug"].(string)+"/app", "amd64")
	if err != nil {
		return err
	}
	key := b.must("POST", "/v1/fleets/"+fleet+"/provisioning-keys", map[string]any{"name": "sim"})["secret"].(string)

	// The simulator's devices, unpaced (no periodic traffic), so what is
	// measured is the platform, not the simulator's rate limit.
	var last atomic.Pointer[simulate.Summary]
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(simCtx, simulate.Config{API: proc.URL, ProvisioningKey: key, Devices: n,
			SummaryEvery: 100 * time.Millisecond, Out: io.Discard, Log: slog.New(slog.DiscardHandler),
			OnSummary: func(s simulate.Summary) { last.Store(&s) }})
		simDone <- err
	}()
	defer func() { stopSim(); <-simDone }()
	wait := func(what string, cond func(simulate.Summary) bool) error {
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			if s := last.Load(); s != nil && cond(*s) {
				return nil
			}
			select {
			case err := <-simDone:
				return fmt.Errorf("the simulator ended waiting for %s: %v", what, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		return fmt.Errorf("timed out waiting for %s", what)
	}
	if err := wait("the devices to connect", func(s simulate.Summary) bool { return s.Connected == int64(n) }); err != nil {
		return err
	}
	b.must("POST", "/v1/fleets/"+fleet+"/releases", map[string]any{"version": "1.0", "status": "final",
		"services": []any{map[string]any{"name": "app", "images": map[string]any{"amd64": map[string]any{
			"image": img.Ref + ":1.0", "digest": img.Digest}}}}})
	if err := wait("the devices to run the release", func(s simulate.Summary) bool { return s.UpdatesDone == int64(n) }); err != nil {
		return err
	}
	var ids []string
	for _, d := range b.must("GET", fmt.Sprintf("/v1/orgs/%s/devices?limit=%d", org, min(n, 500)), nil)["items"].([]any) {
		ids = append(ids, d.(map[string]any)["id"].(string))
	}
	if len(ids) < n {
		return fmt.Errorf("listed %d devices of %d (list pages above 500 are not read)", len(ids), n)
	}

	fmt.Printf("%d devices, --target=all in one process, %d CPUs\n", n, runtime.NumCPU())
	fmt.Printf("%-16s %8s %28s %28s\n", "", "", "created -> delivered (ms)", "created -> completed (ms)")
	fmt.Printf("%-16s %8s %9s %9s %9s %9s %9s %9s\n", "type", "POSTs", "p50", "p99", "max", "p50", "p99", "max")
	for range rounds {
		for _, typ := range []string{"identify", "restart_service", "reboot"} {
			if err := round(b, ids, typ); err != nil {
				return err
			}
		}
	}
	// The simulator's summary lags its devices by up to an interval.
	if err := wait("the simulator to count every outcome", func(s simulate.Summary) bool {
		return s.CommandsSucceeded+s.CommandsFailed == int64(rounds*3*n)
	}); err != nil {
		return err
	}
	if s := last.Load(); s != nil {
		fmt.Printf("\nsimulator: commands received %d (%d beyond one each: sent again on a reboot's reconnect), succeeded %d, failed %d\n",
			s.CommandsReceived, s.CommandsReceived-int64(rounds*3*n), s.CommandsSucceeded, s.CommandsFailed)
	}
	fmt.Printf("server log lines at WARN or ERROR: %d\n", errorLines.Load())
	return nil
}

// round sends one command of typ to every device at once and waits until
// all are finished.
func round(b *client, devices []string, typ string) error {
	body := map[string]any{"type": typ}
	if typ == "restart_service" {
		body["service"] = "app"
	}
	cmds := make([]string, len(devices))
	start := time.Now()
	var g errgroup.Group
	g.SetLimit(16)
	for i, d := range devices {
		g.Go(func() error {
			out, err := b.do("POST", "/v1/devices/"+d+"/commands", body, http.StatusCreated)
			if err == nil {
				cmds[i] = out["id"].(string)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	posts := time.Since(start)
	var mu sync.Mutex
	var delivered, completed []float64
	failed := 0
	pending := slices.Clone(cmds)
	deadline := time.Now().Add(2 * time.Minute)
	for len(pending) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d commands unfinished after 2 minutes", typ, len(pending))
		}
		var still []string
		var g errgroup.Group
		g.SetLimit(16)
		for _, id := range pending {
			g.Go(func() error {
				c, err := b.do("GET", "/v1/commands/"+id, nil, http.StatusOK)
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				switch c["status"] {
				case "succeeded", "failed":
					if c["status"] == "failed" {
						failed++
					}
					created := at(c["created_at"])
					delivered = append(delivered, ms(at(c["delivered_at"]).Sub(created)))
					completed = append(completed, ms(at(c["completed_at"]).Sub(created)))
				default:
					still = append(still, id)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		pending = still
		if len(pending) > 0 {
			time.Sleep(100 * time.Millisecond) // polling the API; the figures are its timestamps
		}
	}
	if failed > 0 {
		return fmt.Errorf("%s: %d of %d commands failed", typ, failed, len(cmds))
	}
	slices.Sort(delivered)
	slices.Sort(completed)
	fmt.Printf("%-16s %6dms %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", typ, posts.Milliseconds(),
		quantile(delivered, .5), quantile(delivered, .99), delivered[len(delivered)-1],
		quantile(completed, .5), quantile(completed, .99), completed[len(completed)-1])
	return nil
}

func at(v any) time.Time {
	s, _ := v.(string)
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func quantile(sorted []float64, q float64) float64 {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// client calls the API as a user.
type client struct {
	base, token string
	http        *http.Client
}

func (c *client) do(method, path string, body any, want int) (map[string]any, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s = %d, want %d: %s", method, path, resp.StatusCode, want, raw)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return out, nil
}

// setupError carries a failure of must to run.
type setupError struct{ err error }

// must is do for the set-up, where any failure ends the run.
func (c *client) must(method, path string, body any) map[string]any {
	want := http.StatusOK
	if method == "POST" {
		want = http.StatusCreated
	}
	out, err := c.do(method, path, body, want)
	if err != nil {
		panic(setupError{err})
	}
	return out
}
