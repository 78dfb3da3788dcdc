package summary_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/summary"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/janitor"
	"github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

// tallies flattens summaries into one count per key, leaving zeros out, so
// the counters and a count of the devices compare as two maps.
type tallies map[string]int64

func (t tallies) add(key string, n int64) {
	if t[key] += n; t[key] == 0 {
		delete(t, key)
	}
}

func fromSummaries(fleets []api.FleetSummary) tallies {
	t := tallies{}
	for _, f := range fleets {
		c := f.Counts
		if c.Online+c.Offline+c.NeverConnected != c.Devices {
			t.add(f.FleetId.String()+" parts do not add up", 1)
		}
		t.add(f.FleetId.String()+" devices", c.Devices)
		t.add(f.FleetId.String()+" connected", c.Online)
		t.add(f.FleetId.String()+" disconnected", c.Offline)
		t.add(f.FleetId.String()+" never", c.NeverConnected)
		for _, r := range c.ByRelease {
			id := "none"
			if r.ReleaseId != nil {
				id = r.ReleaseId.String()
			}
			t.add(f.FleetId.String()+" release "+id, r.Devices)
		}
		for _, s := range c.ByUpdateStatus {
			t.add(f.FleetId.String()+" status "+string(s.Status), s.Devices)
		}
		for _, r := range f.Rollouts {
			for _, g := range r.Groups {
				b, _ := json.Marshal(g.Counts)
				var byState map[string]int64
				_ = json.Unmarshal(b, &byState)
				for state, n := range byState {
					t.add(fmt.Sprintf("%s rollout %s %s group %d %s", f.FleetId, r.RolloutId, r.State, g.Index, state), n)
				}
			}
		}
	}
	return t
}

// updateStatus is the rule of the README and the migration, written again
// from the reported state.
func updateStatus(seq *int64, reported []byte) string {
	if seq == nil {
		return "unknown"
	}
	var st struct {
		Services []struct {
			Status string `json:"status"`
		} `json:"services"`
	}
	_ = json.Unmarshal(reported, &st)
	status := "idle"
	for _, s := range st.Services {
		switch s.Status {
		case "failed":
			return "failed"
		case "downloading", "installing":
			status = "updating"
		}
	}
	return status
}

// counted is what a full count of the devices and rollout devices gives.
func counted(ctx context.Context, tx pgx.Tx) (tallies, error) {
	t := tallies{}
	rows, err := tx.Query(ctx, `SELECT fleet_id, connected, connection_key IS NULL, running_release_id, reported_seq, reported FROM devices`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var (
			fleet     uuid.UUID
			connected bool
			never     bool
			release   uuid.NullUUID
			seq       *int64
			reported  []byte
		)
		if err := rows.Scan(&fleet, &connected, &never, &release, &seq, &reported); err != nil {
			return nil, err
		}
		f := fleet.String()
		t.add(f+" devices", 1)
		switch {
		case connected:
			t.add(f+" connected", 1)
		case never:
			t.add(f+" never", 1)
		default:
			t.add(f+" disconnected", 1)
		}
		id := "none"
		if release.Valid {
			id = release.UUID.String()
		}
		t.add(f+" release "+id, 1)
		t.add(f+" status "+updateStatus(seq, reported), 1)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = tx.Query(ctx, `SELECT r.fleet_id, r.id, r.state, rd.group_idx, rd.state, count(*)
		FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
		WHERE r.state IN ('ready', 'running', 'paused', 'waiting_for_approval')
		GROUP BY 1, 2, 3, 4, 5`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var (
			fleet, id     uuid.UUID
			rstate, state string
			group         int32
			n             int64
		)
		if err := rows.Scan(&fleet, &id, &rstate, &group, &state, &n); err != nil {
			return nil, err
		}
		key := fmt.Sprintf("%s rollout %s %s group %d ", fleet, id, rstate, group)
		t.add(key+state, n)
		t.add(key+"total", n)
	}
	return t, rows.Err()
}

// compare reads the summary of every fleet and counts the devices in one
// snapshot: the two must agree at every moment, compacted or not.
func compare(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var fleets []uuid.UUID
		rows, err := tx.Query(ctx, `SELECT id FROM fleets`)
		if err != nil {
			return err
		}
		if fleets, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
			return err
		}
		sums, err := summary.Read(ctx, db.New(tx), fleets)
		if err != nil {
			return err
		}
		got := fromSummaries(sums)
		want, err := counted(ctx, tx)
		if err != nil {
			return err
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("summary and a full count differ:\n%s", diff(got, want))
		}
		return nil
	})
}

func diff(got, want tallies) string {
	keys := slices.Sorted(maps.Keys(maps.Collect(func(yield func(string, int64) bool) {
		for k, v := range got {
			yield(k, v)
		}
		for k, v := range want {
			yield(k, v)
		}
	})))
	var b strings.Builder
	for _, k := range keys {
		if got[k] != want[k] {
			fmt.Fprintf(&b, "  %s: summary %d, count %d\n", k, got[k], want[k])
		}
	}
	return b.String()
}

// world is two fleets of one organisation with a rollout in the first, and
// a fleet of another organisation.
type world struct {
	pool     *pgxpool.Pool
	a, b     schedulertest.Fleet
	other    schedulertest.Fleet
	releases []uuid.UUID // those the devices may report, uuid.Nil: none
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := t.Context()
	pool := pgtest.Pool(t)
	a, err := schedulertest.Seed(ctx, pool, 60, nil)
	if err != nil {
		t.Fatal(err)
	}
	var fleetB uuid.UUID
	if err := pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'cameras', 'amd64') RETURNING id`, a.Org).Scan(&fleetB); err != nil {
		t.Fatal(err)
	}
	b, err := schedulertest.Populate(ctx, pool, a.Org, fleetB, 30, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := schedulertest.Seed(ctx, pool, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	half := 50.0
	if _, err := schedulertest.Start(ctx, pool, a, schedulertest.Rollout{Spec: rollout.Spec{SettleSeconds: 60},
		Groups: []rollout.GroupSpec{{Percent: &half, SuccessThreshold: 100, DeviceTimeoutSeconds: 600}, {SuccessThreshold: 100, DeviceTimeoutSeconds: 600}}}); err != nil {
		t.Fatal(err)
	}
	return &world{pool: pool, a: a, b: b, other: other, releases: []uuid.UUID{uuid.Nil, a.Old, a.New, b.Old}}
}

// worker changes its own devices (so that workers do not wait for each
// other's row locks, which is the ingester's situation too: one device,
// one partition) as the API, the ingester and the scheduler do.
type worker struct {
	w       *world
	rng     *rand.Rand
	devices []uuid.UUID
	keys    map[uuid.UUID]int64 // the last connection key given
	seqs    map[uuid.UUID]int64 // the last reported seq given
}

func (k *worker) pick(n int) []uuid.UUID {
	n = min(n, len(k.devices))
	out := make([]uuid.UUID, 0, n)
	for _, i := range k.rng.Perm(len(k.devices))[:n] {
		out = append(out, k.devices[i])
	}
	slices.SortFunc(out, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return out
}

var statuses = []string{"running", "running", "downloading", "installing", "failed", "exited", "stopped"}

func (k *worker) reported(seq int64, release uuid.UUID) string {
	var svcs []map[string]any
	for i := range k.rng.IntN(3) {
		svcs = append(svcs, map[string]any{"name": fmt.Sprintf("svc%d", i), "status": statuses[k.rng.IntN(len(statuses))]})
	}
	st := map[string]any{"seq": seq, "services": svcs}
	if release != uuid.Nil {
		st["running_release_id"] = release.String()
	}
	b, _ := json.Marshal(st)
	return string(b)
}

// step makes one random change in tx; committed gets what to do to the
// worker's device list once tx commits.
func (k *worker) step(ctx context.Context, tx pgx.Tx, committed *[]func()) error {
	q := db.New(tx)
	now := time.Now()
	switch op := k.rng.IntN(10); op {
	case 0, 1: // connect or disconnect a batch (the ingester)
		ids := k.pick(1 + k.rng.IntN(8))
		p := db.DevicesApplyConnectivityParams{Ids: ids}
		for _, id := range ids {
			k.keys[id] += 1 + int64(k.rng.IntN(2))
			p.Keys = append(p.Keys, k.keys[id])
			p.Connected = append(p.Connected, k.rng.IntN(3) > 0)
			p.Ats = append(p.Ats, now)
		}
		_, err := q.DevicesApplyConnectivity(ctx, p)
		return err
	case 2, 3: // reported states of a batch (the ingester)
		ids := k.pick(1 + k.rng.IntN(8))
		p := db.DevicesApplyStateParams{Ids: ids}
		for _, id := range ids {
			k.seqs[id]++
			rel := k.w.releases[k.rng.IntN(len(k.w.releases))]
			p.Seqs = append(p.Seqs, k.seqs[id])
			p.Reported = append(p.Reported, k.reported(k.seqs[id], rel))
			if rel == uuid.Nil {
				p.RunningReleaseIds = append(p.RunningReleaseIds, "")
			} else {
				p.RunningReleaseIds = append(p.RunningReleaseIds, rel.String())
			}
			p.OsVersions = append(p.OsVersions, "os")
			p.AgentVersions = append(p.AgentVersions, "1.0.0")
			p.Ats = append(p.Ats, now)
		}
		return q.DevicesApplyState(ctx, p)
	case 4: // traffic alone (the ingester's touch): changes no count
		ids := k.pick(1 + k.rng.IntN(8))
		ats := make([]time.Time, len(ids))
		for i := range ats {
			ats[i] = now
		}
		return q.DevicesTouch(ctx, db.DevicesTouchParams{Ids: ids, Ats: ats})
	case 5: // a state over HTTP
		ids := k.pick(1)
		if len(ids) == 0 {
			return nil
		}
		k.seqs[ids[0]]++
		rel := k.w.releases[k.rng.IntN(len(k.w.releases))]
		_, err := q.DeviceReport(ctx, db.DeviceReportParams{ID: ids[0], Seq: k.seqs[ids[0]],
			Reported: []byte(k.reported(k.seqs[ids[0]], rel)), RunningReleaseID: uuid.NullUUID{UUID: rel, Valid: rel != uuid.Nil}})
		return err
	case 6: // a move to the other fleet of the organisation (leaves the rollout)
		ids := k.pick(1)
		if len(ids) == 0 {
			return nil
		}
		d, err := q.DeviceGet(ctx, ids[0])
		if errors.Is(err, pgx.ErrNoRows) { // deleted earlier in tx
			return nil
		} else if err != nil {
			return err
		}
		to := k.w.a.ID
		if d.FleetID == to {
			to = k.w.b.ID
		}
		_, err = q.DeviceUpdate(ctx, db.DeviceUpdateParams{ID: d.ID, Name: d.Name, FleetID: to, Tags: d.Tags})
		return err
	case 7: // delete one, or register one
		if k.rng.IntN(2) == 0 && len(k.devices) > 5 {
			ids := k.pick(1)
			if _, err := q.DeviceDelete(ctx, ids[0]); err != nil {
				return err
			}
			*committed = append(*committed, func() { k.devices = slices.DeleteFunc(k.devices, func(d uuid.UUID) bool { return d == ids[0] }) })
			return nil
		}
		id := uuid.New()
		fleet := []uuid.UUID{k.w.a.ID, k.w.b.ID}[k.rng.IntN(2)]
		_, err := q.DeviceRegister(ctx, db.DeviceRegisterParams{ID: id, OrgID: k.w.a.Org, FleetID: fleet, Name: "new-" + id.String()[:8],
			DeviceType: "generic-amd64", Architecture: "amd64", PublicKey: make([]byte, 32)})
		*committed = append(*committed, func() { k.devices = append(k.devices, id) })
		return err
	default: // rollout devices change state or group (the scheduler)
		ids := k.pick(1 + k.rng.IntN(8))
		states := make([]string, len(ids))
		for i := range states {
			states[i] = rollout.DeviceStates[k.rng.IntN(len(rollout.DeviceStates))]
		}
		sql := `UPDATE rollout_devices rd SET state = u.state FROM unnest($1::uuid[], $2::text[]) AS u(id, state) WHERE rd.device_id = u.id`
		if op == 9 && k.rng.IntN(3) == 0 {
			sql = `UPDATE rollout_devices rd SET group_idx = 1 - group_idx FROM unnest($1::uuid[], $2::text[]) AS u(id, state) WHERE rd.device_id = u.id`
		}
		_, err := tx.Exec(ctx, sql, ids, states)
		return err
	}
}

// run makes steps transactions of one to three changes each; one in eight
// is rolled back.
func (k *worker) run(ctx context.Context, steps int) error {
	for range steps {
		var committed []func()
		tx, err := k.w.pool.Begin(ctx)
		if err != nil {
			return err
		}
		for range 1 + k.rng.IntN(3) {
			if err := k.step(ctx, tx, &committed); err != nil {
				_ = tx.Rollback(ctx)
				return err
			}
		}
		if k.rng.IntN(8) == 0 {
			if err := tx.Rollback(ctx); err != nil {
				return err
			}
			continue
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		for _, f := range committed {
			f()
		}
	}
	return nil
}

// Workers change devices and rollout devices concurrently, as the API, the
// ingester and the scheduler do (moves, deletes, registrations, connects,
// reports, rolled-back transactions), while the janitor compacts: at every
// moment, and after, the summary equals a full count.
func TestSummaryEqualsFullCount(t *testing.T) {
	w := newWorld(t)
	ctx := t.Context()
	if err := compare(ctx, w.pool); err != nil {
		t.Fatalf("before any change: %v", err)
	}
	const workers, steps = 4, 120
	var all []uuid.UUID
	all = append(append(all, w.a.Devices...), w.b.Devices...)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ks := make([]*worker, workers)
	for i := range ks {
		ks[i] = &worker{w: w, rng: rand.New(rand.NewPCG(seed, uint64(i))), keys: map[uuid.UUID]int64{}, seqs: map[uuid.UUID]int64{}}
	}
	for i, id := range all {
		ks[i%workers].devices = append(ks[i%workers].devices, id)
	}

	writers, wctx := errgroup.WithContext(ctx)
	for _, k := range ks {
		writers.Go(func() error { return k.run(wctx, steps) })
	}
	var done atomic.Bool
	var compactions, comparisons atomic.Int64
	watchers, cctx := errgroup.WithContext(ctx)
	watchers.Go(func() error {
		for !done.Load() {
			if _, err := janitor.CompactSummary(cctx, w.pool); err != nil {
				return err
			}
			compactions.Add(1)
		}
		return nil
	})
	watchers.Go(func() error {
		for !done.Load() {
			if err := compare(cctx, w.pool); err != nil {
				return fmt.Errorf("while changes go on: %w", err)
			}
			comparisons.Add(1)
		}
		return nil
	})
	werr := writers.Wait()
	done.Store(true)
	if err := watchers.Wait(); err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatalf("a writer: %v", werr)
	}
	t.Logf("%d compactions and %d comparisons while %d workers made %d transactions each", compactions.Load(), comparisons.Load(), workers, steps)

	var pending int64
	if err := w.pool.QueryRow(ctx, `SELECT count(*) FROM device_summary_deltas`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if err := compare(ctx, w.pool); err != nil {
		t.Fatalf("with %d deltas pending: %v", pending, err)
	}
	if _, err := janitor.CompactSummary(ctx, w.pool); err != nil {
		t.Fatal(err)
	}
	var left int64
	if err := w.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM device_summary_deltas) + (SELECT count(*) FROM rollout_summary_deltas)
		+ (SELECT count(*) FROM device_summary WHERE devices = 0)`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d deltas or empty counts left after a compaction, want 0", left)
	}
	if err := compare(ctx, w.pool); err != nil {
		t.Fatalf("after compaction: %v", err)
	}

	// A rollout that ends leaves the summary; its counts stay right if it
	// is deleted with its devices.
	if _, err := w.pool.Exec(ctx, `UPDATE rollouts SET state = 'finished', ended_at = now()`); err != nil {
		t.Fatal(err)
	}
	if err := compare(ctx, w.pool); err != nil {
		t.Fatalf("after the rollout finished: %v", err)
	}
	if _, err := w.pool.Exec(ctx, `DELETE FROM rollouts`); err != nil {
		t.Fatal(err)
	}
	if _, err := janitor.CompactSummary(ctx, w.pool); err != nil {
		t.Fatal(err)
	}
	if err := w.pool.QueryRow(ctx, `SELECT count(*) FROM rollout_summary`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rollout counts left after the rollouts were deleted, want 0", left)
	}
}

// The update status rule of the README, on the function the counters use.
func TestUpdateStatusRule(t *testing.T) {
	pool := pgtest.Pool(t)
	seq := int64(3)
	for _, c := range []struct {
		name     string
		seq      *int64
		reported string
		want     string
	}{
		{"never reported", nil, `{}`, "unknown"},
		{"no services", &seq, `{"seq": 3}`, "idle"},
		{"empty services", &seq, `{"seq": 3, "services": []}`, "idle"},
		{"all running", &seq, `{"seq": 3, "services": [{"name": "a", "status": "running"}, {"name": "b", "status": "exited"}]}`, "idle"},
		{"one downloading", &seq, `{"seq": 3, "services": [{"name": "a", "status": "running"}, {"name": "b", "status": "downloading"}]}`, "updating"},
		{"one installing", &seq, `{"seq": 3, "services": [{"name": "a", "status": "installing"}]}`, "updating"},
		{"failed beats updating", &seq, `{"seq": 3, "services": [{"name": "a", "status": "installing"}, {"name": "b", "status": "failed"}]}`, "failed"},
		{"stopped is idle", &seq, `{"seq": 3, "services": [{"name": "a", "status": "stopped"}]}`, "idle"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got string
			if err := pool.QueryRow(t.Context(), `SELECT flock_device_update_status($1, $2::jsonb)`, c.seq, c.reported).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("flock_device_update_status = %q, want %q", got, c.want)
			}
			if go_ := updateStatus(c.seq, []byte(c.reported)); go_ != c.want {
				t.Errorf("the test's own rule says %q, want %q", go_, c.want)
			}
		})
	}
}
