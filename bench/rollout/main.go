// Command rollout measures the rollout scheduler at fleet scale: it seeds a
// fleet of 100,000 devices, starts a rollout of a new release in five
// groups, and feeds every targeted device's report ("running the release,
// healthy") into Kafka as fast as the bus takes it, group after group. It
// prints the reports one scheduler replica applies per second, the same for
// a bare consumer that only reads and decodes the same records, the time
// from a group's last report to the next group's first device being
// targeted, the target-state requests per second the API serves to a device
// of the fleet meanwhile, and how long the group takes to give a killed
// replica's partitions to the survivor. Everything listens on loopback.
//
//	go run ./bench/rollout [-devices 100000] [-groups 5] [-clients 4]
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
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/testutil/launch"
	"github.com/flock-io/flock-api/workers/nudger"
	"github.com/flock-io/flock-api/workers/scheduler"
	"github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

const publicURL = "http://flock.bench"

var quiet = slog.New(slog.DiscardHandler)

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	devices := flag.Int("devices", 100000, "devices in the fleet")
	groups := flag.Int("groups", 5, "groups of the rollout (equal shares)")
	clients := flag.Int("clients", 4, "concurrent target-state clients while the rollout runs")
	replica := flag.String("replica", "", "internal: run a scheduler replica on this database URL (the killed one)")
	brokers := flag.String("brokers", "", "internal: the replica's Kafka brokers")
	flag.Parse()
	if *replica != "" {
		if err := runReplica(*replica, *brokers); err != nil {
			fail("replica: %v", err)
		}
		return
	}
	if err := run(*admin, *devices, *groups, *clients); err != nil {
		fail("%v", err)
	}
}

func run(adminURL string, n, groups, clients int) error {
	ctx := context.Background()
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()

	// The API only: the scheduler measured is the one below, alone.
	// The embedded registry and blob store keep their files here.
	dataDir, err := os.MkdirTemp("", "flock-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--data-dir=" + dataDir, "--dev", "--public-url=" + publicURL, "--target=api"},
		func(line string) {
			if strings.Contains(line, `"level":"ERROR"`) {
				fmt.Fprintln(os.Stderr, line)
			}
		})
	if err != nil {
		return err
	}
	defer proc.Stop(30 * time.Second) //nolint:errcheck
	api, err := newAPI(ctx, proc.URL, pool)
	if err != nil {
		return err
	}
	org := api.post("/v1/orgs", api.token, map[string]any{"name": "bench"})["id"].(string)
	fleet := api.post("/v1/orgs/"+org+"/fleets", api.token, map[string]any{"name": "fleet", "architecture": "amd64"})["id"].(string)
	devToken := api.registerDevice(fleet)

	fmt.Printf("seeding %d devices...\n", n)
	start := time.Now()
	f, err := schedulertest.Populate(ctx, pool, uuid.MustParse(org), uuid.MustParse(fleet), n,
		func(int) map[string]string { return map[string]string{"bench": "yes"} })
	if err != nil {
		return err
	}
	fmt.Printf("seeded in %s\n\n", time.Since(start).Round(time.Millisecond))

	b, err := bus.Open(ctx, bus.Config{Log: quiet})
	if err != nil {
		return err
	}
	defer b.Close()
	reg := prometheus.NewRegistry()
	nud := nudger.New(pool, b, quiet, nil)
	s, err := scheduler.New(scheduler.Config{Log: quiet, Metrics: reg}, scheduler.Deps{Pool: pool, Bus: b, Nudge: nud, Audit: audit.NewRecorder(nil)})
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	var workers sync.WaitGroup
	workers.Go(func() { _ = nud.Run(runCtx) })
	workers.Go(func() {
		if err := s.Run(runCtx); err != nil {
			fmt.Fprintln(os.Stderr, "scheduler:", err)
		}
	})
	defer func() { stopRun(); workers.Wait() }()
	for s.Ready(ctx) != nil {
		time.Sleep(10 * time.Millisecond)
	}

	// The rollout: equal groups, success when every device runs the release
	// healthy (settle time 0, so each report settles a device at once).
	specs := make([]rollout.GroupSpec, groups)
	share := 100.0 / float64(groups)
	for i := range specs {
		specs[i] = rollout.GroupSpec{SuccessThreshold: 100, DeviceTimeoutSeconds: 3600}
		if i < groups-1 {
			specs[i].Percent = &share
		}
	}
	id, err := schedulertest.Start(ctx, pool, f, schedulertest.Rollout{Tags: map[string]string{"bench": "yes"}, Groups: specs})
	if err != nil {
		return err
	}
	members, err := groupMembers(ctx, pool, id, groups)
	if err != nil {
		return err
	}

	var loadStop atomic.Bool
	var requests atomic.Int64
	var load sync.WaitGroup
	loadStart := time.Now()
	for range clients {
		load.Go(func() {
			for !loadStop.Load() {
				if code, err := api.get("/device/v1/state", devToken); err != nil || code != 200 {
					fmt.Fprintf(os.Stderr, "target state: %d %v\n", code, err)
					return
				}
				requests.Add(1)
			}
		})
	}

	w := newWatcher(reg)
	go w.run(runCtx)
	var applyTime time.Duration
	var afterApplied, afterPublished []time.Duration
	total := 0
	for g := range groups {
		size := len(members[g])
		if err := w.waitTargeted(total + size); err != nil {
			return fmt.Errorf("group %d: %w", g, err)
		}
		if g > 0 {
			first := w.firstTargetedAfter(total)
			afterApplied = append(afterApplied, first.Sub(w.appliedAt(total)))
			afterPublished = append(afterPublished, first.Sub(w.lastPublished))
		}
		pubStart := time.Now()
		if err := feed(ctx, b, f, members[g]); err != nil {
			return err
		}
		w.lastPublished = time.Now()
		total += size
		if err := w.waitApplied(total); err != nil {
			return fmt.Errorf("group %d: %w", g, err)
		}
		took := w.appliedAt(total).Sub(pubStart)
		applyTime += took
		fmt.Printf("group %d: %6d reports published in %6s, applied in %6s (%6.0f/s)\n", g, size,
			w.lastPublished.Sub(pubStart).Round(time.Millisecond), took.Round(time.Millisecond), float64(size)/took.Seconds())
	}
	if err := waitFinished(ctx, pool, id); err != nil {
		return err
	}
	loadStop.Store(true)
	load.Wait()
	rolloutTime := time.Since(loadStart)
	applied := float64(total) / applyTime.Seconds()
	fmt.Printf("\none scheduler replica: %d device reports applied in %s: %.0f reports/s\n", total, applyTime.Round(time.Millisecond), applied)

	bare, err := bareConsumer(ctx, b, total)
	if err != nil {
		return err
	}
	fmt.Printf("bare consumer (read + decode the same records): %.0f records/s; the scheduler applies at %.2f× its speed\n", bare, applied/bare)
	fmt.Printf("last report of a group → next group's first device targeted (%d transitions):\n", len(afterApplied))
	fmt.Printf("  from the last report applied:   p50 %s  p99 %s  (each: %s)\n", pct(afterApplied, 50), pct(afterApplied, 99), list(afterApplied))
	fmt.Printf("  from the last report published: p50 %s  p99 %s  (each: %s)\n", pct(afterPublished, 50), pct(afterPublished, 99), list(afterPublished))
	fmt.Printf("target state (GET /device/v1/state, %d clients) while the rollout ran %s: %.0f requests/s\n",
		clients, rolloutTime.Round(time.Millisecond), float64(requests.Load())/rolloutTime.Seconds())

	took, err := killReplica(ctx, dbURL, b)
	if err != nil {
		return err
	}
	fmt.Printf("a kill -9'd replica's partitions picked up by the survivor after %s (session timeout 10s)\n", took.Round(100*time.Millisecond))
	return nil
}

// groupMembers lists each group's devices, as planned.
func groupMembers(ctx context.Context, pool *pgxpool.Pool, id uuid.UUID, groups int) ([][]uuid.UUID, error) {
	rows, err := pool.Query(ctx, `SELECT group_idx, device_id FROM rollout_devices WHERE rollout_id = $1`, id)
	if err != nil {
		return nil, err
	}
	out := make([][]uuid.UUID, groups)
	var g int32
	var d uuid.UUID
	_, err = pgx.ForEachRow(rows, []any{&g, &d}, func() error {
		out[g] = append(out[g], d)
		return nil
	})
	return out, err
}

// feed publishes, for each device, its report of running the new release
// with its service running, as the ingester would, in batches as fast as
// the bus acknowledges them.
func feed(ctx context.Context, b *bus.Bus, f schedulertest.Fleet, devices []uuid.UUID) error {
	const batch = 2000
	for chunk := range slices.Chunk(devices, batch) {
		recs := make([]bus.Record, len(chunk))
		now := time.Now()
		for i, d := range chunk {
			recs[i] = schedulertest.Report(f, d, 1, f.New, now, schedulertest.Running("app"))
		}
		if err := b.Publish(ctx, recs...); err != nil {
			return err
		}
	}
	return nil
}

// watcher follows the scheduler's counters of rows changed by reports and
// of devices targeted, and notes when each crossed each value.
type watcher struct {
	reg           *prometheus.Registry
	mu            sync.Mutex
	applied       []point // when the rows changed by reports reached n
	targeted      []point
	lastPublished time.Time
}

type point struct {
	n  int
	at time.Time
}

func newWatcher(reg *prometheus.Registry) *watcher { return &watcher{reg: reg} }

// run polls every millisecond until ctx ends.
func (w *watcher) run(ctx context.Context) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, targeted := w.read()
		now := time.Now()
		w.mu.Lock()
		if len(w.applied) == 0 || w.applied[len(w.applied)-1].n != changed {
			w.applied = append(w.applied, point{changed, now})
		}
		if len(w.targeted) == 0 || w.targeted[len(w.targeted)-1].n != targeted {
			w.targeted = append(w.targeted, point{targeted, now})
		}
		w.mu.Unlock()
	}
}

func (w *watcher) read() (changed, targeted int) {
	mfs, err := w.reg.Gather()
	if err != nil {
		return 0, 0
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "flock_scheduler_device_changes_total":
				changed = int(m.GetCounter().GetValue())
			case "flock_scheduler_targeted_total":
				targeted = int(m.GetCounter().GetValue())
			}
		}
	}
	return changed, targeted
}

// first returns when the series first reached at least n.
func first(ps []point, n int) (time.Time, bool) {
	for _, p := range ps {
		if p.n >= n {
			return p.at, true
		}
	}
	return time.Time{}, false
}

func (w *watcher) wait(series func() []point, n int) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		_, ok := first(series(), n)
		w.mu.Unlock()
		if ok {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("waited 5 minutes for %d", n)
}

func (w *watcher) waitTargeted(n int) error { return w.wait(func() []point { return w.targeted }, n) }
func (w *watcher) waitApplied(n int) error  { return w.wait(func() []point { return w.applied }, n) }

func (w *watcher) appliedAt(n int) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, _ := first(w.applied, n)
	return at
}

func (w *watcher) firstTargetedAfter(n int) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, _ := first(w.targeted, n+1)
	return at
}

func waitFinished(ctx context.Context, pool *pgxpool.Pool, id uuid.UUID) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var state string
		if err := pool.QueryRow(ctx, `SELECT state FROM rollouts WHERE id = $1`, id).Scan(&state); err != nil {
			return err
		}
		if state == rollout.Finished {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("the rollout did not finish")
}

// bareConsumer reads the state topic's records with a group of its own and
// only decodes them, as the scheduler does before it applies them.
func bareConsumer(ctx context.Context, b *bus.Bus, want int) (float64, error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var got int
	var start time.Time
	var took time.Duration
	err := b.Consume(cctx, "bench-bare-"+uuid.NewString(), []string{bus.TopicDeviceState}, func(_ context.Context, recs []bus.Record) error {
		if start.IsZero() {
			start = time.Now()
		}
		ins, bad := scheduler.Decode(recs)
		got += len(ins) + bad
		if got >= want {
			took = time.Since(start)
			cancel()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if got < want {
		return 0, fmt.Errorf("bare consumer read %d of %d", got, want)
	}
	return float64(got) / took.Seconds(), nil
}

// killReplica starts a second scheduler replica in a process of its own,
// waits until the group has given it partitions, kills it (SIGKILL: it
// neither commits nor leaves) and measures until the survivor holds every
// partition.
func killReplica(ctx context.Context, dbURL string, b *bus.Bus) (time.Duration, error) {
	cmd := exec.Command(os.Args[0], "-replica="+dbURL, "-brokers="+strings.Join(b.Brokers(), ","))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Brokers()...))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	members := func() []int {
		gs, err := adm.DescribeGroups(ctx, scheduler.Group)
		if err != nil {
			return nil
		}
		var out []int
		for _, m := range gs[scheduler.Group].Members {
			if c, ok := m.Assigned.AsConsumer(); ok {
				n := 0
				for _, t := range c.Topics {
					n += len(t.Partitions)
				}
				out = append(out, n)
			}
		}
		return out
	}
	until := func(what string, ok func([]int) bool) error {
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			if ok(members()) {
				return nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		return fmt.Errorf("waited 2 minutes for %s: %v", what, members())
	}
	if err := until("two replicas holding partitions", func(m []int) bool { return len(m) == 2 && m[0] > 0 && m[1] > 0 }); err != nil {
		return 0, err
	}
	if err := cmd.Process.Kill(); err != nil {
		return 0, err
	}
	killed := time.Now()
	total := len(scheduler.Topics) * 6
	if err := until("the survivor holding every partition", func(m []int) bool { return len(m) == 1 && m[0] == total }); err != nil {
		return 0, err
	}
	return time.Since(killed), nil
}

// runReplica is the replica killReplica kills.
func runReplica(dbURL, brokers string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pool, err := postgres.Open(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	b, err := bus.Open(ctx, bus.Config{Brokers: strings.Split(brokers, ","), Log: quiet})
	if err != nil {
		return err
	}
	defer b.Close()
	s, err := scheduler.New(scheduler.Config{Log: quiet}, scheduler.Deps{Pool: pool, Bus: b, Audit: audit.NewRecorder(nil)})
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)].Round(time.Millisecond)
}

func list(ds []time.Duration) string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond).String()
	}
	return strings.Join(out, ", ")
}

// api is the API's address and a user token.
type api struct {
	base   string
	token  string
	client *http.Client
}

func newAPI(ctx context.Context, base string, pool *pgxpool.Pool) (*api, error) {
	token, err := benchapp.Token(ctx, pool, publicURL)
	if err != nil {
		return nil, err
	}
	return &api{base: base, token: token, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}, nil
}

// registerDevice registers a device in fleet the way a device does and
// returns its token.
func (a *api) registerDevice(fleet string) string {
	pk := a.post("/v1/fleets/"+fleet+"/provisioning-keys", a.token, map[string]any{"name": "bench"})["secret"].(string)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := uuid.New()
	a.post("/device/v1/register", "", map[string]any{"provisioning_key": pk, "uuid": id.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(pub), "name": "bench-device", "device_type": "generic-amd64"})
	assertion, err := devicetoken.SignAssertion(priv, id, app.TokenEndpoint(publicURL), time.Minute)
	if err != nil {
		fail("%v", err)
	}
	return a.post("/device/v1/token", "", map[string]any{"assertion": assertion})["access_token"].(string)
}

func (a *api) get(path, token string) (int, error) {
	req, _ := http.NewRequest("GET", a.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (a *api) post(path, token string, body any) map[string]any {
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", a.base+path, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.client.Do(req)
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
