// Command devices measures the device API at fleet scale: it seeds one fleet
// with 100,000 devices and, in the same run, compares pages of 100 devices
// filtered by a tag through the HTTP API with the same SQL (the DeviceList
// query the API runs) run bare through pgx, the two taking turns, then
// measures target-state requests per second for a device with 50 variables,
// with and without If-None-Match. Everything it starts listens on free
// loopback ports.
//
//	go run ./bench/devices [-devices 100000] [-requests 2000] [-duration 5s] [-concurrency 4] [-cpuprofile FILE]
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/bench/internal/serverstats"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

const publicURL = "http://flock.bench"

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	devices := flag.Int("devices", 100000, "devices to seed in the fleet")
	requests := flag.Int("requests", 2000, "list pages to fetch on each side")
	duration := flag.Duration("duration", 5*time.Second, "how long to run each target-state measurement (0 skips it)")
	concurrency := flag.Int("concurrency", 4, "concurrent target-state clients")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (server included) here")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fail("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail("%v", err)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*admin, *devices, *requests, *duration, *concurrency); err != nil {
		pprof.StopCPUProfile()
		fail("%v", err)
	}
}

type bench struct {
	client *http.Client
	base   string
	token  string
}

func run(adminURL string, devices, requests int, duration time.Duration, concurrency int) error {
	ctx := context.Background()
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()

	// The embedded registry (the release's images) keeps its files here.
	dataDir, err := os.MkdirTemp("", "flock-bench-devices-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)

	// Info level, as in production: the access log is part of the cost.
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--dev", "--public-url=" + publicURL, "--data-dir=" + dataDir},
		func(line string) {
			if strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, `"level":"WARN"`) {
				fmt.Fprintln(os.Stderr, line)
			}
		})
	if err != nil {
		return err
	}
	defer proc.Stop(30 * time.Second) //nolint:errcheck
	token, err := benchapp.Token(ctx, pool, publicURL)
	if err != nil {
		return err
	}
	b := &bench{base: proc.URL, token: token, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	orgOut := b.post("/v1/orgs", token, map[string]any{"name": "bench"})
	org := orgOut["id"].(string)
	fleetOut := b.post("/v1/orgs/"+org+"/fleets", token, map[string]any{"name": "fleet", "architecture": "amd64"})
	fleet := fleetOut["id"].(string)
	repos := orgOut["slug"].(string) + "/" + fleetOut["slug"].(string) // where the fleet's images go

	fmt.Printf("seeding %d devices...\n", devices)
	start := time.Now()
	if err := seed(ctx, pool, org, fleet, devices); err != nil {
		return err
	}
	fmt.Printf("seeded in %s\n\n", time.Since(start).Round(time.Millisecond))

	if err := listBench(ctx, b, pool, org, requests); err != nil {
		return err
	}
	if duration <= 0 {
		return nil
	}
	return stateBench(ctx, b, fleet, repos, duration, concurrency)
}

// seed inserts the devices in one statement: registering 100,000 devices
// through the API would measure registration, not listing. Tags spread them
// over ten zones (10% each) and a hundred batches.
func seed(ctx context.Context, pool *pgxpool.Pool, org, fleet string, n int) error {
	_, err := pool.Exec(ctx, `
		INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, tags, created_at)
		SELECT gen_random_uuid(), $1, $2, 'device-' || i, 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'),
		       jsonb_build_object('zone', 'zone-' || (i % 10), 'batch', 'b' || (i % 100)),
		       now() - make_interval(secs => $3 - i)
		FROM generate_series(1, $3) AS i`, org, fleet, n)
	if err != nil {
		return fmt.Errorf("seed devices: %w", err)
	}
	_, err = pool.Exec(ctx, "ANALYZE devices")
	return err
}

// listBlock is how many pages one side fetches before the other takes its
// turn.
const listBlock = 50

// listBench walks the pages of zone-3 (10,000 devices, 100 pages) over and
// over, through HTTP and bare, the same number of pages each. The sides take
// turns in blocks of listBlock pages: this machine's cores are shared and
// its speed drifts within seconds, and a drift must slow both sides alike
// rather than whichever ran second. Beside the rates it reports the CPU each
// side used per page, in this process (client, server and pgx alike) and in
// the PostgreSQL backends of the benchmark database: CPU per page moves far
// less than rates do when others load the machine.
func listBench(ctx context.Context, b *bench, pool *pgxpool.Pool, org string, requests int) error {
	orgID := uuid.MustParse(org)
	key, value := "zone", "zone-3"
	q := db.New(pool)
	var bareCursor *db.DeviceListRow
	bare := func() (int, error) {
		p := db.DeviceListParams{OrgID: orgID, TagKey: &key, TagValue: &value, MaxRows: 101}
		if bareCursor != nil {
			p.AfterTime, p.AfterID = &bareCursor.CreatedAt, uuid.NullUUID{UUID: bareCursor.ID, Valid: true}
		}
		rows, err := q.DeviceList(ctx, p)
		if err != nil || len(rows) <= 100 {
			bareCursor = nil
			return len(rows), err
		}
		bareCursor = &rows[99]
		return 100, nil
	}
	httpCursor := ""
	httpPage := func() (int, error) {
		path := "/v1/orgs/" + org + "/devices?tag_key=zone&tag_value=zone-3&limit=100"
		if httpCursor != "" {
			path += "&cursor=" + url.QueryEscape(httpCursor)
		}
		// Like a load generator, read the page without decoding it: the
		// client's JSON work is not the API's cost. Each device carries one
		// "org_id"; the cursor is the last field.
		body, err := b.getBody(path, b.token)
		if err != nil {
			return 0, err
		}
		httpCursor = ""
		if i := bytes.LastIndex(body, []byte(`"next_cursor":"`)); i >= 0 {
			rest := body[i+len(`"next_cursor":"`):]
			httpCursor = string(rest[:bytes.IndexByte(rest, '"')])
		}
		return bytes.Count(body, []byte(`"org_id"`)), nil
	}

	// Warm both paths (caches, plans, connections).
	for range 20 {
		if _, err := httpPage(); err != nil {
			return err
		}
		if _, err := bare(); err != nil {
			return err
		}
	}
	httpCursor, bareCursor = "", nil

	meter := &cpuMeter{pool: pool}
	api, raw := &listSide{page: httpPage}, &listSide{page: bare}
	load := "unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil && len(strings.Fields(string(b))) >= 3 {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	for block := 0; block*listBlock < requests; block++ {
		n := min(listBlock, requests-block*listBlock)
		first, second := api, raw
		if block%2 == 1 {
			first, second = raw, api
		}
		if err := first.run(ctx, meter, n); err != nil {
			return err
		}
		if err := second.run(ctx, meter, n); err != nil {
			return err
		}
	}

	httpRate, bareRate := api.rate(), raw.rate()
	fmt.Printf("device list, tag zone=zone-3 (10%% of the fleet), pages of 100, %d pages each in turns of %d, one client:\n", requests, listBlock)
	fmt.Printf("  (%d CPUs; load average at the start %s)\n", runtime.NumCPU(), load)
	fmt.Printf("  HTTP API : %7.0f pages/s (%d devices)   %s\n", httpRate, api.items, api.summary())
	fmt.Printf("  bare SQL : %7.0f pages/s (%d devices)   %s\n", bareRate, raw.items, raw.summary())
	fmt.Printf("  ratio    : %.2f (goal >= 0.6); CPU per page, bare / API: %.2f\n", httpRate/bareRate,
		raw.cpuPerPage().Seconds()/api.cpuPerPage().Seconds())
	if mean, err := b.serverMean("device:list"); err == nil {
		fmt.Printf("  server-side mean of device:list (from /metrics): %s\n", mean.Round(time.Microsecond))
	}
	fmt.Println()
	return nil
}

// listSide is one side of the list comparison and what it measured.
type listSide struct {
	page      func() (int, error) // the next page; after the last, the first again
	items     int
	wall      time.Duration
	self, pg  time.Duration // CPU used in this process and in PostgreSQL
	latencies []time.Duration
}

// run fetches n pages.
func (s *listSide) run(ctx context.Context, meter *cpuMeter, n int) error {
	if err := meter.refresh(ctx); err != nil {
		return err
	}
	self0, pg0 := meter.read()
	start := time.Now()
	for range n {
		t0 := time.Now()
		items, err := s.page()
		if err != nil {
			return err
		}
		s.latencies = append(s.latencies, time.Since(t0))
		s.items += items
	}
	s.wall += time.Since(start)
	self1, pg1 := meter.read()
	s.self += self1 - self0
	for pid, t := range pg1 {
		if t0, ok := pg0[pid]; ok {
			s.pg += t - t0
		}
	}
	return nil
}

func (s *listSide) rate() float64 { return float64(len(s.latencies)) / s.wall.Seconds() }

func (s *listSide) cpuPerPage() time.Duration {
	return (s.self + s.pg) / time.Duration(len(s.latencies))
}

func (s *listSide) summary() string {
	lat := slices.Clone(s.latencies)
	slices.Sort(lat)
	n := time.Duration(len(lat))
	return fmt.Sprintf("p50 %s  p99 %s   CPU per page: %s here, %s PostgreSQL",
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond),
		(s.self / n).Round(time.Microsecond), (s.pg / n).Round(time.Microsecond))
}

// cpuMeter reads the CPU time used by this process and by the PostgreSQL
// backends connected to the benchmark database: the server's and the bare
// side's, nobody else's (Linux /proc; PostgreSQL counts 0 elsewhere).
type cpuMeter struct {
	pool     *pgxpool.Pool
	backends []string // their /proc/PID/schedstat
}

// refresh lists the backends again, between measurements: a pool may have
// opened a connection since.
func (m *cpuMeter) refresh(ctx context.Context) error {
	rows, err := m.pool.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		return fmt.Errorf("list backends: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("list backends: %w", err)
	}
	m.backends = m.backends[:0]
	for _, pid := range pids {
		m.backends = append(m.backends, fmt.Sprintf("/proc/%d/schedstat", pid))
	}
	return nil
}

// read returns the CPU time of this process and of each backend.
func (m *cpuMeter) read() (self time.Duration, backends map[string]time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	backends = make(map[string]time.Duration, len(m.backends))
	for _, f := range m.backends {
		// The first field is the time on a CPU in nanoseconds, exact
		// where /proc/PID/stat counts 10 ms ticks.
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the backend ended
		}
		if i := bytes.IndexByte(b, ' '); i > 0 {
			ns, _ := strconv.ParseInt(string(b[:i]), 10, 64)
			backends[f] = time.Duration(ns)
		}
	}
	return self, backends
}

// stateBench registers a device the way a device does, gives it a release
// (of three images pushed to repos/<service> first) and 50 variables (25
// fleet, 25 device), and hammers its target state.
func stateBench(ctx context.Context, b *bench, fleet, repos string, duration time.Duration, concurrency int) error {
	pk := b.post("/v1/fleets/"+fleet+"/provisioning-keys", b.token, map[string]any{"name": "bench"})["secret"].(string)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := uuid.New()
	b.post("/device/v1/register", "", map[string]any{"provisioning_key": pk, "uuid": id.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(pub), "name": "bench-device", "device_type": "generic-amd64"})
	services := []any{}
	for _, name := range []string{"app", "proxy", "metrics"} {
		img, err := benchapp.PushImage(ctx, b.base, publicURL, b.token, repos+"/"+name, "amd64")
		if err != nil {
			return err
		}
		services = append(services, map[string]any{"name": name, "images": map[string]any{
			"amd64": map[string]any{"image": img.Ref + ":1", "digest": img.Digest}}})
	}
	b.post("/v1/fleets/"+fleet+"/releases", b.token, map[string]any{"status": "final", "services": services})
	for i := range 25 {
		b.post("/v1/fleets/"+fleet+"/variables", b.token, map[string]any{"name": fmt.Sprintf("FLEET_VAR_%d", i), "value": "value-of-fleet-variable"})
		b.post("/v1/devices/"+id.String()+"/variables", b.token, map[string]any{"name": fmt.Sprintf("DEVICE_VAR_%d", i), "value": "value-of-device-variable"})
	}
	assertion, err := devicetoken.SignAssertion(priv, id, app.TokenEndpoint(publicURL), time.Minute)
	if err != nil {
		return err
	}
	devToken := b.post("/device/v1/token", "", map[string]any{"assertion": assertion})["access_token"].(string)
	first, err := b.do("GET", "/device/v1/state", devToken, nil, nil)
	if err != nil || first.StatusCode != 200 {
		return fmt.Errorf("target state: %v %v", err, first)
	}
	etag := first.Header.Get("ETag")

	fmt.Printf("target state, 3 services, 50 variables, %d clients, %s each:\n", concurrency, duration)
	for _, withETag := range []bool{false, true} {
		want := 200
		hdr := http.Header{}
		if withETag {
			want = 304
			hdr.Set("If-None-Match", etag)
		}
		var n atomic.Int64
		var failed atomic.Value
		deadline := time.Now().Add(duration)
		var wg sync.WaitGroup
		for range concurrency {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					resp, err := b.do("GET", "/device/v1/state", devToken, nil, hdr)
					if err != nil || resp.StatusCode != want {
						failed.Store(fmt.Sprintf("%v %v", err, resp))
						return
					}
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if f := failed.Load(); f != nil {
			return fmt.Errorf("target state request failed: %v", f)
		}
		label := "without If-None-Match (200)"
		if withETag {
			label = "with If-None-Match   (304)"
		}
		fmt.Printf("  %s: %7.0f requests/s\n", label, float64(n.Load())/duration.Seconds())
	}
	return nil
}

// serverMean reads the server's own latency histogram for an operation.
func (b *bench) serverMean(op string) (time.Duration, error) {
	return serverstats.MeanLatency(b.client, b.base, op)
}

func (b *bench) do(method, path, token string, body any, hdr http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, b.base+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// getBody returns the body of a 200 response.
func (b *bench) getBody(path, token string) ([]byte, error) {
	req, _ := http.NewRequest("GET", b.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %d %v %s", path, resp.StatusCode, err, body)
	}
	return body, nil
}

func (b *bench) post(path, token string, body any) map[string]any {
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", b.base+path, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		fail("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		fail("POST %s: %d %v", path, resp.StatusCode, out)
	}
	return out
}

// fail writes to stderr itself: the in-process server made the standard
// logger write into its own log.
func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
