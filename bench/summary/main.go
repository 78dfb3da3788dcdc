// Command summary measures the fleet summary at fleet scale. It seeds one
// fleet with 100,000 devices (COPY) and a paused rollout of all of them in
// five groups, then:
//
//  1. what the summary counters cost the ingester: its three batch updates
//     of devices (last seen, connectivity, reported state; 500 devices a
//     batch, the ingester's batch size) timed with the counter triggers
//     enabled and disabled, in alternating blocks, on one connection and on
//     four at once;
//  2. GET /v1/fleets/{id}/summary through the real API (flock-api --target=api
//     in this process) while a stream of device changes goes on (connects,
//     disconnects, reported states, moves of rollout devices), p50/p99,
//     beside the same counts read bare from the counters and computed by a
//     full GROUP BY over the devices;
//  3. that the summary then equals the full count.
//
// Everything it starts listens on free loopback ports.
//
//	go run ./bench/summary [-devices 100000] [-requests 2000] [-rate 2000] [-batches 100]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/bench/internal/serverstats"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/summary"
	"github.com/flock-io/flock-api/internal/testutil/launch"
	"github.com/flock-io/flock-api/workers/janitor"
)

const publicURL = "http://flock.bench"

// batchSize is the ingester's default batch (workers/ingester).
const batchSize = 500

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	devices := flag.Int("devices", 100000, "devices to seed in the fleet")
	requests := flag.Int("requests", 2000, "summary requests to time")
	rate := flag.Int("rate", 2000, "device changes per second while the summary is read")
	batches := flag.Int("batches", 100, "batches of each kind to time with and without the triggers")
	flag.Parse()
	if err := run(*admin, *devices, *requests, *rate, *batches); err != nil {
		fail("%v", err)
	}
}

func run(adminURL string, n, requests, rate, batches int) error {
	ctx := context.Background()
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()
	// The embedded registry and blob store keep their files here.
	dataDir, err := os.MkdirTemp("", "flock-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--data-dir=" + dataDir, "--dev", "--target=api", "--public-url=" + publicURL},
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
	org := uuid.MustParse(b.post("/v1/orgs", map[string]any{"name": "bench"})["id"].(string))
	fleet := uuid.MustParse(b.post("/v1/orgs/"+org.String()+"/fleets", map[string]any{"name": "fleet", "architecture": "amd64"})["id"].(string))

	fmt.Printf("seeding %d devices and a rollout of them in 5 groups...\n", n)
	start := time.Now()
	w, err := seed(ctx, pool, org, fleet, n)
	if err != nil {
		return err
	}
	fmt.Printf("seeded in %s (%d CPUs)\n\n", time.Since(start).Round(time.Millisecond), runtime.NumCPU())

	if batches > 0 {
		if err := ingestCost(ctx, pool, dbURL, w, batches); err != nil {
			return err
		}
	}
	if err := readBench(ctx, b, pool, w, requests, rate); err != nil {
		return err
	}
	return verify(ctx, pool, w)
}

// world is the seeded fleet.
type world struct {
	org, fleet, rollout uuid.UUID
	releases            []uuid.UUID
	devices             []uuid.UUID
	// keys and seqs hold each device's last connection key and reported
	// seq, so every change is one the ingester would apply. Writers own
	// disjoint slices of devices, so each index is written by one of them.
	keys, seqs []int64
	connected  []bool
}

const services = `[{"name": "app", "images": {"amd64": {"image": "registry.example.com/app:%d", "digest": "sha256:%064d"}}}]`

// seed copies the devices in: 70% connected, 20% disconnected, 10% never
// connected over MQTT; 60% on one release, 35% on another, 5% none
// reported; 2% never reported, 4% with a failed service, 4% updating.
func seed(ctx context.Context, pool *pgxpool.Pool, org, fleet uuid.UUID, n int) (*world, error) {
	w := &world{org: org, fleet: fleet, devices: make([]uuid.UUID, n), keys: make([]int64, n), seqs: make([]int64, n), connected: make([]bool, n)}
	for i := range 3 {
		var id uuid.UUID
		if err := pool.QueryRow(ctx, `INSERT INTO releases (org_id, fleet_id, version, status, services, finalized_at)
			VALUES ($1, $2, $3, 'final', $4, now() + make_interval(secs => $5)) RETURNING id`,
			org, fleet, fmt.Sprintf("1.%d", i), fmt.Sprintf(services, i, i), i).Scan(&id); err != nil {
			return nil, fmt.Errorf("seed a release: %w", err)
		}
		w.releases = append(w.releases, id)
	}
	now := time.Now()
	rows := make([][]any, n)
	for i := range rows {
		id := uuid.New()
		w.devices[i] = id
		var key *int64
		switch i % 10 {
		case 7, 8:
			w.keys[i] = 1
			key = &w.keys[i]
		case 9:
		default:
			w.keys[i], w.connected[i] = 1, true
			key = &w.keys[i]
		}
		var release any
		switch {
		case i%20 < 12:
			release = w.releases[0]
		case i%20 < 19:
			release = w.releases[1]
		}
		var seq any
		reported := "{}"
		if i%50 != 0 {
			w.seqs[i] = 1
			seq = int64(1)
			st := "running"
			switch i % 25 {
			case 1:
				st = "failed"
			case 2:
				st = "downloading"
			}
			reported = reportedState(1, release, st)
		}
		rows[i] = []any{id, org, fleet, fmt.Sprintf("device-%d", i), "generic-amd64", "amd64", make([]byte, 32),
			release, key, w.connected[i], reported, seq, now, now}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"devices"},
		[]string{"id", "org_id", "fleet_id", "name", "device_type", "architecture", "public_key",
			"running_release_id", "connection_key", "connected", "reported", "reported_seq", "reported_at", "last_seen_at"},
		pgx.CopyFromRows(rows)); err != nil {
		return nil, fmt.Errorf("copy devices: %w", err)
	}

	// A paused rollout of the third release: group 0 done, group 1 under
	// way, the rest pending.
	if err := pool.QueryRow(ctx, `INSERT INTO rollouts (org_id, fleet_id, release_id, from_release_id, state, membership, spec, started_at)
		VALUES ($1, $2, $3, $4, 'paused', 'snapshot', '{}', now()) RETURNING id`,
		org, fleet, w.releases[2], w.releases[0]).Scan(&w.rollout); err != nil {
		return nil, fmt.Errorf("seed a rollout: %w", err)
	}
	for g := range 5 {
		if _, err := pool.Exec(ctx, `INSERT INTO rollout_groups (rollout_id, idx, name, spec, share) VALUES ($1, $2, $3, '{}', 0.2)`,
			w.rollout, g, fmt.Sprintf("group-%d", g)); err != nil {
			return nil, fmt.Errorf("seed a rollout group: %w", err)
		}
	}
	rd := make([][]any, n)
	for i, id := range w.devices {
		g := i * 5 / n
		state := "pending"
		switch {
		case g == 0 && i%40 == 0:
			state = "failed"
		case g == 0:
			state = "succeeded"
		case g == 1:
			state = []string{"targeted", "downloading", "installing", "running", "succeeded"}[i%5]
		}
		rd[i] = []any{w.rollout, id, int32(g), state}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"rollout_devices"}, []string{"rollout_id", "device_id", "group_idx", "state"},
		pgx.CopyFromRows(rd)); err != nil {
		return nil, fmt.Errorf("copy rollout devices: %w", err)
	}
	if _, err := janitor.CompactSummary(ctx, pool); err != nil {
		return nil, err
	}
	for _, t := range []string{"devices", "rollout_devices", "device_summary", "rollout_summary"} {
		if _, err := pool.Exec(ctx, "VACUUM ANALYZE "+t); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// reportedState is a report of three services, the second in state st.
func reportedState(seq int64, release any, st string) string {
	s := map[string]any{"seq": seq, "os_version": "flockOS 2.1", "agent_version": "1.4.0",
		"services": []any{
			map[string]any{"name": "app", "status": "running"},
			map[string]any{"name": "proxy", "status": st, "download_progress": 40},
			map[string]any{"name": "metrics", "status": "running"},
		}}
	if id, ok := release.(uuid.UUID); ok {
		s["running_release_id"] = id.String()
	}
	b, _ := json.Marshal(s)
	return string(b)
}

// changer makes the ingester's batch updates on its own slice of devices.
type changer struct {
	w        *world
	q        *db.Queries
	rng      *rand.Rand
	from, to int // its devices are w.devices[from:to]
}

func (c *changer) pick(n int) []int {
	idx := make([]int, 0, n)
	seen := map[int]bool{}
	for len(idx) < min(n, c.to-c.from) {
		i := c.from + c.rng.IntN(c.to-c.from)
		if !seen[i] {
			seen[i] = true
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	return idx
}

// touch is DevicesTouch: traffic, no counted change.
func (c *changer) touch(ctx context.Context, n int) error {
	idx := c.pick(n)
	p := db.DevicesTouchParams{Ids: make([]uuid.UUID, len(idx)), Ats: make([]time.Time, len(idx))}
	now := time.Now()
	for j, i := range idx {
		p.Ids[j], p.Ats[j] = c.w.devices[i], now
	}
	return c.q.DevicesTouch(ctx, p)
}

// connectivity is DevicesApplyConnectivity: each device connects or
// disconnects (a new connection key each time).
func (c *changer) connectivity(ctx context.Context, n int) error {
	idx := c.pick(n)
	p := db.DevicesApplyConnectivityParams{}
	now := time.Now()
	for _, i := range idx {
		c.w.keys[i]++
		c.w.connected[i] = !c.w.connected[i]
		p.Ids = append(p.Ids, c.w.devices[i])
		p.Keys = append(p.Keys, c.w.keys[i])
		p.Connected = append(p.Connected, c.w.connected[i])
		p.Ats = append(p.Ats, now)
	}
	_, err := c.q.DevicesApplyConnectivity(ctx, p)
	return err
}

var states = []string{"running", "running", "running", "running", "downloading", "installing", "failed"}

// state is DevicesApplyState: a new report of each device, on one of the
// releases, its second service in a random state.
func (c *changer) state(ctx context.Context, n int) error {
	idx := c.pick(n)
	p := db.DevicesApplyStateParams{}
	now := time.Now()
	for _, i := range idx {
		c.w.seqs[i]++
		rel := c.w.releases[c.rng.IntN(2)]
		p.Ids = append(p.Ids, c.w.devices[i])
		p.Seqs = append(p.Seqs, c.w.seqs[i])
		p.Reported = append(p.Reported, reportedState(c.w.seqs[i], rel, states[c.rng.IntN(len(states))]))
		p.RunningReleaseIds = append(p.RunningReleaseIds, rel.String())
		p.OsVersions = append(p.OsVersions, "flockOS 2.1")
		p.AgentVersions = append(p.AgentVersions, "1.4.0")
		p.Ats = append(p.Ats, now)
	}
	return c.q.DevicesApplyState(ctx, p)
}

// rolloutMoves is the scheduler's write-back: devices of group 1 change state.
func (c *changer) rolloutMoves(ctx context.Context, pool *pgxpool.Pool, n int) error {
	g1 := len(c.w.devices) / 5
	p := db.SchedulerDevicesUpdateParams{Now: time.Now()}
	zero := time.Time{}
	seen := map[int]bool{}
	for len(p.DeviceIds) < n {
		i := g1 + c.rng.IntN(g1)
		if seen[i] {
			continue
		}
		seen[i] = true
		p.RolloutIds = append(p.RolloutIds, c.w.rollout)
		p.DeviceIds = append(p.DeviceIds, c.w.devices[i])
		p.States = append(p.States, []string{"targeted", "downloading", "installing", "running", "succeeded", "failed"}[c.rng.IntN(6)])
		p.Reasons = append(p.Reasons, "")
		p.Deadlines = append(p.Deadlines, zero)
		p.HealthySince = append(p.HealthySince, zero)
		p.LastSeqs = append(p.LastSeqs, 1)
	}
	return db.New(pool).SchedulerDevicesUpdate(ctx, p)
}

// setTriggers enables or disables the summary's triggers on devices.
func setTriggers(ctx context.Context, pool *pgxpool.Pool, on bool) error {
	verb := "DISABLE"
	if on {
		verb = "ENABLE"
	}
	for _, t := range []string{"devices_summary_insert", "devices_summary_update", "devices_summary_delete"} {
		if _, err := pool.Exec(ctx, "ALTER TABLE devices "+verb+" TRIGGER "+t); err != nil {
			return err
		}
	}
	return nil
}

// recount rebuilds the counters from the devices, as the migration's
// backfill does: changes made with the triggers disabled were not counted.
func recount(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, s := range []string{
			"LOCK devices IN SHARE MODE",
			"DELETE FROM device_summary_deltas",
			"DELETE FROM device_summary",
			`INSERT INTO device_summary (fleet_id, connectivity, running_release_id, update_status, devices)
			 SELECT fleet_id, flock_device_connectivity(connected, connection_key), running_release_id,
			        flock_device_update_status(reported_seq, reported), count(*)
			 FROM devices GROUP BY 1, 2, 3, 4`,
		} {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("recount: %w", err)
			}
		}
		return nil
	})
}

// ingestCost times the ingester's three batch updates with the triggers
// on and off, in alternating blocks of 10 batches, so that a drift of this
// shared machine's speed slows both alike; then four connections at once,
// each on its own devices, for throughput.
func ingestCost(ctx context.Context, pool *pgxpool.Pool, dbURL string, w *world, batches int) error {
	// Connections of their own, outside the pool the other statements use,
	// each with its backend's CPU clock.
	const conns = 4
	held := make([]*pgx.Conn, conns)
	cpus := make([]backendCPU, conns)
	for i := range held {
		var err error
		if held[i], err = pgx.Connect(ctx, dbURL); err != nil {
			return err
		}
		defer held[i].Close(ctx)
		if cpus[i], err = backendOf(ctx, held[i]); err != nil {
			return err
		}
	}
	c := &changer{w: w, q: db.New(held[0]), rng: rand.New(rand.NewPCG(1, 2)), from: 0, to: len(w.devices)}
	kinds := []struct {
		name string
		run  func(context.Context, int) error
	}{
		{"DevicesTouch (last seen; counts unchanged)", c.touch},
		{"DevicesApplyConnectivity (every device connects or disconnects)", c.connectivity},
		{"DevicesApplyState (a new report of every device)", c.state},
	}
	fmt.Printf("ingester batch updates of %d devices, %d batches each way in alternating blocks of 10, one connection\n", batchSize, 10*max(1, batches/10))
	fmt.Printf("(wall time, and the CPU time of the PostgreSQL backend that ran them, which moves far less when others load this machine):\n")
	for _, k := range kinds {
		var on, off, onCPU, offCPU []time.Duration
		for block := range 2 * max(1, batches/10) {
			enabled := block%2 == 0
			if err := setTriggers(ctx, pool, enabled); err != nil {
				return err
			}
			for range 10 {
				t0, cpu0 := time.Now(), cpus[0].read()
				if err := k.run(ctx, batchSize); err != nil {
					return fmt.Errorf("%s: %w", k.name, err)
				}
				wall, cpu := time.Since(t0), cpus[0].read()-cpu0
				if enabled {
					on, onCPU = append(on, wall), append(onCPU, cpu)
				} else {
					off, offCPU = append(off, wall), append(offCPU, cpu)
				}
			}
		}
		fmt.Printf("  %s\n", k.name)
		fmt.Printf("    with triggers   : %s   backend CPU per batch: mean %s p50 %s\n", stats(on), time.Duration(mean(onCPU)).Round(time.Microsecond), median(onCPU))
		fmt.Printf("    without triggers: %s   backend CPU per batch: mean %s p50 %s\n", stats(off), time.Duration(mean(offCPU)).Round(time.Microsecond), median(offCPU))
		fmt.Printf("    cost of the triggers: wall %+.1f%% (mean), backend CPU %+.1f%% (mean), %+.1f%% (p50)\n", (mean(on)/mean(off)-1)*100,
			(mean(onCPU)/mean(offCPU)-1)*100, (float64(median(onCPU))/float64(median(offCPU))-1)*100)
	}

	const rounds, each = 8, 2 * time.Second
	fmt.Printf("four connections at once, each on its own devices, DevicesApplyConnectivity and DevicesApplyState by turns, %d rounds of %s each way by turns:\n", rounds/2, each)
	rates := map[bool][]float64{}
	cpuPerRow := map[bool][]float64{}
	for round := range rounds {
		enabled := round%2 == 0
		if err := setTriggers(ctx, pool, enabled); err != nil {
			return err
		}
		var rows atomic.Int64
		var failed atomic.Value
		deadline := time.Now().Add(each)
		var wg sync.WaitGroup
		per := len(w.devices) / conns
		var cpu0 time.Duration
		for _, b := range cpus {
			cpu0 += b.read()
		}
		for i := range conns {
			cc := &changer{w: w, q: db.New(held[i]), rng: rand.New(rand.NewPCG(uint64(i), uint64(round))), from: i * per, to: (i + 1) * per}
			wg.Go(func() {
				for j := 0; time.Now().Before(deadline); j++ {
					run := cc.connectivity
					if j%2 == 1 {
						run = cc.state
					}
					if err := run(ctx, batchSize); err != nil {
						failed.Store(err)
						return
					}
					rows.Add(batchSize)
				}
			})
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			return err
		}
		var cpu1 time.Duration
		for _, b := range cpus {
			cpu1 += b.read()
		}
		rates[enabled] = append(rates[enabled], float64(rows.Load())/each.Seconds())
		cpuPerRow[enabled] = append(cpuPerRow[enabled], float64(cpu1-cpu0)/float64(rows.Load()))
	}
	for _, enabled := range []bool{true, false} {
		label := "with triggers   "
		if !enabled {
			label = "without triggers"
		}
		r := rates[enabled]
		fmt.Printf("    %s: %7.0f device rows/s (rounds: %v), backend CPU per row %.1fµs\n", label, meanF(r), roundAll(r), meanF(cpuPerRow[enabled])/1000)
	}
	fmt.Printf("    cost of the triggers: time per row %+.1f%%, backend CPU per row %+.1f%%\n", (meanF(rates[false])/meanF(rates[true])-1)*100,
		(meanF(cpuPerRow[true])/meanF(cpuPerRow[false])-1)*100)
	if err := setTriggers(ctx, pool, true); err != nil {
		return err
	}
	fmt.Println()
	return recount(ctx, pool)
}

// readBench reads the summary through the API while writers change
// devices at rate changes/s, then the same counts bare: from the counters
// (what the handler runs) and by a full GROUP BY.
func readBench(ctx context.Context, b *bench, pool *pgxpool.Pool, w *world, requests, rate int) error {
	sctx, stop := context.WithCancel(ctx)
	var changes, rolloutChanges atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	const writers, perBatch = 4, 100
	per := len(w.devices) / writers
	if rate > 0 {
		interval := time.Duration(float64(time.Second) * perBatch * writers / float64(rate))
		for i := range writers {
			c := &changer{w: w, q: db.New(pool), rng: rand.New(rand.NewPCG(uint64(i), 77)), from: i * per, to: (i + 1) * per}
			wg.Go(func() {
				t := time.NewTicker(interval)
				defer t.Stop()
				for j := 0; ; j++ {
					select {
					case <-sctx.Done():
						return
					case <-t.C:
					}
					var err error
					switch j % 3 {
					case 0:
						err = c.connectivity(sctx, perBatch)
					case 1:
						err = c.state(sctx, perBatch)
					default:
						err = c.touch(sctx, perBatch)
					}
					if err != nil && sctx.Err() == nil {
						failed.Store(err)
						return
					}
					changes.Add(perBatch)
				}
			})
		}
		// The scheduler: 50 rollout devices change state 10 times a second.
		c := &changer{w: w, q: db.New(pool), rng: rand.New(rand.NewPCG(5, 5))}
		wg.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-sctx.Done():
					return
				case <-t.C:
				}
				if err := c.rolloutMoves(sctx, pool, 50); err != nil && sctx.Err() == nil {
					failed.Store(err)
					return
				}
				rolloutChanges.Add(50)
			}
		})
	}
	defer func() { stop(); wg.Wait() }()

	path := "/v1/fleets/" + w.fleet.String() + "/summary"
	for range 50 { // warm caches, plans, connections
		if _, err := b.getBody(path); err != nil {
			return err
		}
	}
	var pending []int64
	started := time.Now()
	c0 := changes.Load()
	var api []time.Duration
	for i := range requests {
		t0 := time.Now()
		if _, err := b.getBody(path); err != nil {
			return err
		}
		api = append(api, time.Since(t0))
		if i%50 == 0 {
			var n int64
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM device_summary_deltas WHERE fleet_id = $1`, w.fleet).Scan(&n); err != nil {
				return err
			}
			pending = append(pending, n)
		}
	}
	elapsed := time.Since(started)
	achieved := float64(changes.Load()-c0) / elapsed.Seconds()

	// Eight clients at once.
	var conc []time.Duration
	var mu sync.Mutex
	var cwg sync.WaitGroup
	for range 8 {
		cwg.Go(func() {
			var mine []time.Duration
			for range requests / 8 {
				t0 := time.Now()
				if _, err := b.getBody(path); err != nil {
					failed.Store(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			conc = append(conc, mine...)
			mu.Unlock()
		})
	}
	cwg.Wait()

	// The handler's reads, bare.
	var bare []time.Duration
	for range requests {
		t0 := time.Now()
		err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			_, err := summary.Read(ctx, db.New(tx), []uuid.UUID{w.fleet})
			return err
		})
		if err != nil {
			return err
		}
		bare = append(bare, time.Since(t0))
	}
	// The same counts by a full count of the devices.
	var full []time.Duration
	for range max(20, requests/50) {
		t0 := time.Now()
		if err := fullCount(ctx, pool, w.fleet, func(string, int64) {}); err != nil {
			return err
		}
		full = append(full, time.Since(t0))
	}
	if err, _ := failed.Load().(error); err != nil {
		return err
	}
	slices.Sort(pending)
	fmt.Printf("fleet summary of %d devices, while %.0f device changes/s go on (asked %d: connects/disconnects, reports, last seen; 500 rollout device changes/s):\n",
		len(w.devices), achieved, rate)
	fmt.Printf("  GET %s, one client, %d requests: %s\n", "/v1/fleets/{id}/summary", len(api), stats(api))
	fmt.Printf("  GET, eight clients at once, %d requests:        %s\n", len(conc), stats(conc))
	if m, err := b.serverMean("fleet-summary:get"); err == nil {
		fmt.Printf("  server-side mean of fleet-summary:get (from /metrics): %s\n", m.Round(time.Microsecond))
	}
	fmt.Printf("  bare counters (the handler's SQL, one transaction): %s\n", stats(bare))
	fmt.Printf("  bare full GROUP BY over devices and rollout devices: %s\n", stats(full))
	fmt.Printf("  pending deltas of the fleet at the reads: median %d, max %d (the janitor compacts every %s)\n",
		pending[len(pending)/2], pending[len(pending)-1], janitor.CompactEvery)
	fmt.Printf("  (goal: p99 < 50ms)\n\n")
	return nil
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// fullCount counts the fleet's devices and rollout devices the way the
// summary does, from the rows themselves.
func fullCount(ctx context.Context, q querier, fleet uuid.UUID, each func(key string, n int64)) error {
	rows, err := q.Query(ctx, `
		SELECT 'device ' || flock_device_connectivity(connected, connection_key) || ' ' || coalesce(running_release_id::text, 'none')
		       || ' ' || flock_device_update_status(reported_seq, reported), count(*)
		FROM devices WHERE fleet_id = $1 GROUP BY 1
		UNION ALL
		SELECT 'rollout ' || rd.rollout_id || ' ' || rd.group_idx || ' ' || rd.state, count(*)
		FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
		WHERE r.fleet_id = $1 AND r.state IN ('ready', 'running', 'paused', 'waiting_for_approval')
		GROUP BY 1`, fleet)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		var n int64
		if err := rows.Scan(&key, &n); err != nil {
			return err
		}
		each(key, n)
	}
	return rows.Err()
}

// verify checks that the counters equal a full count, before and after a
// compaction. Both are read in one snapshot: a writer's statement that was
// cancelled as the stream stopped may still commit on the server after its
// goroutine returned.
func verify(ctx context.Context, pool *pgxpool.Pool, w *world) error {
	check := func(when string) error {
		return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			return compare(ctx, tx, w, when)
		})
	}
	if err := check("before compaction"); err != nil {
		return err
	}
	if _, err := janitor.CompactSummary(ctx, pool); err != nil {
		return err
	}
	if err := check("after compaction"); err != nil {
		return err
	}
	fmt.Println("the counters equal a full count of the devices, before and after compaction")
	return nil
}

// compare reads the counters and counts the rows in tx.
func compare(ctx context.Context, tx pgx.Tx, w *world, when string) error {
	want := map[string]int64{}
	if err := fullCount(ctx, tx, w.fleet, func(k string, n int64) { want[k] = n }); err != nil {
		return err
	}
	got := map[string]int64{}
	rows, err := tx.Query(ctx, `
		SELECT 'device ' || connectivity || ' ' || coalesce(running_release_id::text, 'none') || ' ' || update_status, devices
		FROM (SELECT connectivity, running_release_id, update_status, sum(devices)::bigint AS devices FROM
		  (SELECT * FROM device_summary WHERE fleet_id = $1 UNION ALL SELECT * FROM device_summary_deltas WHERE fleet_id = $1) x
		  GROUP BY 1, 2, 3 HAVING sum(devices) <> 0) d
		UNION ALL
		SELECT 'rollout ' || rollout_id || ' ' || group_idx || ' ' || state, sum(devices)::bigint FROM
		  (SELECT * FROM rollout_summary WHERE rollout_id = $2 UNION ALL SELECT * FROM rollout_summary_deltas WHERE rollout_id = $2) r
		  GROUP BY rollout_id, group_idx, state HAVING sum(devices) <> 0`, w.fleet, w.rollout)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return err
		}
		got[k] = n
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s: the counters say\n%v\na full count says\n%v", when, got, want)
	}
	return nil
}

// backendCPU reads the CPU time of one PostgreSQL backend (Linux
// /proc/PID/schedstat, in nanoseconds; 0 elsewhere).
type backendCPU string

func backendOf(ctx context.Context, c *pgx.Conn) (backendCPU, error) {
	var pid int32
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return "", err
	}
	return backendCPU(fmt.Sprintf("/proc/%d/schedstat", pid)), nil
}

func (b backendCPU) read() time.Duration {
	raw, err := os.ReadFile(string(b))
	if err != nil {
		return 0
	}
	var ns int64
	fmt.Sscan(string(raw), &ns)
	return time.Duration(ns)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Microsecond)
}

func meanF(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func roundAll(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x)
	}
	return out
}

func mean(ds []time.Duration) float64 {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return float64(s) / float64(len(ds))
}

func stats(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("mean %s  p50 %s  p99 %s  max %s", time.Duration(mean(s)).Round(time.Microsecond),
		s[len(s)/2].Round(time.Microsecond), s[len(s)*99/100].Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

type bench struct {
	client *http.Client
	base   string
	token  string
}

// serverMean reads the server's own latency histogram for an operation.
func (b *bench) serverMean(op string) (time.Duration, error) {
	return serverstats.MeanLatency(b.client, b.base, op)
}

// getBody returns the body of a 200 response.
func (b *bench) getBody(path string) ([]byte, error) {
	req, _ := http.NewRequest("GET", b.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+b.token)
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

func (b *bench) post(path string, body any) map[string]any {
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", b.base+path, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+b.token)
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
