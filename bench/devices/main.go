// Command devices measures the device API at fleet scale: it seeds one fleet
// with 100,000 devices and, in the same run, compares pages of 100 devices
// filtered by a tag through the HTTP API with the same SQL run bare through
// pgx, then measures target-state requests per second for a device with 50
// variables, with and without If-None-Match.
//
//	go run ./bench/devices [-devices 100000] [-requests 2000] [-duration 5s] [-concurrency 4]
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devoidc"
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

	// Info level, as in production: the access log is part of the cost.
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--dev", "--public-url=" + publicURL},
		func(line string) {
			if strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, `"level":"WARN"`) {
				fmt.Fprintln(os.Stderr, line)
			}
		})
	if err != nil {
		return err
	}
	defer proc.Stop(30 * time.Second) //nolint:errcheck
	prov, err := devoidc.New(ctx, pool, app.DevIssuer(publicURL), app.DevAudience)
	if err != nil {
		return err
	}
	token, err := prov.Mint(ctx, "bench@example.com", "", 2*time.Hour)
	if err != nil {
		return err
	}
	b := &bench{base: proc.URL, token: token, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	org := b.post("/v1/orgs", token, map[string]any{"name": "bench"})["id"].(string)
	fleet := b.post("/v1/orgs/"+org+"/fleets", token, map[string]any{"name": "fleet", "architecture": "amd64"})["id"].(string)

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
	return stateBench(b, fleet, duration, concurrency)
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

// listBench walks the pages of zone-3 (10,000 devices, 100 pages) over and
// over, through HTTP and then bare, the same number of pages each.
func listBench(ctx context.Context, b *bench, pool *pgxpool.Pool, org string, requests int) error {
	orgID := uuid.MustParse(org)
	key, value := "zone", "zone-3"
	q := db.New(pool)
	bare := func(cursor *db.Device) (int, *db.Device, error) {
		p := db.DeviceListParams{OrgID: orgID, TagKey: &key, TagValue: &value, MaxRows: 101}
		if cursor != nil {
			p.AfterTime, p.AfterID = &cursor.CreatedAt, uuid.NullUUID{UUID: cursor.ID, Valid: true}
		}
		rows, err := q.DeviceList(ctx, p)
		if err != nil || len(rows) <= 100 {
			return len(rows), nil, err
		}
		return 100, &rows[99], nil
	}
	httpPage := func(cursor string) (int, string, error) {
		path := "/v1/orgs/" + org + "/devices?tag_key=zone&tag_value=zone-3&limit=100"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		// Like a load generator, read the page without decoding it: the
		// client's JSON work is not the API's cost. Each device carries one
		// "org_id"; the cursor is the last field.
		body, err := b.getBody(path, b.token)
		if err != nil {
			return 0, "", err
		}
		next := ""
		if i := bytes.LastIndex(body, []byte(`"next_cursor":"`)); i >= 0 {
			rest := body[i+len(`"next_cursor":"`):]
			next = string(rest[:bytes.IndexByte(rest, '"')])
		}
		return bytes.Count(body, []byte(`"org_id"`)), next, nil
	}

	// Warm both paths (caches, plans, connections).
	for range 20 {
		if _, _, err := httpPage(""); err != nil {
			return err
		}
		if _, _, err := bare(nil); err != nil {
			return err
		}
	}

	lat := make([]time.Duration, 0, requests)
	items, cursor := 0, ""
	start := time.Now()
	for range requests {
		t0 := time.Now()
		n, next, err := httpPage(cursor)
		if err != nil {
			return err
		}
		lat = append(lat, time.Since(t0))
		items += n
		cursor = next
	}
	httpTime := time.Since(start)

	var c *db.Device
	bareItems := 0
	start = time.Now()
	for range requests {
		n, next, err := bare(c)
		if err != nil {
			return err
		}
		bareItems += n
		c = next
	}
	bareTime := time.Since(start)

	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	httpRate := float64(requests) / httpTime.Seconds()
	bareRate := float64(requests) / bareTime.Seconds()
	fmt.Printf("device list, tag zone=zone-3 (10%% of the fleet), pages of 100, %d pages each, one client:\n", requests)
	fmt.Printf("  HTTP API : %7.0f pages/s (%d devices)   p50 %s  p99 %s\n", httpRate, items, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond))
	fmt.Printf("  bare SQL : %7.0f pages/s (%d devices)\n", bareRate, bareItems)
	fmt.Printf("  ratio    : %.2f (goal >= 0.6)\n", httpRate/bareRate)
	if mean, err := b.serverMean("device:list"); err == nil {
		fmt.Printf("  server-side mean of device:list (from /metrics): %s\n", mean.Round(time.Microsecond))
	}
	fmt.Println()
	return nil
}

// stateBench registers a device the way a device does, gives it a release
// and 50 variables (25 fleet, 25 device), and hammers its target state.
func stateBench(b *bench, fleet string, duration time.Duration, concurrency int) error {
	pk := b.post("/v1/fleets/"+fleet+"/provisioning-keys", b.token, map[string]any{"name": "bench"})["secret"].(string)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := uuid.New()
	b.post("/device/v1/register", "", map[string]any{"provisioning_key": pk, "uuid": id.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(pub), "name": "bench-device", "device_type": "generic-amd64"})
	digest := "sha256:" + hex.EncodeToString(make([]byte, 32))
	services := []any{}
	for _, name := range []string{"app", "proxy", "metrics"} {
		services = append(services, map[string]any{"name": name, "images": map[string]any{
			"amd64": map[string]any{"image": "registry.example.com/acme/" + name + ":1", "digest": digest}}})
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
	resp, err := b.client.Get(b.base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var sum, count float64
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, `operation="`+op+`"`) {
			continue
		}
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "flock_http_request_duration_seconds_sum"):
			fmt.Sscan(f[len(f)-1], &sum)
		case strings.HasPrefix(line, "flock_http_request_duration_seconds_count"):
			fmt.Sscan(f[len(f)-1], &count)
		}
	}
	if count == 0 {
		return 0, fmt.Errorf("no samples of %s", op)
	}
	return time.Duration(sum / count * float64(time.Second)), nil
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
