// Package janitor forgets what the API keeps only for a while: idempotency
// keys (and their stored responses) older than a day, rollout events a
// week after the scheduler published them from the outbox, and, when given
// WithTelemetry, telemetry older than its retention. It also folds
// the fleet summary's counter deltas into their counts every CompactEvery.
// Every api replica may run it; the deletes are idempotent.
package janitor

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// Every is how often the janitor sweeps.
const Every = time.Hour

// Option adds work to a janitor.
type Option func(*options)

type options struct {
	telemetry telemetry.Store
	retention time.Duration
}

// WithTelemetry makes each sweep drop what store holds that is older than
// retention (samples, log lines, connectivity and update events); a zero
// retention keeps everything.
func WithTelemetry(store telemetry.Store, retention time.Duration) Option {
	return func(o *options) { o.telemetry, o.retention = store, retention }
}

// Run sweeps at once and then every Every, and compacts the summary
// counters every CompactEvery, until ctx ends. A failed sweep or compaction
// is logged and tried again at the next tick: nothing waits on it.
func Run(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	t := time.NewTicker(Every)
	defer t.Stop()
	compact := time.NewTicker(CompactEvery)
	defer compact.Stop()
	for {
		q := db.New(pool)
		for _, sweep := range []struct {
			what string
			run  func(context.Context) (int64, error)
		}{
			{"telemetry past its retention", func(ctx context.Context) (int64, error) {
				if o.telemetry == nil || o.retention == 0 {
					return 0, nil
				}
				return o.telemetry.DeleteBefore(ctx, time.Now().Add(-o.retention))
			}},
			{"expired idempotency keys", q.IdempotencyDeleteExpired},
			{"published rollout events", q.RolloutEventsForget},
		} {
			n, err := sweep.run(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("delete "+sweep.what, "error", err.Error())
			case n > 0:
				log.Info("deleted "+sweep.what, "count", n)
			}
		}
		for swept := false; !swept; {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				swept = true
			case <-compact.C:
				if _, err := CompactSummary(ctx, pool); err != nil && ctx.Err() == nil {
					log.Warn("compact fleet summary", "error", err.Error())
				}
			}
		}
	}
}
