package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

var quiet = slog.New(slog.DiscardHandler)

func TestSupports(t *testing.T) {
	for _, tt := range []struct {
		agent, typ string
		want       bool
	}{
		{"1.0.0", TypeReboot, true},
		{"1.0.0", TypeIdentify, true},
		{"1.0.0", TypeRestartService, false},
		{"1.1.0", TypeRestartService, true},
		{"v1.1.0", TypeRestartService, true},
		{"flock-simulate 1.1.0", TypeRestartService, true},
		{"1.1.0-rc.1", TypeRestartService, false},
		{"1.1.0+build.7", TypeRestartService, true},
		{"1.10.0", TypeRestartService, true},
		{"2.0.0", TypeRestartService, true},
		{"0.9.9", TypeReboot, false},
		{"1.0", TypeReboot, false},
		{"01.0.0", TypeReboot, false},
		{"", TypeIdentify, false},
		{"latest", TypeIdentify, false},
		{"1.1.0", "self_destruct", false},
	} {
		if got := Supports(tt.agent, tt.typ); got != tt.want {
			t.Errorf("Supports(%q, %s) = %v, want %v", tt.agent, tt.typ, got, tt.want)
		}
	}
}

// fixture is an organisation with a fleet of two devices.
type fixture struct {
	pool          *pgxpool.Pool
	org, fleet    uuid.UUID
	device, other uuid.UUID
}

func seed(t *testing.T) fixture {
	t.Helper()
	ctx := context.Background()
	f := fixture{pool: pgtest.Pool(t), device: uuid.New(), other: uuid.New()}
	if err := f.pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('acme') RETURNING id`).Scan(&f.org); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'f', 'amd64') RETURNING id`, f.org).Scan(&f.fleet); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uuid.UUID{f.device, f.other} {
		if _, err := f.pool.Exec(ctx, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, agent_version)
			VALUES ($1, $2, $3, 'd', 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'), '1.1.0')`, id, f.org, f.fleet); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// command stores a pending command for device, as the API does.
func (f fixture) command(t *testing.T, device uuid.UUID, typ string) db.Command {
	t.Helper()
	c, err := db.New(f.pool).CommandCreate(context.Background(), db.CommandCreateParams{OrgID: f.org, FleetID: f.fleet, DeviceID: device,
		Type: typ, ExpiresIn: 3600, CreatedByType: "user", CreatedByID: uuid.New(), CreatedByLabel: "dev@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f fixture) get(t *testing.T, id uuid.UUID) db.Command {
	t.Helper()
	c, err := db.New(f.pool).CommandGet(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func openBus(t *testing.T) *bus.Bus {
	t.Helper()
	b, err := bus.Open(context.Background(), bus.Config{Partitions: 2, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// recorder keeps every record of some topics, read by a consumer group of
// its own that stops with the test.
type recorder struct {
	mu   sync.Mutex
	recs []bus.Record
	err  error
}

func recordTopics(t *testing.T, b *bus.Bus, topics ...string) *recorder {
	t.Helper()
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := b.Consume(ctx, "test-"+uuid.NewString(), topics, func(_ context.Context, recs []bus.Record) error {
			r.mu.Lock()
			r.recs = append(r.recs, recs...)
			r.mu.Unlock()
			return nil
		})
		r.mu.Lock()
		r.err = err
		r.mu.Unlock()
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// events are the command events recorded so far, in order per device.
func (r *recorder) events(t *testing.T) []events.CommandEventRecord {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		t.Fatalf("consumer: %v", r.err)
	}
	var out []events.CommandEventRecord
	for _, rec := range r.recs {
		if rec.Topic != bus.TopicCommandEvents {
			continue
		}
		var ev events.CommandEventRecord
		if err := json.Unmarshal(rec.Value, &ev); err != nil {
			t.Fatalf("command event %s: %v", rec.Value, err)
		}
		out = append(out, ev)
	}
	return out
}

// sent are the command ids sent towards devices so far.
func (r *recorder) sent(t *testing.T) []string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.recs {
		if rec.Topic != bus.TopicDeviceCommands {
			continue
		}
		var dc events.DeviceCommandRecord
		if err := json.Unmarshal(rec.Value, &dc); err != nil || dc.Command == nil {
			t.Fatalf("command record %s: %v", rec.Value, err)
		}
		out = append(out, dc.Command.Id)
	}
	return out
}

// statuses are the statuses of command id's events, in order.
func statuses(evs []events.CommandEventRecord, id uuid.UUID) []string {
	var out []string
	for _, ev := range evs {
		if ev.CommandId == id.String() {
			out = append(out, fmt.Sprint(ev.Status.Value()))
		}
	}
	return out
}

// Answers move a command forward only, each change publishes one event with
// its stable id, and an answer that changes nothing publishes nothing.
func TestApplyResultsForwardOnly(t *testing.T) {
	f := seed(t)
	b := openBus(t)
	rec := recordTopics(t, b, bus.TopicCommandEvents)
	ctx := context.Background()
	c := f.command(t, f.device, TypeReboot)
	at := time.Now()
	apply := func(device uuid.UUID, id uuid.UUID, status, reason string) int {
		t.Helper()
		n, err := ApplyResults(ctx, f.pool, b.Publish, []Result{{Device: device, ID: id, Status: status, Error: reason, At: at}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	steps := []struct {
		name         string
		device       uuid.UUID
		status, why  string
		changed      int
		wantStatus   string
		wantComplete bool
	}{
		{"received", f.device, ResultReceived, "", 1, StatusDelivered, false},
		{"received again", f.device, ResultReceived, "", 0, StatusDelivered, false},
		{"another device's answer", f.other, ResultSucceeded, "", 0, StatusDelivered, false},
		{"succeeded", f.device, ResultSucceeded, "", 1, StatusSucceeded, true},
		{"succeeded again", f.device, ResultSucceeded, "", 0, StatusSucceeded, true},
		{"failed after success", f.device, ResultFailed, "late", 0, StatusSucceeded, true},
		{"received after success", f.device, ResultReceived, "", 0, StatusSucceeded, true},
	}
	for _, s := range steps {
		if n := apply(s.device, c.ID, s.status, s.why); n != s.changed {
			t.Errorf("%s: %d changed, want %d", s.name, n, s.changed)
		}
		got := f.get(t, c.ID)
		if got.Status != s.wantStatus || (got.CompletedAt != nil) != s.wantComplete || got.DeliveredAt == nil || got.Error != nil {
			t.Errorf("%s: command is %s (delivered %v, completed %v, error %v), want %s", s.name, got.Status, got.DeliveredAt, got.CompletedAt, got.Error, s.wantStatus)
		}
	}

	// A failure straight from pending, with its reason; and a marker whose
	// event, on the same partition (same device), comes after anything the
	// no-op answers above could have published.
	failed := f.command(t, f.device, TypeIdentify)
	if n := apply(f.device, failed.ID, ResultFailed, "no LED"); n != 1 {
		t.Fatalf("failed: %d changed", n)
	}
	if got := f.get(t, failed.ID); got.Status != StatusFailed || got.Error == nil || *got.Error != "no LED" || got.DeliveredAt == nil || got.CompletedAt == nil {
		t.Errorf("failed command: %+v", got)
	}
	testutil.Eventually(t, "the marker's event", testutil.Until(func() bool { return len(statuses(rec.events(t), failed.ID)) > 0 }))
	evs := rec.events(t)
	if got := statuses(evs, c.ID); !slices.Equal(got, []string{StatusDelivered, StatusSucceeded}) {
		t.Errorf("events of the command: %v, want delivered then succeeded", got)
	}
	if got := statuses(evs, failed.ID); !slices.Equal(got, []string{StatusFailed}) {
		t.Errorf("events of the failed command: %v", got)
	}
	for _, ev := range evs {
		id, _ := uuid.Parse(ev.CommandId)
		if want := EventID(id, fmt.Sprint(ev.Status.Value())).String(); ev.Id != want || ev.DeviceId != f.device.String() ||
			ev.OrgId != f.org.String() || ev.FleetId != f.fleet.String() {
			t.Errorf("event %+v: want id %s and the device's org and fleet", ev, want)
		}
		if ev.Status.Value() == StatusFailed && ev.Error != "no LED" {
			t.Errorf("failed event without its reason: %+v", ev)
		}
	}
}

// runService runs a Service until the test ends.
func runService(t *testing.T, f fixture, b *bus.Bus) *Service {
	t.Helper()
	s := New(f.pool, b, quiet, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

// New commands go out after commit; open ones again when their device
// connects; ones whose first send was lost go out late; and open ones past
// their expiry become expired.
func TestServiceSendsRedeliversAndExpires(t *testing.T) {
	f := seed(t)
	b := openBus(t)
	rec := recordTopics(t, b, bus.TopicCommandEvents, bus.TopicDeviceCommands)
	s := runService(t, f, b)
	ctx := context.Background()
	count := func(ids []string, id uuid.UUID) int {
		n := 0
		for _, x := range ids {
			if x == id.String() {
				n++
			}
		}
		return n
	}

	// Created: sent once, with its pending event, and noted as sent.
	c := f.command(t, f.device, TypeIdentify)
	s.Announce(ctx, c) // no transaction in ctx: committed already
	testutil.Eventually(t, "the new command sent", testutil.Until(func() bool { return count(rec.sent(t), c.ID) == 1 }))
	testutil.Eventually(t, "its pending event", testutil.Until(func() bool {
		return slices.Equal(statuses(rec.events(t), c.ID), []string{StatusPending})
	}))
	testutil.Eventually(t, "the command noted as announced", testutil.Until(func() bool { return f.get(t, c.ID).AnnouncedAt != nil }))

	// The device connects: its open command goes again; a finished one
	// and another device's do not.
	done := f.command(t, f.device, TypeReboot)
	if _, err := ApplyResults(ctx, f.pool, b.Publish, []Result{{Device: f.device, ID: done.ID, Status: ResultSucceeded, At: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	others := f.command(t, f.other, TypeReboot)
	conn, _ := json.Marshal(map[string]any{"device_id": f.device.String(), "org_id": f.org.String(), "fleet_id": f.fleet.String(),
		"event": "connected", "connection_seq": 1, "at": time.Now().UTC().Format(time.RFC3339Nano)})
	if err := b.Publish(ctx, bus.Record{Topic: bus.TopicDeviceConnectivity, Key: []byte(f.device.String()), Value: conn}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the open command sent again on connect", testutil.Until(func() bool { return count(rec.sent(t), c.ID) == 2 }))
	sent := rec.sent(t)
	if count(sent, done.ID) != 0 || count(sent, others.ID) != 0 {
		t.Errorf("sent on connect: %v; want only %s", sent, c.ID)
	}

	// A command whose first send never happened (its process stopped
	// after the commit) is sent by the pass.
	lost := f.command(t, f.device, TypeIdentify)
	if _, err := f.pool.Exec(ctx, `UPDATE commands SET created_at = now() - interval '1 minute' WHERE id = $1`, lost.ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the lost command sent late", testutil.Until(func() bool {
		return count(rec.sent(t), lost.ID) == 1 && f.get(t, lost.ID).AnnouncedAt != nil
	}))

	// Expiry: the open commands past expires_at become expired, once.
	if _, err := f.pool.Exec(ctx, `UPDATE commands SET expires_at = now() - interval '1 second' WHERE id = ANY($1)`,
		[]uuid.UUID{c.ID, done.ID}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the open command expired", testutil.Until(func() bool {
		got := f.get(t, c.ID)
		return got.Status == StatusExpired && got.CompletedAt != nil
	}))
	if got := f.get(t, done.ID); got.Status != StatusSucceeded {
		t.Errorf("a finished command past its expiry is %s, want succeeded", got.Status)
	}
	testutil.Eventually(t, "its expired event", testutil.Until(func() bool {
		return slices.Equal(statuses(rec.events(t), c.ID), []string{StatusPending, StatusExpired})
	}))
	// Not sent on connect any more.
	if err := b.Publish(ctx, bus.Record{Topic: bus.TopicDeviceConnectivity, Key: []byte(f.device.String()), Value: conn}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the lost command sent again on the second connect", testutil.Until(func() bool { return count(rec.sent(t), lost.ID) == 2 }))
	if n := count(rec.sent(t), c.ID); n != 2 {
		t.Errorf("the expired command was sent %d times, want 2 (created, first connect)", n)
	}
}

// Two ingester connections apply answers about the same commands at once,
// in opposite orders (the received of each on one, the succeeded on the
// other): neither waits for the other in a cycle, so neither fails, and
// every command ends succeeded.
func TestApplyResultsConcurrently(t *testing.T) {
	f := seed(t)
	b := openBus(t)
	ctx := context.Background()
	const n = 40
	for round := range 5 {
		var received, succeeded []Result
		for range n {
			c := f.command(t, f.device, TypeIdentify)
			received = append(received, Result{Device: f.device, ID: c.ID, Status: ResultReceived, At: time.Now()})
			succeeded = append(succeeded, Result{Device: f.device, ID: c.ID, Status: ResultSucceeded, At: time.Now()})
		}
		slices.Reverse(succeeded)
		errs := make(chan error, 2)
		var wg sync.WaitGroup
		for _, rs := range [][]Result{received, succeeded} {
			wg.Go(func() {
				_, err := ApplyResults(ctx, f.pool, b.Publish, rs)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		for _, r := range succeeded {
			if got := f.get(t, r.ID); got.Status != StatusSucceeded || got.DeliveredAt == nil {
				t.Fatalf("round %d: command %s is %s", round, r.ID, got.Status)
			}
		}
	}
}
