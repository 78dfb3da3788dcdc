package scheduler

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/bus"
)

// PublishOutbox publishes the rollout events written so far (by the
// scheduler's steps and the API's actions) to flock.rollout.events.v1, in
// the order they were written, and marks them published. One replica
// publishes at a time (an advisory lock), so a rollout's events keep their
// order. An event published but not yet marked when a replica dies is
// published again with the same id: consumers tell by the id.
func (s *Scheduler) PublishOutbox(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := s.publishBatch(ctx)
		total += n
		if err != nil || n < outboxBatch {
			return total, err
		}
	}
}

func (s *Scheduler) publishBatch(ctx context.Context) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		locked, err := q.SchedulerOutboxLock(ctx)
		if err != nil || !locked {
			return wrap(err, "lock the outbox")
		}
		rows, err := q.SchedulerOutboxTake(ctx, outboxBatch)
		if err != nil || len(rows) == 0 {
			return wrap(err, "read the outbox")
		}
		recs := make([]bus.Record, len(rows))
		seqs := make([]int64, len(rows))
		for i, r := range rows {
			recs[i] = bus.Record{Topic: bus.TopicRolloutEvents, Key: []byte(r.RolloutID.String()), Value: r.Record}
			seqs[i] = r.Seq
		}
		if err := s.bus.Publish(ctx, recs...); err != nil {
			return err
		}
		if err := q.SchedulerOutboxPublished(ctx, seqs); err != nil {
			return fmt.Errorf("mark %d events published: %w", len(seqs), err)
		}
		n = len(rows)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("publish rollout events: %w", err)
	}
	s.m.published.Add(float64(n))
	return n, nil
}
