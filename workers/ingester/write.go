package ingester

import (
	"context"
	"fmt"
	"time"

	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/workers/commands"
)

// write writes b everywhere. A failed write is retried until it succeeds
// or ctx ends; the parts already written are not written again.
func (w *worker) write(ctx context.Context, b *batch) error {
	start := time.Now()
	attempt := 0
	err := retry.Do(ctx, writeBackoff(), func(ctx context.Context) error {
		attempt++
		var err error
		if b.out == nil {
			b.out, err = w.build(ctx, b.items)
		}
		if err == nil {
			err = b.out.write(ctx)
		}
		if err != nil {
			w.in.metrics.writeErrors.Inc()
			w.log.Error("ingester: write batch; retrying", "messages", len(b.pending), "attempt", attempt, "error", err)
			return retry.RetryableError(err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.in.metrics.batchSeconds.Observe(time.Since(start).Seconds())
	w.in.metrics.batchMessages.Observe(float64(len(b.pending)))
	return nil
}

// writeBackoff paces the retries of a write that failed: they go on until
// they succeed or ctx ends, since the messages stay unacknowledged meanwhile.
func writeBackoff() retry.Backoff {
	return retry.WithCappedDuration(retryMax, retry.NewExponential(retryMin))
}

// part is one write a batch causes, to one system. It remembers whether it
// was written, so a retry of the batch does not write it again.
type part struct {
	name  string
	write func(context.Context) error
	done  bool
}

// parts lists the writes o causes, leaving out the empty ones.
func (o *output) parts(in *Ingester) []*part {
	q := db.New(in.deps.Pool)
	var ps []*part
	add := func(name string, empty bool, write func(context.Context) error) {
		if !empty {
			ps = append(ps, &part{name: name, write: write})
		}
	}
	add("live state", len(o.states) == 0, func(ctx context.Context) error { return writeKV(ctx, in, o.states) })
	add("samples", len(o.samples) == 0, func(ctx context.Context) error { return in.deps.Telemetry.WriteSamples(ctx, o.samples) })
	add("log lines", len(o.logs) == 0, func(ctx context.Context) error { return in.deps.Telemetry.WriteLogs(ctx, o.logs) })
	add("connectivity", len(o.conns) == 0, func(ctx context.Context) error { return in.deps.Telemetry.WriteConnectivity(ctx, o.conns) })
	add("update events", len(o.updates) == 0, func(ctx context.Context) error { return in.deps.Telemetry.WriteUpdateEvents(ctx, o.updates) })
	// KV first, then PostgreSQL: the API prefers what KV says.
	add("connection status", len(o.connKV) == 0, func(ctx context.Context) error {
		if err := writeKV(ctx, in, o.connKV); err != nil {
			return err
		}
		_, err := q.DevicesApplyConnectivity(ctx, o.connPG)
		return err
	})
	add("kafka", len(o.records) == 0, func(ctx context.Context) error { return in.deps.Bus.Publish(ctx, o.records...) })
	add("last seen", len(o.touch.Ids) == 0, func(ctx context.Context) error { return q.DevicesTouch(ctx, o.touch) })
	add("reported state", len(o.statePG.Ids) == 0, func(ctx context.Context) error { return q.DevicesApplyState(ctx, o.statePG) })
	add("command results", len(o.results) == 0, func(ctx context.Context) error {
		_, err := commands.ApplyResults(ctx, in.deps.Pool, in.deps.Bus.Publish, o.results)
		return err
	})
	return ps
}

// write performs every part not yet written, concurrently: they go to
// different systems and each is idempotent.
func (o *output) write(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, p := range o.todo {
		if p.done {
			continue
		}
		g.Go(func() error {
			if err := p.write(gctx); err != nil {
				return fmt.Errorf("write %s: %w", p.name, err)
			}
			p.done = true
			return nil
		})
	}
	return g.Wait()
}

// writeKV writes a batch's live state in one round trip.
func writeKV(ctx context.Context, in *Ingester, ws []kv.Write) error {
	if len(ws) == 0 {
		return nil
	}
	_, err := in.deps.KV.SetManyIfNewer(ctx, ws)
	return err
}
