package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/nudger"
	"github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

var quiet = slog.New(slog.DiscardHandler)

// t0 is the tests' fake clock's start, a whole minute.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// harness is a database with a seeded fleet, the embedded Kafka, the
// nudger, and one scheduler whose consumer runs and whose steps the test
// makes with its own clock.
type harness struct {
	t     *testing.T
	ctx   context.Context
	pool  *pgxpool.Pool
	bus   *bus.Bus
	f     schedulertest.Fleet
	s     *Scheduler
	group string
}

func newHarness(t *testing.T, devices int, tags func(int) map[string]string) *harness {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	b, err := bus.Open(ctx, bus.Config{Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	f, err := schedulertest.Seed(ctx, pool, devices, tags)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, pool: pool, bus: b, f: f, group: "scheduler-test-" + uuid.NewString()}
	h.s = h.newScheduler()
	return h
}

func (h *harness) newScheduler() *Scheduler {
	h.t.Helper()
	n := nudger.New(h.pool, h.bus, quiet, nil)
	h.run("nudger", n.Run)
	s, err := New(Config{Group: h.group, Log: quiet, SessionTimeout: 6 * time.Second, Now: func() time.Time { return t0 }},
		Deps{Pool: h.pool, Bus: h.bus, Nudge: n, Audit: audit.NewRecorder(nil)})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// run runs fn until the test ends; it must then return nil.
func (h *harness) run(name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("%s: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			h.t.Errorf("%s did not stop within 20s", name)
		}
	})
}

// consume runs the scheduler's consumer and waits until it is in its group.
func (h *harness) consume() {
	h.t.Helper()
	h.run("consumer", h.s.Consume)
	testutil.Eventually(h.t, "the consumer in its group", func() error { return h.s.Ready(h.ctx) })
}

func (h *harness) start(r schedulertest.Rollout) uuid.UUID {
	h.t.Helper()
	id, err := schedulertest.Start(h.ctx, h.pool, h.f, r)
	if err != nil {
		h.t.Fatal(err)
	}
	return id
}

// step steps every rollout at now.
func (h *harness) step(now time.Time) {
	h.t.Helper()
	if _, err := h.s.Step(h.ctx, now); err != nil {
		h.t.Fatalf("step at %s: %v", now.Format(time.TimeOnly), err)
	}
}

// send publishes records and waits until the consumer group has committed
// everything published so far: every record has been handled.
func (h *harness) send(recs ...bus.Record) {
	h.t.Helper()
	if err := h.bus.Publish(h.ctx, recs...); err != nil {
		h.t.Fatal(err)
	}
	h.drained()
}

// drained waits until the group's committed offsets reach the end of every
// partition of its topics.
func (h *harness) drained() {
	h.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.bus.Brokers()...))
	if err != nil {
		h.t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	testutil.Eventually(h.t, "every record handled", func() error {
		ends, err := adm.ListEndOffsets(h.ctx, Topics...)
		if err != nil {
			return err
		}
		committed, err := adm.FetchOffsets(h.ctx, h.group)
		if err != nil {
			return err
		}
		var behind error
		ends.Each(func(o kadm.ListedOffset) {
			if o.Offset == 0 {
				return
			}
			c, ok := committed.Lookup(o.Topic, o.Partition)
			if !ok || c.At < o.Offset {
				behind = fmt.Errorf("%s/%d committed %d of %d", o.Topic, o.Partition, c.At, o.Offset)
			}
		})
		return behind
	})
}

// devices returns the rollout's rows by device.
func (h *harness) devices(id uuid.UUID) map[uuid.UUID]db.RolloutDevice {
	h.t.Helper()
	rows, err := db.New(h.pool).RolloutDeviceList(h.ctx, db.RolloutDeviceListParams{RolloutID: id, MaxRows: 1_000_000})
	if err != nil {
		h.t.Fatal(err)
	}
	out := make(map[uuid.UUID]db.RolloutDevice, len(rows))
	for _, r := range rows {
		out[r.DeviceID] = r
	}
	return out
}

func (h *harness) rollout(id uuid.UUID) db.Rollout {
	h.t.Helper()
	r, err := db.New(h.pool).RolloutGet(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h *harness) groups(id uuid.UUID) []db.RolloutGroup {
	h.t.Helper()
	gs, err := db.New(h.pool).RolloutGroups(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	return gs
}

// states counts the rollout's devices by state.
func (h *harness) states(id uuid.UUID) map[string]int {
	out := map[string]int{}
	for _, d := range h.devices(id) {
		out[d.State]++
	}
	return out
}

// wantState fails unless device's row is in state.
func (h *harness) wantState(id, device uuid.UUID, state string) db.RolloutDevice {
	h.t.Helper()
	d, ok := h.devices(id)[device]
	if !ok {
		h.t.Fatalf("device %s is not in the rollout", device)
	}
	if d.State != state {
		h.t.Fatalf("device %s is %s (%q), want %s", device, d.State, d.Reason, state)
	}
	return d
}

// events returns the scheduler's events of the rollout in the outbox, in order, as
// "event@group".
func (h *harness) events(id uuid.UUID) []string {
	h.t.Helper()
	rows, err := h.pool.Query(h.ctx, `SELECT record->>'event', coalesce(record->>'group', '-') FROM rollout_events WHERE rollout_id = $1 AND record->>'actor' = 'scheduler' ORDER BY seq`, id)
	if err != nil {
		h.t.Fatal(err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var ev, g string
		err := r.Scan(&ev, &g)
		return ev + "@" + g, err
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return evs
}

func (h *harness) exec(sql string, args ...any) {
	h.t.Helper()
	if _, err := h.pool.Exec(h.ctx, sql, args...); err != nil {
		h.t.Fatal(err)
	}
}

// oneGroup is a rollout of every device in one group that succeeds when
// every device does.
func oneGroup(settle time.Duration) schedulertest.Rollout {
	return schedulertest.Rollout{Spec: rollout.Spec{SettleSeconds: int(settle / time.Second)},
		Groups: []rollout.GroupSpec{{SuccessThreshold: 100, DeviceTimeoutSeconds: 600}}}
}

func ptr[T any](v T) *T { return &v }

var errNotYet = errors.New("not yet")
