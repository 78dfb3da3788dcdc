package nudger

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/targetstate"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	"github.com/flock-io/flock-api/workers/nudger/nudgertest"
)

var quiet = slog.New(slog.DiscardHandler)

const services = `[{"name": "app", "images": {"amd64": {"image": "registry.example.com/app:1", "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}]`

type fixture struct {
	org, fleet, other uuid.UUID
	devices           []uuid.UUID // of fleet
	stranger          uuid.UUID   // the one device of other
}

// seed makes an organisation with a fleet of n devices (one with a variable
// of its own) and another fleet with one device.
func seed(t *testing.T, pool *pgxpool.Pool, n int) fixture {
	t.Helper()
	ctx := context.Background()
	var f fixture
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('acme') RETURNING id`).Scan(&f.org))
	fleet := func(name string, devices int) (uuid.UUID, []uuid.UUID) {
		var id uuid.UUID
		must(pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, $2, 'amd64') RETURNING id`,
			f.org, name).Scan(&id))
		_, err := pool.Exec(ctx, `INSERT INTO releases (org_id, fleet_id, version, status, services, finalized_at)
			VALUES ($1, $2, '1.0', 'final', $3, now())`, f.org, id, services)
		must(err)
		_, err = pool.Exec(ctx, `INSERT INTO config_variables (org_id, fleet_id, name, value) VALUES ($1, $2, 'LEVEL', '1')`, f.org, id)
		must(err)
		rows, err := pool.Query(ctx, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
			SELECT gen_random_uuid(), $1, $2, 'd' || i, 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex')
			FROM generate_series(1, $3::int) i RETURNING id`, f.org, id, devices)
		must(err)
		var ids []uuid.UUID
		for rows.Next() {
			var d uuid.UUID
			must(rows.Scan(&d))
			ids = append(ids, d)
		}
		must(rows.Err())
		return id, ids
	}
	f.fleet, f.devices = fleet("sensors", n)
	var others []uuid.UUID
	f.other, others = fleet("cameras", 1)
	f.stranger = others[0]
	_, err := pool.Exec(ctx, `INSERT INTO config_variables (org_id, fleet_id, device_id, name, value) VALUES ($1, $2, $3, 'LEVEL', '2')`,
		f.org, f.fleet, f.devices[0])
	must(err)
	return f
}

// recorder is a publisher that keeps what it is given and can be told to fail.
type recorder struct {
	mu      sync.Mutex
	batches [][]bus.Record
	fail    func(call int) error
	calls   int
}

func (r *recorder) publish(ctx context.Context, recs ...bus.Record) error {
	r.mu.Lock()
	r.calls++
	call := r.calls
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		if err := fail(call); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, append([]bus.Record(nil), recs...))
	return nil
}

func (r *recorder) records() []bus.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bus.Record
	for _, b := range r.batches {
		out = append(out, b...)
	}
	return out
}

func run(t *testing.T, s *Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop within 5s of cancel")
		}
	})
}

// A burst of changes to a fleet and some of its devices is computed in one
// pass; every device of the fleet gets one nudge carrying the version the
// state endpoint serves, published a page at a time; other fleets' devices
// get none.
func TestFleetNudgesEachDeviceOnceInPages(t *testing.T) {
	pool := pgtest.Pool(t)
	f := seed(t, pool, 20)
	rec := &recorder{}
	s := newService(pool, rec.publish, quiet)
	s.pageSize = 7
	for range 100 {
		s.FleetChanged(f.fleet)
		s.DevicesChanged(f.devices[0], f.devices[1])
	}
	if fl, dv := s.pending(); fl != 1 || dv != 2 {
		t.Fatalf("pending = %d fleets, %d devices; want 1, 2 (coalesced)", fl, dv)
	}
	run(t, s)
	testutil.Eventually(t, "20 nudges", testutil.Until(func() bool { return len(rec.records()) >= 20 }))
	// Passes run one at a time: once a later pass has nudged the other
	// fleet's device, the first pass published all it ever will.
	s.DevicesChanged(f.stranger)
	testutil.Eventually(t, "the marker pass", testutil.Until(func() bool { return len(rec.records()) >= 21 }))
	records := rec.records()
	if len(records) != 21 || !bytesEqual(records[20].Key, f.stranger) {
		t.Fatalf("%d records, the last for %s; want 20 for the fleet, then the marker", len(records), records[len(records)-1].Key)
	}
	records = records[:20]

	v, err := nudgertest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID]string{}
	for _, r := range records {
		id, version, err := v.Check(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := got[id]; dup {
			t.Fatalf("device %s nudged twice", id)
		}
		got[id] = version
	}
	if len(got) != 20 {
		t.Fatalf("nudged %d devices, want 20", len(got))
	}
	if _, ok := got[f.stranger]; ok {
		t.Fatal("a device of another fleet was nudged")
	}
	for _, d := range f.devices {
		want, err := targetstate.ForDevice(context.Background(), pool, d)
		if err != nil {
			t.Fatal(err)
		}
		if got[d] != want.Version {
			t.Fatalf("device %s: nudge version %q, state version %q", d, got[d], want.Version)
		}
	}
	if got[f.devices[0]] == got[f.devices[2]] {
		t.Fatal("a device with a variable of its own has its fleet-mates' version")
	}
	rec.mu.Lock()
	for _, b := range rec.batches {
		if len(b) > 7 {
			t.Errorf("a batch of %d records; pages are 7", len(b))
		}
	}
	rec.mu.Unlock()
	if n := promtest.Value(s.passes); n != 2 {
		t.Fatalf("passes = %v, want 2 (the burst, coalesced, and the marker)", n)
	}
	if n := promtest.Value(s.published); n != 21 {
		t.Fatalf("published = %v, want 21", n)
	}
}

// bytesEqual reports whether a record key names device.
func bytesEqual(key []byte, device uuid.UUID) bool { return string(key) == device.String() }

func TestUnknownDevicesAreSkipped(t *testing.T) {
	pool := pgtest.Pool(t)
	rec := &recorder{}
	s := newService(pool, rec.publish, quiet)
	f := seed(t, pool, 1)
	run(t, s)
	s.DevicesChanged(uuid.New())
	s.FleetChanged(uuid.New())
	testutil.Eventually(t, "a pass", testutil.Until(func() bool { return promtest.Value(s.passes) == 1 }))
	// Passes run one at a time: the nudge of a device that exists, asked
	// for after the first pass began, comes after all the first one sent.
	s.DevicesChanged(f.devices[0])
	testutil.Eventually(t, "the marker's nudge", testutil.Until(func() bool { return len(rec.records()) > 0 }))
	if recs := rec.records(); len(recs) != 1 || !bytesEqual(recs[0].Key, f.devices[0]) {
		t.Fatalf("%d nudges, want only the marker's: nudges for devices that do not exist", len(recs))
	}
}

func TestPublishIsRetriedThenGivenUp(t *testing.T) {
	pool := pgtest.Pool(t)
	f := seed(t, pool, 1)
	rec := &recorder{}
	s := newService(pool, rec.publish, quiet)
	s.retryBase = time.Millisecond
	run(t, s)

	// Two failures, then the broker takes it.
	rec.mu.Lock()
	rec.fail = func(call int) error {
		if call <= 2 {
			return errors.New("broker unavailable")
		}
		return nil
	}
	rec.mu.Unlock()
	s.DevicesChanged(f.devices[0])
	testutil.Eventually(t, "the nudge after two failures", testutil.Until(func() bool { return len(rec.records()) == 1 }))
	if n := promtest.Value(s.failures.WithLabelValues(stagePublish)); n != 0 {
		t.Fatalf("failures = %v after a success", n)
	}

	// Always failing: 1 + retries tries, then counted and dropped.
	rec.mu.Lock()
	rec.calls, rec.fail = 0, func(int) error { return errors.New("broker unavailable") }
	rec.mu.Unlock()
	s.DevicesChanged(f.devices[0])
	testutil.Eventually(t, "a counted failure", testutil.Until(func() bool { return promtest.Value(s.failures.WithLabelValues(stagePublish)) == 1 }))
	rec.mu.Lock()
	calls := rec.calls
	rec.mu.Unlock()
	if calls != 1+retries {
		t.Fatalf("publish tried %d times, want %d", calls, 1+retries)
	}
	if n := promtest.Value(s.published); n != 1 {
		t.Fatalf("published = %v, want 1", n)
	}
}

// Cancelling Run while a publish hangs stops it promptly, counting nothing
// as failed.
func TestRunStopsWhilePublishing(t *testing.T) {
	pool := pgtest.Pool(t)
	f := seed(t, pool, 1)
	started := make(chan struct{}, 1)
	s := newService(pool, func(ctx context.Context, _ ...bus.Record) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	s.FleetChanged(f.fleet)
	<-started
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not stop")
	}
	for _, stage := range []string{stageList, stageLoad, stagePublish} {
		if n := promtest.Value(s.failures.WithLabelValues(stage)); n != 0 {
			t.Fatalf("failures{%s} = %v on shutdown", stage, n)
		}
	}
}

// Through the real bus (embedded kfake): the record on
// flock.device.commands.v1 is keyed by the device, matches the AsyncAPI
// schema and carries the device's state version.
func TestNudgeOnTheBus(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	f := seed(t, pool, 2)
	b, err := bus.Open(ctx, bus.Config{Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	reg := prometheus.NewRegistry()
	s := New(pool, b, quiet, reg)
	run(t, s)
	c := nudgertest.Consume(t, b)

	s.DevicesChanged(f.devices[1])
	got := c.Next(t, f.devices[1], 20*time.Second)
	want, err := targetstate.ForDevice(ctx, pool, f.devices[1])
	if err != nil {
		t.Fatal(err)
	}
	if got != want.Version {
		t.Fatalf("nudge version %q, state version %q", got, want.Version)
	}
	if n := promtest.Count(t, reg, "flock_nudges_published_total"); n != 1 {
		t.Fatalf("flock_nudges_published_total series = %d (%v)", n, err)
	}
	if v := promtest.Value(s.published); v != 1 {
		t.Fatalf("published = %v", v)
	}
}

func TestNilNotifier(t *testing.T) {
	ctx := context.Background()
	FleetAfterCommit(ctx, nil, uuid.New())
	DevicesAfterCommit(ctx, nil, uuid.New())
	var s *Service
	s.FleetChanged(uuid.New())
	s.DevicesChanged(uuid.New())
}
