package janitor_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/janitor"
	"github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

// The first sweep, at start, deletes keys older than a day and keeps the
// rest.
func TestRunForgetsDayOldKeys(t *testing.T) {
	pool := pgtest.Pool(t)
	for _, k := range []struct {
		key, age string
	}{{"old", "25 hours"}, {"fresh", "1 hour"}} {
		if _, err := pool.Exec(t.Context(), `INSERT INTO idempotency_keys (principal, key, operation, request_hash, status, body, created_at)
			VALUES ('user:1', $1, 'org:create', '\x00', 201, '{}', now() - $2::interval)`, k.key, k.age); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- janitor.Run(ctx, pool, slog.New(slog.DiscardHandler)) }()
	testutil.Eventually(t, "the day-old key gone", func() error {
		var keys []string
		rows, err := pool.Query(t.Context(), `SELECT key FROM idempotency_keys ORDER BY key`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				return err
			}
			keys = append(keys, k)
		}
		if len(keys) != 1 || keys[0] != "fresh" {
			return fmt.Errorf("keys %v, want [fresh]", keys)
		}
		return rows.Err()
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil when stopped", err)
	}
}

// Outbox rows go a week after they were published; unpublished ones stay
// however old, or an outage of Kafka would lose events.
func TestRunForgetsPublishedRolloutEvents(t *testing.T) {
	pool := pgtest.Pool(t)
	ctx := t.Context()
	f, err := schedulertest.Seed(ctx, pool, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rollout string
	if err := pool.QueryRow(ctx, `INSERT INTO rollouts (org_id, fleet_id, release_id, membership, spec)
		VALUES ($1, $2, $3, 'snapshot', '{}') RETURNING id`, f.Org, f.ID, f.New).Scan(&rollout); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct{ name, published, created string }{
		{"old published", "8 days", "8 days"}, {"fresh published", "1 hour", "1 hour"}, {"old unpublished", "", "30 days"},
	} {
		var published any
		if e.published != "" {
			published = e.published
		}
		if _, err := pool.Exec(ctx, `INSERT INTO rollout_events (id, rollout_id, record, created_at, published_at)
			VALUES (gen_random_uuid(), $1, jsonb_build_object('name', $2::text), now() - $3::interval, now() - $4::interval)`,
			rollout, e.name, e.created, published); err != nil {
			t.Fatal(err)
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- janitor.Run(runCtx, pool, slog.New(slog.DiscardHandler)) }()
	testutil.Eventually(t, "the week-old published event gone", func() error {
		var names []string
		rows, err := pool.Query(ctx, `SELECT record->>'name' FROM rollout_events ORDER BY seq`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			names = append(names, n)
		}
		if fmt.Sprint(names) != "[fresh published old unpublished]" {
			return fmt.Errorf("events %v", names)
		}
		return rows.Err()
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// With a telemetry store, a sweep drops what is older than the retention
// and keeps the rest; a zero retention keeps everything.
func TestRunDropsTelemetryPastRetention(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention time.Duration
		want      []string
	}{
		{"a day", 24 * time.Hour, []string{"fresh"}},
		{"for ever", 0, []string{"fresh", "old"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := pgtest.Pool(t)
			store := telemetry.NewPostgres(pool)
			dev, org := uuid.New(), uuid.New()
			now := time.Now().UTC()
			if err := store.WriteSamples(t.Context(), []telemetry.Sample{
				{DeviceID: dev, OrgID: org, TS: now.Add(-48 * time.Hour), Name: "old", Value: 1},
				{DeviceID: dev, OrgID: org, TS: now.Add(-time.Hour), Name: "fresh", Value: 2},
			}); err != nil {
				t.Fatal(err)
			}
			// The telemetry sweep runs before the idempotency keys' in each
			// pass, so this day-old key gone means the pass did both.
			if _, err := pool.Exec(t.Context(), `INSERT INTO idempotency_keys (principal, key, operation, request_hash, status, body, created_at)
				VALUES ('user:1', 'marker', 'org:create', '\x00', 201, '{}', now() - interval '25 hours')`); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- janitor.Run(ctx, pool, slog.New(slog.DiscardHandler), janitor.WithTelemetry(store, tc.retention))
			}()
			testutil.Eventually(t, "the first sweep done", func() error {
				var n int
				if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys`).Scan(&n); err != nil {
					return err
				}
				if n != 0 {
					return fmt.Errorf("%d keys left", n)
				}
				return nil
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v", err)
			}
			names, err := store.MetricNames(t.Context(), dev)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range names {
				got = append(got, m.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("metrics left %v, want %v", got, tc.want)
			}
		})
	}
}
