package janitor_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

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
