package janitor

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
)

// CompactEvery is how often the janitor folds the fleet summary's deltas
// into its counts. A summary read adds up the deltas still pending, so the
// interval bounds how many it reads, not how fresh it is.
const CompactEvery = 5 * time.Second

// CompactSummary folds the pending deltas of the fleet summary counters
// into the counts (migrations/00011_device_summary.sql) and forgets counts
// that reached zero. It returns how many count rows it wrote; 0 with no
// error also when another replica was compacting.
func CompactSummary(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		locked, err := q.SummaryCompactLock(ctx)
		if err != nil || !locked {
			return err
		}
		d, err := q.SummaryCompactDevices(ctx)
		if err != nil {
			return fmt.Errorf("fold device deltas: %w", err)
		}
		r, err := q.SummaryCompactRollouts(ctx)
		if err != nil {
			return fmt.Errorf("fold rollout deltas: %w", err)
		}
		if err := q.SummaryForgetEmptyDevices(ctx); err != nil {
			return fmt.Errorf("forget empty device counts: %w", err)
		}
		if err := q.SummaryForgetEmptyRollouts(ctx); err != nil {
			return fmt.Errorf("forget empty rollout counts: %w", err)
		}
		n = d + r
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("compact summary counters: %w", err)
	}
	return n, nil
}
