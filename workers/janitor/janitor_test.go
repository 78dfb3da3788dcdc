package janitor_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/janitor"
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
